"""Shared training helpers: thread budget, the papers' SGD (momentum + weight decay), a tqdm training loop.

Every family trains with plain SGD with momentum and weight decay, as all five classifier papers (and most
of the others) did, with a short linear warm-up and a cosine decay so that few epochs suffice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from tqdm import tqdm

# One intra-op thread by default. The small models' layers are too narrow to split well, and on a busy
# 2-core machine two spinning threads were measured 3-10x slower per step than one (AlexNet small:
# 0.35 s vs 0.03 s per batch of 64 at load 9). NINEFOLD_EXPORT_THREADS overrides it on an idle machine.
THREADS_ENV = "NINEFOLD_EXPORT_THREADS"


@contextmanager
def channels_last(*models: nn.Module) -> Iterator[None]:
    """Train `models` with their 4-D weights in channels-last (NHWC) layout; back to the standard layout after.

    Why: oneDNN's convolution backward on these narrow layers costs less in NHWC (one thread, AVX512: the
    five small classifiers 0.80x the CPU time, the STN 0.74x, the captioner 0.66x;
    docs/history/2026-11-28-channels-last.md). The function is the same; only the order of float sums
    changes, as on another CPU. Parameters keep their identity, so optimisers built before or inside the
    block hold the same tensors.
    """
    for model in models:
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for model in models:
            model.to(memory_format=torch.contiguous_format)


def set_threads() -> None:
    """Set torch's intra-op threads from NINEFOLD_EXPORT_THREADS (default 1, at most the core count)."""
    requested = int(os.environ.get(THREADS_ENV, "1"))
    torch.set_num_threads(max(1, min(requested, os.cpu_count() or 1)))


@dataclass(frozen=True)
class SGDRecipe:
    """Optimiser schedule: SGD(momentum, weight_decay), warm-up then cosine decay to zero over all steps.

    epochs x steps_per_epoch steps; lr is the peak learning rate reached after warmup_fraction of them.
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.1


def make_optimizer(model: nn.Module, recipe: SGDRecipe) -> torch.optim.SGD:
    """SGD with momentum; weight decay on weights only (not on biases and norm parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)


def lr_at(step: int, total_steps: int, recipe: SGDRecipe) -> float:
    """Learning rate at ``step`` of ``total_steps``: linear warm-up to recipe.lr, then cosine to 0."""
    warmup = max(1, int(total_steps * recipe.warmup_fraction))
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))


Batch = tuple[torch.Tensor, ...]


def fit(
    model: nn.Module,
    batches: Callable[[int], Iterator[Batch]],
    steps_per_epoch: int,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    recipe: SGDRecipe,
    description: str,
    nhwc: bool = True,
) -> nn.Module:
    """Train ``model`` in place for recipe.epochs; ``batches(epoch)`` yields steps_per_epoch batches.

    ``loss_fn(model, batch)`` returns the scalar loss. Shows one tqdm bar (steps, running loss). nhwc: train
    in channels-last layout (see channels_last). Returns the model in eval mode.
    """
    set_threads()
    optimizer = make_optimizer(model, recipe)
    total = recipe.epochs * steps_per_epoch
    model.train()
    step = 0
    running = None
    # disable=None: bars on a terminal, silent in logs and CI (no carriage-return spam).
    bar = tqdm(total=total, desc=description, unit="step", leave=False, dynamic_ncols=True, disable=None)
    with bar, channels_last(model) if nhwc else nullcontext():
        for epoch in range(recipe.epochs):
            for batch in batches(epoch):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total, recipe)
                loss = loss_fn(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = float(loss.detach())
                running = value if running is None else 0.9 * running + 0.1 * value
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{running:.3f}")
    return model.eval()


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def fit_adam_one_cycle(
    model: ModuleT, step_loss: Callable[[], torch.Tensor], steps: int, lr: float, description: str
) -> ModuleT:
    """Train ``model`` in place with Adam under a one-cycle learning rate peaking at ``lr``.

    ``step_loss()`` draws one batch and returns its scalar loss. Shows one tqdm bar (silent in logs and CI).
    Returns the model in eval mode.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    bar = tqdm(total=steps, desc=description, unit="step", leave=False, dynamic_ncols=True, disable=None)
    with bar, channels_last(model):
        for _ in range(steps):
            loss = step_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model


def shuffled_batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches over ``count`` samples in a random order (the last partial batch is dropped)."""
    order = torch.randperm(count, generator=generator)
    for start in range(0, count - batch_size + 1, batch_size):
        yield order[start : start + batch_size]
