"""`make bench`: ninefold against raw ONNX Runtime and a peer server (KServe), side by side.

Not part of the product: the peer's code lives here only. See docs/PERFORMANCE.md.
"""
