"""ninefold's serving runtime: model repository, dynamic batching, backends, gRPC transport.

Never imports torch (not even transitively): the serving image ships without it.
"""
