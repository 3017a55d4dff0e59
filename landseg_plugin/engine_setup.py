"""Set up the engine's own Python environment from inside QGIS ("Set up LandSeg"): no terminal.

The environment is a venv in the user's data folder (``data_home()``), outside the plugin folder, so a plugin
update keeps it. It is made from the Python that QGIS ships or finds (``base_python_candidates``: the OSGeo4W or
standalone installer's Python on Windows, the app bundle's on macOS, the system Python on Linux), never by
installing anything into QGIS's own Python. pip installs the engine's pinned requirements (the files shipped
in the plugin) from the package index, or only from a wheelhouse folder or zip (``make wheelhouse``) for
machines without internet. Where ``nvidia-smi`` finds a GPU, onnxruntime-gpu with its CUDA/cuDNN wheels
replaces onnxruntime.

Whole or nothing: the venv is built beside its final place (``<env>.partial``), checked by running the engine
(``python -m engine describe``) and only then moved into place, so a failed, cancelled or disk-full set-up
leaves the previous environment (or none) and never a half one that a later run would pick up. Each attempt
writes its full log to ``setup.log`` in the data folder; the error is one line that names it.

This module imports no qgis: the panel's task (setup_task.py) and the tests call the same ``set_up``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .engine_process import EngineCancelled, EngineError, engine_env, engine_root

ENV_NAME = "engine-env"
MARKER = "landseg-env.json"  # written last into a verified environment: what it holds and what it runs on
GPU_CHOICES = ("auto", "cpu", "cuda")
# The requirement that the GPU set-up replaces (both wheels install the same `onnxruntime` module).
_ORT_LINE = re.compile(r"^\s*onnxruntime\b(?!-)")


class SetupError(EngineError):
    """A set-up that failed; the message is one line naming the cause and the log file."""


def data_home(platform: str | None = None, environ: dict[str, str] | None = None, home: Path | None = None) -> Path:
    """The user's LandSeg data folder: LANDSEG_HOME, else the platform's per-user application data folder
    (Windows %LOCALAPPDATA%\\LandSeg, macOS ~/Library/Application Support/LandSeg, else $XDG_DATA_HOME/landseg
    or ~/.local/share/landseg)."""
    platform = platform or sys.platform
    environ = os.environ if environ is None else environ
    home = home or Path(environ.get("HOME") or environ.get("USERPROFILE") or Path.home())
    if environ.get("LANDSEG_HOME"):
        return Path(environ["LANDSEG_HOME"])
    if platform.startswith("win"):
        return Path(environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "LandSeg"
    if platform == "darwin":
        return home / "Library" / "Application Support" / "LandSeg"
    return Path(environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "landseg"


def env_python(env_dir: Path, platform: str | None = None) -> Path:
    """The interpreter inside a venv (Scripts\\python.exe on Windows, bin/python elsewhere)."""
    if (platform or sys.platform).startswith("win"):
        return env_dir / "Scripts" / "python.exe"
    return env_dir / "bin" / "python"


def installed_env(env_dir: Path | None = None, platform: str | None = None) -> Path | None:
    """The set-up environment's Python, when a verified one is there (its marker is written last)."""
    env_dir = env_dir or data_home(platform) / ENV_NAME
    python = env_python(env_dir, platform)
    return python if (env_dir / MARKER).is_file() and python.is_file() else None


