"""`python -m benchmarks.training_layout` runs both layouts of every workload and prints one row each.

Speed is not asserted (shared, noisy machine); the benchmark itself reports the ratio.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.training_layout import WORKLOADS, main


def test_prints_a_row_with_a_ratio_per_workload(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        main(["--rounds", "1", "--steps", "1"])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    rows = [line.strip("| ").split(" | ") for line in lines[2:]]
    assert [row[0] for row in rows] == list(WORKLOADS)
    assert all(float(row[3]) > 0 for row in rows)
