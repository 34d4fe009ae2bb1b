"""Training and evaluation data made, not fetched: procedural scenes (numpy + Pillow only, no torch)."""
