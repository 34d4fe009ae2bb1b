"""Training and evaluation data made, not fetched: the contract's scenes as torch tensors (export only)."""
