"""Thread pools sized by the CPUs this process may use (engine/cpus.py), not by the host's count."""

from __future__ import annotations

import os

import pytest

from engine import cpus


def _cgroup(root, rel: str, cpu_max: str) -> None:
    folder = root / rel
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text(cpu_max + "\n")


def test_a_cgroup_v2_quota_is_whole_cpus_and_the_tightest_on_the_way_up(tmp_path):
    _cgroup(tmp_path, "", "max 100000")
    _cgroup(tmp_path, "kubepods/pod1", "250000 100000")  # docker --cpus 2.5
    _cgroup(tmp_path, "kubepods/pod1/app", "max 100000")
    assert cpus.cgroup_cpu_quota(tmp_path, "0::/kubepods/pod1/app\n") == 3  # rounded up
    _cgroup(tmp_path, "kubepods", "100000 100000")  # a parent's quota binds the children
    assert cpus.cgroup_cpu_quota(tmp_path, "0::/kubepods/pod1/app\n") == 1
    assert cpus.cgroup_cpu_quota(tmp_path, "0::/\n") is None  # the root: "max"


def test_a_cgroup_v1_quota_and_no_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpus.cgroup_cpu_quota(tmp_path, "1:cpu:/\n") is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    assert cpus.cgroup_cpu_quota(tmp_path, "1:cpu:/\n") == 4
    assert cpus.cgroup_cpu_quota(tmp_path / "nothing-mounted", "") is None


def test_onnxruntime_threads_follow_a_mask_or_quota_and_otherwise_its_own_default(monkeypatch, tmp_path):
    """A process allowed 1 CPU of the host's many gets 1 onnxruntime thread (its default would start one per
    physical core and oversubscribe); unrestricted, the engine leaves onnxruntime's default alone (0); an
    explicit --threads always wins."""
    import onnxruntime as ort

    from engine.runtime import RuntimeOptions
    from engine.runtime.onnx import OnnxRuntime

    host = max(2, os.cpu_count() or 2)
    monkeypatch.setattr(os, "cpu_count", lambda: host)
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path)  # no quota
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(host)), raising=False)
    assert cpus.default_threads() == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)  # taskset -c 0, a cpuset
    assert cpus.available_cpus(tmp_path, "") == 1 and cpus.default_threads() == 1

    seen: list[int] = []

    class Session:
        def __init__(self, path, so=None, providers=(), provider_options=None):
            seen.append(so.intra_op_num_threads)

        def get_providers(self):
            return ["CPUExecutionProvider"]

        def disable_fallback(self):
            pass

    monkeypatch.setattr(ort, "InferenceSession", Session)
    OnnxRuntime(tmp_path / "m.onnx", "out", RuntimeOptions(device="cpu"))
    OnnxRuntime(tmp_path / "m.onnx", "out", RuntimeOptions(device="cpu", threads=3))
    assert seen == [1, 3]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity call here")
def test_this_machine_reads_as_its_own_cpus():
    n = cpus.available_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0))
