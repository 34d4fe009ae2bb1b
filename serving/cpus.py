"""How many CPUs this process may keep busy: the CPUs it may run on, capped by its cgroup's CPU limit.

`os.cpu_count()` is the node's cores. In a container with a CPU limit (a Kubernetes pod's
`limits.cpu`, which becomes the cgroup's CFS quota) thread pools sized by it oversubscribe the
quota: the kernel throttles the pod for the rest of each 100 ms period and latency jumps. So the
server sizes ONNX Runtime's intra-op threads and the image pool by `available_cpus()`.

Read from cgroup v2 (`cpu.max`, "QUOTA PERIOD" or "max PERIOD") or v1 (`cpu.cfs_quota_us` and
`cpu.cfs_period_us`, -1 = no limit), for this process's cgroup and each parent (the smallest limit
wins). A fractional limit rounds up (2.5 CPUs -> 3 threads), as the JVM does.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")

_Reader = Callable[[Path], "tuple[float, Path] | None"]
"""Reads one cgroup folder's CPU limit: (CPUs, file) or None when it sets none."""


@dataclass(frozen=True)
class CpuBudget:
    """`cpus` to size thread pools by; `online` CPUs the process may run on; `limit` the cgroup's CPU
    limit in CPUs (None: none) and `source` the file it came from."""

    cpus: int
    online: int
    limit: float | None = None
    source: str = ""

    def describe(self) -> str:
        if self.limit is None:
            return f"{self.cpus} CPU(s): {self.online} online, no cgroup CPU limit"
        return f"{self.cpus} CPU(s): cgroup CPU limit {self.limit:g} ({self.source}), {self.online} online"


def online_cpus() -> int:
    """CPUs this process may be scheduled on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_budget(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP, online: int | None = None) -> CpuBudget:
    """The CPU budget of the process whose /proc/<pid>/cgroup is `proc_cgroup`, under cgroupfs `root`."""
    online = online or online_cpus()
    try:
        memberships = proc_cgroup.read_text().splitlines()
    except OSError:
        return CpuBudget(online, online)
    found = _v2_limit(root, memberships) if (root / "cgroup.controllers").is_file() else _v1_limit(root, memberships)
    if found is None:
        return CpuBudget(online, online)
    limit, source = found
    return CpuBudget(max(1, min(online, math.ceil(limit))), online, limit, str(source))


@functools.cache
def available_cpus() -> int:
    """This process's CPU budget (read once)."""
    return cpu_budget().cpus


def _v2_limit(root: Path, memberships: list[str]) -> tuple[float, Path] | None:
    paths = [line.split(":", 2)[2] for line in memberships if line.startswith("0::")]
    return _smallest_limit(root, paths[0] if paths else "/", _read_cpu_max)


def _v1_limit(root: Path, memberships: list[str]) -> tuple[float, Path] | None:
    for line in memberships:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            mount = next((root / name for name in (controllers, "cpu") if (root / name).is_dir()), None)
            return None if mount is None else _smallest_limit(mount, path, _read_cfs_quota)
    return None


def _smallest_limit(mount: Path, path: str, read: _Reader) -> tuple[float, Path] | None:
    """The smallest limit from the process's cgroup folder up to the mount's root. Inside a container
    the mount's root is often the process's own cgroup while /proc names the host's path: a folder
    that does not exist is skipped, so the walk still reaches the root."""
    folder = mount / path.strip("/")
    found: list[tuple[float, Path]] = []
    while True:
        limit = read(folder)
        if limit is not None:
            found.append(limit)
        if folder == mount or mount not in folder.parents:
            break
        folder = folder.parent
    return min(found, default=None)


def _read_cpu_max(folder: Path) -> tuple[float, Path] | None:
    path = folder / "cpu.max"
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else (int(quota) / int(period), path)


def _read_cfs_quota(folder: Path) -> tuple[float, Path] | None:
    path = folder / "cpu.cfs_quota_us"
    try:
        quota = int(path.read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else (quota / period, path)
