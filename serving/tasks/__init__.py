"""The task layer: one module per vision task, between the transport and the models' batchers.

Each task turns transport-neutral inputs (images, options) into model tensors, awaits the
model's batcher, and turns the outputs into immutable result dataclasses. No grpc here.
"""
