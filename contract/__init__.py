"""The one definition of what export, serving and clients share (no torch, no grpc)."""
