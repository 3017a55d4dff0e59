"""engine_setup without QGIS: where the environment and the base Python are on each platform, the GPU/CPU choice
(faked nvidia-smi), the requirements each choice installs, and what a failed pip run is called."""

from __future__ import annotations

import subprocess
from pathlib import Path, PureWindowsPath

import pytest

from landseg_plugin import engine_process
from landseg_plugin.engine_setup import (
    GpuChoice,
    SetupError,
    SetupParams,
    base_python_candidates,
    data_home,
    env_python,
    gpu_choice,
    installed_env,
    pip_reason,
    requirement_lines,
)

ROOT = Path(__file__).resolve().parent.parent


def test_data_home_per_platform():
    home = Path("/home/ana")
    assert data_home("linux", {}, home) == home / ".local/share/landseg"
    assert data_home("linux", {"XDG_DATA_HOME": "/data/ana"}, home) == Path("/data/ana/landseg")
    assert data_home("darwin", {}, home) == home / "Library/Application Support/LandSeg"
    win = data_home("win32", {"LOCALAPPDATA": r"C:\Users\ana\AppData\Local"}, home)
    assert PureWindowsPath(str(win)) == PureWindowsPath(r"C:\Users\ana\AppData\Local\LandSeg")
    assert data_home("win32", {}, home) == home / "AppData" / "Local" / "LandSeg"
    assert data_home("linux", {"LANDSEG_HOME": "/srv/ls"}, home) == Path("/srv/ls")


def test_env_python_per_platform():
    assert env_python(Path("E"), "win32") == Path("E") / "Scripts" / "python.exe"
    assert env_python(Path("E"), "linux") == Path("E") / "bin" / "python"
    assert env_python(Path("E"), "darwin") == Path("E") / "bin" / "python"


def test_base_python_on_windows_osgeo4w_and_standalone():
    # OSGeo4W: QGIS is C:\OSGeo4W\bin\qgis-bin.exe, its Python C:\OSGeo4W\apps\Python312
    found = base_python_candidates(
        "win32", r"C:\OSGeo4W\bin\qgis-bin.exe", r"C:\OSGeo4W\apps\Python312", {"OSGEO4W_ROOT": r"C:\OSGeo4W"}
    )
    names = [str(p).replace("/", "\\") for p in found]
    assert names[0] == r"C:\OSGeo4W\apps\Python312\python.exe"
    assert r"C:\OSGeo4W\bin\python.exe" in names and r"C:\OSGeo4W\bin\python3.exe" in names
    # the standalone installer: C:\Program Files\QGIS 3.34.4\bin\qgis-bin.exe, apps\Python312 beside it
    found = base_python_candidates(
        "win32", r"C:\Program Files\QGIS 3.34.4\bin\qgis-bin.exe", r"C:\Program Files\QGIS 3.34.4\apps\Python312", {}
    )
    names = [str(p).replace("/", "\\") for p in found]
    assert names[0] == r"C:\Program Files\QGIS 3.34.4\apps\Python312\python.exe"
    assert not any("qgis-bin" in n for n in names)


def test_base_python_on_macos_bundle_and_linux():
    exe = "/Applications/QGIS.app/Contents/MacOS/QGIS"
    prefix = "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.9"
    found = base_python_candidates("darwin", exe, prefix, {})
    assert found[0] == Path(prefix) / "bin/python3"
    assert Path("/Applications/QGIS.app/Contents/MacOS/bin/python3") in found
    found = base_python_candidates("linux", "/usr/bin/qgis", "/usr", {"PATH": "/usr/bin"})
    assert found[0] == Path("/usr/bin/python3") and Path("/usr/bin/qgis") not in found


class FakeSmi:
    """subprocess.run as nvidia-smi answers it (or fails to)."""

    def __init__(self, stdout: str = "", code: int = 0, raises: Exception | None = None):
        self.stdout, self.code, self.raises = stdout, code, raises

    def __call__(self, cmd, **kw):
        assert cmd[0] == "nvidia-smi"
        if self.raises:
            raise self.raises
        return subprocess.CompletedProcess(cmd, self.code, self.stdout, "NVIDIA-SMI has failed" if self.code else "")