def env_record(env_dir: Path | None = None) -> dict:
    """What the set-up recorded about the environment (packages, device), or {} when there is none."""
    env_dir = env_dir or data_home() / ENV_NAME
    try:
        return json.loads((env_dir / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def base_python_candidates(
    platform: str | None = None,
    executable: str | None = None,
    prefix: str | None = None,
    environ: dict[str, str] | None = None,
) -> list[Path]:
    """Pythons to build the venv from, best first. Inside QGIS ``sys.executable`` is QGIS itself (qgis-bin.exe,
    the QGIS app, /usr/bin/qgis), so the interpreter is found from ``sys.prefix`` and the installers' layouts:

    - Windows, OSGeo4W and the standalone installer: ``<prefix>\\python.exe`` (prefix = ``...\\apps\\Python3xx``),
      then ``%OSGEO4W_ROOT%\\bin\\python.exe`` / ``python3.exe`` (OSGeo4W's launchers);
    - macOS app bundle: ``<prefix>/bin/python3`` (the bundle's Python.framework), then
      ``QGIS.app/Contents/MacOS/bin/python3`` next to the QGIS executable;
    - Linux: ``<prefix>/bin/python3`` (/usr/bin/python3 for distribution packages), then python3 on PATH.
    """
    platform = platform or sys.platform
    executable = executable or sys.executable
    prefix = prefix or getattr(sys, "base_prefix", sys.prefix)
    environ = os.environ if environ is None else environ
    exe_dir = Path(executable).parent
    found: list[Path] = []
    if platform.startswith("win"):
        found += [Path(prefix) / "python.exe", Path(prefix) / "python3.exe"]
        root = environ.get("OSGEO4W_ROOT")
        if root:
            found += [Path(root) / "bin" / "python.exe", Path(root) / "bin" / "python3.exe"]
        found += [exe_dir / "python.exe", exe_dir / "python3.exe"]
    elif platform == "darwin":
        found += [Path(prefix) / "bin" / "python3", exe_dir / "bin" / "python3", exe_dir / "python3"]
    else:
        found += [Path(prefix) / "bin" / "python3"]
        on_path = shutil.which("python3", path=environ.get("PATH"))
        if on_path:
            found.append(Path(on_path))
    if Path(executable).name.lower().startswith("python"):  # a plain Python (tests, qgis_process from a venv)
        found.append(Path(executable))
    unique: list[Path] = []
    for p in found:
        if p not in unique:
            unique.append(p)
    return unique


def find_base_python(candidates: list[Path] | None = None) -> Path:
    for p in base_python_candidates() if candidates is None else candidates:
        if p.is_file() and os.access(p, os.X_OK):
            return p
    names = ", ".join(str(p) for p in (candidates or base_python_candidates()))
    raise SetupError(f"no Python to build LandSeg's environment from (looked for {names}); choose one in the dialog")


@dataclass(frozen=True)
class GpuChoice:
    device: str  # "cuda" or "cpu"
    gpu: str | None  # the GPU's name, from nvidia-smi
    reason: str  # why this choice, for the panel and the log


def gpu_choice(wanted: str = "auto", run: Callable = subprocess.run) -> GpuChoice:
    """CUDA where ``nvidia-smi`` lists an NVIDIA GPU (and its driver answers), else the CPU, with the reason."""
    if wanted not in GPU_CHOICES:
        raise SetupError(f"GPU choice must be one of {', '.join(GPU_CHOICES)}, not {wanted!r}")
    if wanted == "cpu":
        return GpuChoice("cpu", None, "CPU asked for")
    try:
        proc = run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        reason = "no NVIDIA driver (nvidia-smi not found)"
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"nvidia-smi did not answer ({type(exc).__name__})"
    else:
        first = (proc.stdout or "").strip().splitlines()[:1]
        if proc.returncode == 0 and first:
            name, _, driver = (s.strip() for s in first[0].partition(","))
            return GpuChoice("cuda", name, f"nvidia-smi found {name} (driver {driver})")
        said = ((proc.stderr or proc.stdout or "").strip().splitlines() or ["no GPU listed"])[0]
        reason = f"nvidia-smi found no usable GPU: {said[:120]}"
    if wanted == "cuda":
        raise SetupError(f"CUDA asked for but {reason}")
    return GpuChoice("cpu", None, reason)


def requirement_lines(root: Path, device: str, tensorrt: bool = False, adapt: bool = False) -> list[str]:
    """The engine's requirements as pip requirement lines: requirements.txt, with onnxruntime-gpu (CUDA/cuDNN
    wheels, requirements-gpu.txt) in place of onnxruntime on a GPU, TensorRT's wheels when asked, and the
    training toolchain (torch, for "Adapt to my labels") when asked."""
    lines = _requirements(root / "requirements.txt")
    if device == "cuda":
        lines = [ln for ln in lines if not _ORT_LINE.match(ln)] + _requirements(root / "requirements-gpu.txt")
        if tensorrt:
            lines.append("tensorrt-cu12")
    if adapt:
        lines += _requirements(root / "requirements-export.txt")
    return lines


def _requirements(path: Path) -> list[str]:
    if not path.is_file():
        raise SetupError(f"the plugin lacks {path.name} (looked in {path.parent}): reinstall the plugin")
    out = []
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


@dataclass
class SetupParams:
    env_dir: Path = field(default_factory=lambda: data_home() / ENV_NAME)
    base_python: Path | None = None  # None: found by base_python_candidates
    wheelhouse: Path | None = None  # a folder or .zip of wheels: install from it alone (no package index)
    gpu: str = "auto"  # auto | cpu | cuda
    tensorrt: bool = False  # with a GPU: also TensorRT's wheels (the TensorRT execution provider)
    adapt: bool = False  # also the training toolchain (PyTorch CPU, ~200 MB) that "Adapt to my labels" needs
    # Linux: the venv sees the system Python's packages (the distribution's numpy/scipy, as `make setup` does);
    # Windows/macOS: an isolated venv, QGIS's bundled Python carries its own builds of them. None: by platform.
    system_site_packages: bool | None = None
    log_path: Path | None = None  # default: <data folder>/setup.log
    timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("env_dir", "base_python", "wheelhouse", "log_path"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        if self.gpu not in GPU_CHOICES:
            raise SetupError(f"GPU choice must be one of {', '.join(GPU_CHOICES)}, not {self.gpu!r}")

    def log_file(self) -> Path:
        return self.log_path or self.env_dir.parent / "setup.log"


@dataclass
class SetupResult:
    python: Path
    record: dict


class _Log:
    def __init__(self, path: Path, echo: Callable[[str], None] | None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by set_up)
        self.echo = echo
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        line = line.rstrip("\n")
        self.file.write(line + "\n")
        self.file.flush()
        self.lines.append(line)
        if self.echo:
            self.echo(line)


def set_up(
    params: SetupParams,
    log: Callable[[str], None] | None = None,
    progress: Callable[[float, str], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    run: Callable = subprocess.run,
) -> SetupResult:
    """Build (or rebuild: "Repair / update") the engine's environment; see the module docstring."""
    try:
        out = _Log(params.log_file(), log)
    except OSError as exc:
        raise SetupError(_os_reason(exc, params.log_file())) from None
    staging = params.env_dir.with_name(params.env_dir.name + ".partial")
    unpacked: tempfile.TemporaryDirectory | None = None
    step = _Steps(progress, is_cancelled)
    try:
        step(0.0, "checking")
        base = params.base_python or find_base_python()
        choice = gpu_choice(params.gpu, run=run)
        out(f"LandSeg set-up {time.strftime('%Y-%m-%d %H:%M:%S')}: {params.env_dir} from {base}")
        out(f"device: {choice.device} ({choice.reason})")
        wheels = params.wheelhouse
        if wheels is not None:
            wheels, unpacked = _wheelhouse(wheels)
            out(f"offline: only the wheels in {params.wheelhouse}")
        lines = requirement_lines(engine_root(), choice.device, params.tensorrt, params.adapt)
        shutil.rmtree(staging, ignore_errors=True)
        params.env_dir.parent.mkdir(parents=True, exist_ok=True)
        site = params.system_site_packages
        site = sys.platform.startswith("linux") if site is None else site
        step(0.05, "creating the environment")
        venv = [str(base), "-m", "venv", *(["--system-site-packages"] if site else []), str(staging)]
        _stream(venv, out, step, 0.05, 0.1, params.timeout_s, params.env_dir.parent)
        python = env_python(staging)
        reqs = staging / "landseg-requirements.txt"
        reqs.write_text("\n".join(lines) + "\n")
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
        pip += ["--no-input", "-c", str(engine_root() / "constraints.txt"), "-r", str(reqs)]
        if wheels is not None:
            pip += ["--no-index", "--find-links", str(wheels)]
        step(0.1, "installing the engine's requirements")
        _stream(pip, out, step, 0.1, 0.9, params.timeout_s, params.env_dir.parent, expected=len(lines) * 3)
        step(0.9, "checking the engine")
        record = _verify(python, choice, out, run)
        record.update(
            created=time.strftime("%Y-%m-%dT%H:%M:%S"),
            base_python=str(base),
            wheelhouse=str(params.wheelhouse) if params.wheelhouse else None,
            system_site_packages=site,
            adapt=params.adapt,
        )
        (staging / MARKER).write_text(json.dumps(record, indent=1))
        _move_into_place(staging, params.env_dir, out, run)
        python = env_python(params.env_dir)
        out(f"done: {python} ({record['device_summary']})")
        if progress:  # no cancelling from here: the environment is in place
            progress(1.0, "ready")
        return SetupResult(python, record)
    except EngineCancelled:
        out("cancelled")
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except SetupError as exc:
        out(f"failed: {exc}")
        shutil.rmtree(staging, ignore_errors=True)
        raise SetupError(f"{exc} (log: {out.path})") from None
    except OSError as exc:  # disk full, permissions: our own writes
        shutil.rmtree(staging, ignore_errors=True)
        reason = _os_reason(exc, params.env_dir)
        out(f"failed: {reason}")
        raise SetupError(f"{reason} (log: {out.path})") from None
    except Exception as exc:  # a bug: still one line naming the log, and no half environment
        shutil.rmtree(staging, ignore_errors=True)
        out(f"failed: {type(exc).__name__}: {exc}")
        raise SetupError(f"{type(exc).__name__}: {exc} (log: {out.path})") from None
    finally:
        out.file.close()
        if unpacked is not None:
            unpacked.cleanup()


class _Steps:
    def __init__(self, progress, is_cancelled):
        self.progress, self.is_cancelled = progress, is_cancelled

    def cancelled(self) -> bool:
        return bool(self.is_cancelled and self.is_cancelled())

    def __call__(self, frac: float, what: str) -> None:
        if self.cancelled():
            raise EngineCancelled("cancelled: the previous environment (if any) is unchanged")
        if self.progress:
            self.progress(frac, what)


def _stream(
    cmd: list[str], out: _Log, step: _Steps, lo: float, hi: float, timeout: float, cwd: Path, expected: int = 1
) -> None:
    """Run a set-up command, its output into the log line by line; progress from lo to hi as pip collects and
    installs (``expected`` lines of those); Cancel kills it."""
    out("$ " + " ".join(cmd))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(cwd))
    except OSError as exc:
        raise SetupError(f"cannot run {cmd[0]}: {exc.strerror or exc}") from None
    t0, seen, tail = time.monotonic(), 0, []
    for line in proc.stdout:  # type: ignore[union-attr]
        out(line)
        tail = (tail + [line.strip()])[-60:]
        if line.startswith(("Collecting", "Processing", "Installing", "Requirement already satisfied")):
            seen += 1
        if step.cancelled() or time.monotonic() - t0 > timeout:
            proc.kill()
            proc.wait()
            if step.cancelled():
                raise EngineCancelled("cancelled: the previous environment (if any) is unchanged")
            raise SetupError(f"{Path(cmd[0]).name} took longer than {timeout:.0f} s")
        if step.progress:
            step.progress(lo + (hi - lo) * min(1.0, seen / max(1, expected)), line.strip()[:100])
    code = proc.wait()
    if code != 0:
        raise SetupError(pip_reason(tail, code))


def pip_reason(tail: list[str], code: int) -> str:
    """One line for a failed venv/pip run, from the end of its output."""
    text = "\n".join(tail)
    if re.search(r"No space left on device|Errno 28|ENOSPC", text):
        return "the disk is full: free some space and press Set up again"
    if re.search(r"ensurepip is not available|No module named (venv|ensurepip)", text):
        return "this Python cannot make environments (on Debian/Ubuntu install python3-venv)"
    network = re.search(
        r"Failed to establish a new connection|Connection refused|Network is unreachable|Temporary failure in name "
        r"resolution|Name or service not known|NewConnectionError|ConnectTimeout|Read timed out|SSLError",
        text,
    )
    missing = re.search(r"(?:No matching distribution found for|Could not find a version that satisfies the "
                        r"requirement) ([^\s(]+)", text)  # fmt: skip
    if network:
        return (
            "no network: pip could not reach the package index"
            + (f" for {missing.group(1)}" if missing else "")
            + " (choose a wheelhouse folder or zip for an offline set-up)"
        )
    if missing:
        return f"pip found no {missing.group(1)} for this Python and platform (a wheelhouse for another platform?)"
    errors = [ln for ln in tail if ln.startswith("ERROR:") or "Error" in ln]
    said = (errors or [ln for ln in tail if ln] or [f"exit code {code}"])[-1]
    return f"pip failed: {said[:200]}"


def _os_reason(exc: OSError, where: Path) -> str:
    if exc.errno == 28:
        return f"the disk is full at {where}: free some space and press Set up again"
    return f"cannot write {exc.filename or where}: {exc.strerror or exc}"


def _wheelhouse(path: Path) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """A wheelhouse folder as it is (or the folder of a wheel chosen in it), or a zip of one unpacked into a
    temporary folder."""
    if path.is_file() and path.suffix == ".whl":
        path = path.parent
    if path.is_dir():
        return path, None
    if path.is_file() and zipfile.is_zipfile(path):
        tmp = tempfile.TemporaryDirectory(prefix="landseg-wheels-")
        with zipfile.ZipFile(path) as zf:
            zf.extractall(tmp.name)
        inner = [p for p in Path(tmp.name).iterdir() if p.is_dir()]
        has_wheels = any(Path(tmp.name).glob("*.whl"))
        return (Path(tmp.name) if has_wheels or len(inner) != 1 else inner[0]), tmp
    raise SetupError(f"wheelhouse {path} is neither a folder nor a zip of wheels")


_PROBE = (
    "import json, onnxruntime, platform; from engine import __version__; "
    "print(json.dumps({'engine_version': __version__, 'onnxruntime': onnxruntime.__version__, "
    "'providers': onnxruntime.get_available_providers(), 'python': platform.python_version()}))"
)


def _verify(python: Path, choice: GpuChoice, out: _Log, run: Callable) -> dict:
    """The engine runs in the new environment (``python -m engine describe`` on the default model) and its
    onnxruntime has the providers the device needs; returns what it found."""
    env = engine_env()
    checks = [[str(python), "-m", "engine", "describe"], [str(python), "-c", _PROBE]]
    answers = []
    for cmd in checks:
        proc = run(cmd, capture_output=True, text=True, cwd=str(engine_root()), env=env, timeout=300)
        out("$ " + " ".join(cmd[:4]) + "\n" + (proc.stdout or "")[-2000:] + (proc.stderr or "")[-4000:])
        if proc.returncode != 0:
            said = ((proc.stderr or "").strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise SetupError(f"the new environment cannot run the engine: {said[:200]}")
        answers.append(proc.stdout)
    record = json.loads(answers[1].strip().splitlines()[-1])
    record["device"] = choice.device
    record["gpu"] = choice.gpu
    record["device_reason"] = choice.reason
    if choice.device == "cuda" and "CUDAExecutionProvider" not in record["providers"]:
        raise SetupError(
            f"onnxruntime-gpu installed but it has no CUDA provider ({', '.join(record['providers'])}): "
            "update the NVIDIA driver, or set up for the CPU"
        )
    record["device_summary"] = f"CUDA: {choice.gpu}" if choice.device == "cuda" else f"CPU: {choice.reason}"
    return record


def _move_into_place(staging: Path, final: Path, out: _Log, run: Callable) -> None:
    """The verified environment replaces the old one, which is kept (under another name, so never picked) until
    the new one has imported its packages from its final place; should that fail, the old one comes back."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    python = env_python(final)
    # A venv's interpreter finds its packages from its own location: one import after the move proves it.
    proc = run([str(python), "-c", "import onnxruntime, rasterio"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        shutil.rmtree(final, ignore_errors=True)
        if old.exists():
            old.rename(final)
        said = ((proc.stderr or "").strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise SetupError(f"the environment does not work where it was moved: {said[:200]}")
    shutil.rmtree(old, ignore_errors=True)
    out(f"environment in place: {final}")


def remove_env(env_dir: Path | None = None) -> None:
    """Forget the environment (the panel's Repair starts from nothing when asked)."""
    env_dir = env_dir or data_home() / ENV_NAME
    (env_dir / MARKER).unlink(missing_ok=True)
    shutil.rmtree(env_dir, ignore_errors=True)
