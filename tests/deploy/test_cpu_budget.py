"""Thread sizing follows the pod's CPU limit (the cgroup CPU quota), not the node's cores.

The cgroup files are written into a temporary folder laid out as the kernel lays out cgroupfs (v2:
one unified tree with `cpu.max`; v1: a `cpu,cpuacct` hierarchy with `cpu.cfs_quota_us`), and
/proc/self/cgroup is a file naming the process's cgroup in it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.server_process import ServerProcess
from serving.cpus import CpuBudget, cpu_budget

NODE_CPUS = 64


def cgroup_v2(tmp_path: Path, limits: dict[str, str], member: str = "/") -> tuple[Path, Path]:
    """A unified hierarchy with `cpu.max` = limits[folder]; the process is in `member`."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    for folder, cpu_max in limits.items():
        (root / folder.strip("/")).mkdir(parents=True, exist_ok=True)
        (root / folder.strip("/") / "cpu.max").write_text(cpu_max + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::{member}\n")
    return root, proc


def cgroup_v1(tmp_path: Path, quota_us: int, period_us: int = 100_000, member: str = "/") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    cpu = root / "cpu,cpuacct" / member.strip("/")
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (cpu / "cpu.cfs_period_us").write_text(f"{period_us}\n")
    (root / "memory").mkdir()
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"12:memory:{member}\n4:cpu,cpuacct:{member}\n1:name=systemd:{member}\n")
    return root, proc


@pytest.mark.parametrize(("cpu_max", "cpus"), [
    ("400000 100000", 4),  # limits.cpu: "4"
    ("250000 100000", 3),  # "2500m": rounded up
    ("50000 100000", 1),  # "500m": never below one thread
    ("max 100000", NODE_CPUS),  # no limit
])
def test_cgroup_v2_cpu_max_sets_the_budget(tmp_path: Path, cpu_max: str, cpus: int) -> None:
    root, proc = cgroup_v2(tmp_path, {"/": cpu_max})
    assert cpu_budget(root, proc, online=NODE_CPUS).cpus == cpus


def test_cgroup_v2_the_smallest_limit_on_the_path_wins(tmp_path: Path) -> None:
    pod, container = "/kubepods/pod1", "/kubepods/pod1/ctr"
    root, proc = cgroup_v2(tmp_path, {"/kubepods": "max 100000", pod: "200000 100000", container: "max 100000"},
                           member=container)
    budget = cpu_budget(root, proc, online=NODE_CPUS)
    assert budget == CpuBudget(2, NODE_CPUS, 2.0, str(root / "kubepods/pod1/cpu.max"))


def test_cgroup_v2_inside_a_container_namespace_reads_the_mount_root(tmp_path: Path) -> None:
    """/proc names the host's path, which the container's cgroupfs (its own cgroup at the root) lacks."""
    root, proc = cgroup_v2(tmp_path, {"/": "300000 100000"}, member="/kubepods/pod1/ctr")
    assert cpu_budget(root, proc, online=NODE_CPUS).cpus == 3


@pytest.mark.parametrize(("quota_us", "cpus"), [(200_000, 2), (-1, NODE_CPUS)])
def test_cgroup_v1_cfs_quota_sets_the_budget(tmp_path: Path, quota_us: int, cpus: int) -> None:
    root, proc = cgroup_v1(tmp_path, quota_us, member="/kubepods/pod1/ctr")
    assert cpu_budget(root, proc, online=NODE_CPUS).cpus == cpus


def test_the_affinity_mask_caps_a_larger_limit(tmp_path: Path) -> None:
    root, proc = cgroup_v2(tmp_path, {"/": "800000 100000"})
    assert cpu_budget(root, proc, online=2).cpus == 2


def test_no_cgroup_files_means_the_online_cpus(tmp_path: Path) -> None:
    assert cpu_budget(tmp_path / "absent", tmp_path / "absent-proc", online=NODE_CPUS) == CpuBudget(
        NODE_CPUS, NODE_CPUS)


def test_the_server_logs_the_budget_it_sizes_threads_by(ninefold_server: ServerProcess) -> None:
    """The live server reads this machine's cgroup files, as this test process does."""
    budget = cpu_budget()
    assert f"CPU budget {budget.describe()}; ONNX Runtime intra-op threads per CPU instance: " in ninefold_server.log()