def test_gpu_choice_from_nvidia_smi():
    gpu = gpu_choice("auto", FakeSmi("NVIDIA RTX A4000, 550.54.14\n"))
    assert gpu == GpuChoice("cuda", "NVIDIA RTX A4000", "nvidia-smi found NVIDIA RTX A4000 (driver 550.54.14)")
    none = gpu_choice("auto", FakeSmi(raises=FileNotFoundError()))
    assert none.device == "cpu" and "nvidia-smi not found" in none.reason
    broken = gpu_choice("auto", FakeSmi(code=9))
    assert broken.device == "cpu" and "NVIDIA-SMI has failed" in broken.reason
    assert gpu_choice("cpu", FakeSmi(raises=AssertionError("not called"))).device == "cpu"
    with pytest.raises(SetupError, match="CUDA asked for but no NVIDIA driver"):
        gpu_choice("cuda", FakeSmi(raises=FileNotFoundError()))


def test_requirements_for_cpu_gpu_tensorrt_and_adapt():
    cpu = requirement_lines(ROOT, "cpu")
    assert any(ln.startswith("onnxruntime>=") for ln in cpu) and not any("onnxruntime-gpu" in ln for ln in cpu)
    assert any(ln.startswith("rasterio") for ln in cpu)
    gpu = requirement_lines(ROOT, "cuda")
    assert not any(ln.startswith("onnxruntime>=") for ln in gpu)
    assert any(ln.startswith("onnxruntime-gpu[cuda,cudnn]") for ln in gpu)
    assert "tensorrt-cu12" in requirement_lines(ROOT, "cuda", tensorrt=True)
    assert "tensorrt-cu12" not in requirement_lines(ROOT, "cpu", tensorrt=True)  # no GPU: nothing to run it on
    assert any(ln.startswith("torch") for ln in requirement_lines(ROOT, "cpu", adapt=True))


@pytest.mark.parametrize(
    "tail, words",
    [
        (["ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device"], "disk is full"),
        (
            [
                "WARNING: Retrying ... NewConnectionError('Failed to establish a new connection: [Errno 111] "
                "Connection refused')",
                "ERROR: No matching distribution found for rasterio>=1.4",
            ],
            "no network: pip could not reach the package index for rasterio>=1.4",
        ),
        (["ERROR: No matching distribution found for onnxruntime-gpu"], "pip found no onnxruntime-gpu"),
        (["Error: ensurepip is not available"], "install python3-venv"),
        (["ERROR: some other trouble"], "pip failed: ERROR: some other trouble"),
    ],
)
def test_pip_failures_in_one_line(tail, words):
    said = pip_reason(tail, 1)
    assert words in said and "\n" not in said


def test_an_environment_is_picked_only_when_verified(tmp_path, monkeypatch):
    env = tmp_path / "engine-env"
    python = env_python(env)
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    assert installed_env(env) is None  # a half environment (no marker) is not picked
    (env / "landseg-env.json").write_text("{}")
    assert installed_env(env) == python
    monkeypatch.setenv("LANDSEG_HOME", str(tmp_path))
    monkeypatch.delenv("LANDSEG_PYTHON", raising=False)
    assert engine_process.engine_python(None) == str(python)


def test_missing_engine_points_to_the_set_up_button(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDSEG_HOME", str(tmp_path))
    monkeypatch.delenv("LANDSEG_PYTHON", raising=False)
    monkeypatch.setattr(engine_process, "engine_root", lambda: tmp_path)
    monkeypatch.setattr(engine_process, "PLUGIN_DIR", tmp_path)
    with pytest.raises(engine_process.EngineError, match="press 'Set up LandSeg'"):
        engine_process.engine_python(None)


def test_params_name_a_bad_gpu_choice():
    with pytest.raises(SetupError, match="GPU choice must be one of auto, cpu, cuda"):
        SetupParams(gpu="rocm")
    assert isinstance(SetupParams(env_dir="x", wheelhouse="w.zip").wheelhouse, Path)


def test_a_cpu_run_says_what_it_ran_on_and_why_no_gpu():
    """The panel and the Processing log show runtime.device_detail: threads, and the reason there is no GPU."""
    from engine.runtime import RuntimeOptions, make_runtime
    from engine.runtime.onnx import no_gpu_reason

    model = ROOT / "models" / "rgb_index_baseline.onnx"
    auto = make_runtime(model, "logits", RuntimeOptions(device="auto", threads=2))
    assert auto.device_detail.startswith("CPU, 2 threads: no usable GPU because ")
    assert "CPU build" in auto.device_detail  # this machine's onnxruntime has no CUDA provider
    cpu = make_runtime(model, "logits", RuntimeOptions(device="cpu", threads=1))
    assert cpu.device_detail == "CPU, 1 thread: no usable GPU because --device cpu was asked for"
    assert "CPU build" in no_gpu_reason("cuda", ["CPUExecutionProvider"], "1.20.0")
    assert "not chosen" in no_gpu_reason("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], "1.20.0")
