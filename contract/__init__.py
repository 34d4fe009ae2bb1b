"""Definitions shared by export, serving and clients: no torch, no grpc."""
