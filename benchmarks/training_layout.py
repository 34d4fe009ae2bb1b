"""Training steps of the small classifiers in the standard (NCHW) and the channels-last (NHWC) weight layout.

    python -m benchmarks.training_layout --rounds 6 --steps 25

Why: the export trains inside export.train.channels_last because oneDNN's convolution backward needs
fewer layout reorders there; this measures the claim on the machine at hand. The arms are interleaved
in one process (round by round), so a noisy neighbour slows both alike. Prints median and minimum CPU
milliseconds per step and the channels-last / standard ratio; one thread, as the export trains.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from export.families import get_family
from export.families.classifier import classification_loss
from export.train import channels_last, make_optimizer

Step = Callable[[], None]
Workload = tuple[Step, tuple[nn.Module, ...]]  # one training step, and the networks it trains


def classifier_step(family: str) -> Callable[[], Workload]:
    """One SGD step of a small classifier family on a batch of its own size, as ClassifierFamily.train takes it."""

    def build() -> Workload:
        torch.manual_seed(0)
        entry = get_family(family)
        config = entry.configs["small"]
        network = entry.build(config).train()
        recipe = config.recipe
        optimizer = make_optimizer(network, recipe.sgd)
        images = torch.randn(recipe.sgd.batch_size, 3, config.image_size, config.image_size)
        labels = torch.randint(0, config.num_classes, (recipe.sgd.batch_size,))

        def step() -> None:
            loss = classification_loss(network(images), labels, recipe.aux_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step, (network,)

    return build


WORKLOADS: dict[str, Callable[[], Workload]] = {
    name: classifier_step(name) for name in ("alexnet", "zfnet", "vgg", "googlenet", "resnet")
}


def measure(build: Callable[[], Workload], rounds: int, steps: int) -> dict[str, list[float]]:
    """CPU ms per step of each layout, `rounds` alternating rounds of `steps` steps (after a warm-up)."""
    (standard, _), (nhwc, nhwc_networks) = build(), build()
    arms = {"standard": standard, "channels_last": nhwc}
    times: dict[str, list[float]] = {name: [] for name in arms}
    with channels_last(*nhwc_networks):
        for _ in range(rounds + 1):  # round 0 warms both up and is not counted
            for name, step in arms.items():
                started = time.process_time()
                for _ in range(steps):
                    step()
                times[name].append((time.process_time() - started) / steps * 1e3)
    return {name: values[1:] for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| workload | standard ms/step (median, min) | channels-last ms/step (median, min) | ratio (medians) |")
    print("|---|---|---|---|")
    for name in args.workloads.split(","):
        times = measure(WORKLOADS[name], args.rounds, args.steps)
        standard, nhwc = statistics.median(times["standard"]), statistics.median(times["channels_last"])
        print(
            f"| {name} | {standard:.1f}, {min(times['standard']):.1f} | {nhwc:.1f}, "
            f"{min(times['channels_last']):.1f} | {nhwc / standard:.2f} |"
        )


if __name__ == "__main__":
    main()
