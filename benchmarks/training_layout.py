"""Training steps of the small families in the standard (NCHW) and the channels-last (NHWC) weight layout.

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
from torch.nn import functional as F

from export.families.dcgan import SMALL as DCGAN_SMALL
from export.families.dcgan import Dcgan, Judge, class_code
from export.train import channels_last

BATCH = 64
Step = Callable[[], None]
Workload = tuple[Step, tuple[nn.Module, ...]]  # one training step, and the networks it trains


def dcgan_step() -> Workload:
    """One alternating D/G step of the small DCGAN pair, as export.families.dcgan.train_gan takes it."""
    torch.manual_seed(0)
    pair = Dcgan(DCGAN_SMALL).train()
    generator, discriminator = pair.generator, pair.discriminator
    g_opt = torch.optim.Adam(generator.parameters(), lr=DCGAN_SMALL.lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=DCGAN_SMALL.lr, betas=(0.5, 0.999))
    real = torch.rand(BATCH, 3, DCGAN_SMALL.image_size, DCGAN_SMALL.image_size) * 2 - 1
    real_classes = torch.randint(0, DCGAN_SMALL.classes, (BATCH,))
    ones, zeros = torch.ones(BATCH), torch.zeros(BATCH)

    def step() -> None:
        z = torch.randn(BATCH, DCGAN_SMALL.z_dim)
        fake, fake_classes = generator(z), class_code(z, DCGAN_SMALL.classes)
        d_loss = F.binary_cross_entropy_with_logits(discriminator(real, real_classes), ones)
        d_loss = d_loss + F.binary_cross_entropy_with_logits(discriminator(fake.detach(), fake_classes), zeros)
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        discriminator.requires_grad_(False)
        g_loss = F.binary_cross_entropy_with_logits(discriminator(fake, fake_classes), ones)
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        discriminator.requires_grad_(True)

    return step, (generator, discriminator)


def judge_step() -> Workload:
    """One SGD step of the DCGAN family's judge (a 3-layer shape classifier on 32 px scenes)."""
    torch.manual_seed(0)
    judge = Judge(DCGAN_SMALL.classes).train()
    optimizer = torch.optim.SGD(judge.parameters(), lr=0.05, momentum=0.9)
    images = torch.randn(BATCH, 3, DCGAN_SMALL.image_size, DCGAN_SMALL.image_size)
    labels = torch.randint(0, DCGAN_SMALL.classes, (BATCH,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(judge(images), labels).backward()
        optimizer.step()

    return step, (judge,)


WORKLOADS: dict[str, Callable[[], Workload]] = {"dcgan": dcgan_step, "judge": judge_step}


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
