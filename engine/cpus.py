"""How many CPUs this process may use: what the engine sizes its thread pools by when the user does not say.

Why: `os.cpu_count()` and onnxruntime's default (the machine's physical cores) see the whole host. Inside a
container with a CPU quota (docker --cpus, Kubernetes limits) or a CPU mask (taskset, SLURM, docker
--cpuset-cpus) they start more threads than the process may run, which then take turns on the allowed CPUs
(onnxruntime #29510), and onnxruntime's own thread pinning can fail there ("pthread_setaffinity_np failed ...
Specify the number of threads explicitly"). Both limits are read here: the affinity mask, and the cgroup's CPU
quota (v2 `cpu.max` of the process's cgroup and its parents; v1 `cpu.cfs_quota_us`), rounded up to whole CPUs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None


def cgroup_cpu_quota(root: Path | None = None, proc_cgroup: str | None = None) -> int | None:
    """Whole CPUs this process's cgroup may use (the tightest quota on its way to the root), or None."""
    root = CGROUP_ROOT if root is None else root
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            proc_cgroup = ""
    pairs: list[tuple[str, str]] = []  # (quota, period) of every cgroup that may limit this process
    # cgroup v2 ("0::/path"): cpu.max holds "<quota> <period>" or "max <period>", in the cgroup and its parents
    v2 = next((line[3:].strip() for line in proc_cgroup.splitlines() if line.startswith("0::")), None)
    if v2 is not None:
        rel = Path(v2.lstrip("/"))
        for folder in [root / rel, *(root / p for p in rel.parents)]:
            try:
                quota, period = (folder / "cpu.max").read_text().split()[:2]
                pairs.append((quota, period))
            except (OSError, ValueError):
                pass
    # cgroup v1: cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us, where the cpu controller is mounted
    for mount in ("cpu", "cpu,cpuacct"):
        try:
            pairs.append(tuple((root / mount / f"cpu.cfs_{k}_us").read_text() for k in ("quota", "period")))
        except OSError:
            pass
    limits = [n for n in (_quota(q, p) for q, p in pairs) if n]
    return min(limits) if limits else None


def available_cpus(root: Path | None = None, proc_cgroup: str | None = None) -> int:
    """CPUs this process may run on: its affinity mask, capped by its cgroup's CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity call (macOS, Windows)
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root, proc_cgroup)
    return max(1, min(n, quota) if quota else n)


def default_threads() -> int:
    """onnxruntime's intra-op threads when --threads is 0: the process's CPUs when a mask or quota leaves it fewer
    than the machine has; else 0, onnxruntime's own default (the physical cores: hyper-threads do not help it)."""
    n = available_cpus()
    return n if n < (os.cpu_count() or 1) else 0
