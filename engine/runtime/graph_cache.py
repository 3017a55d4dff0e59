"""onnxruntime's optimized graph of a model, saved once and loaded by later runs (CPU only).

Why: building a session spends most of its time optimizing the graph (0.33 s of a 2048² job for ukis-csmask's
40 MB model). The copy is optimized at onnxruntime's highest level ("all": its NCHWc layout and fused kernels)
and loaded with optimization off, which onnxruntime's docs call offline mode: 0.07 s for that model, where the
"extended" copy kept before still took 0.18-0.20 s (the layout pass ran again at every load). The "all" level
depends on the CPU (its vector width), so the key holds the CPU's identity (model name and instruction-set
flags) beside the model's path, size and modification time and onnxruntime's version: a home folder shared by
machines of different CPUs keeps one copy for each. It lives in the user's cache folder
(~/.cache/landseg/optimized), never beside the model; when that folder cannot be written the model is loaded as
it is (optimized at load). Each new copy removes the copies that can never be used again (their model is gone,
or has changed since): models run from temporary folders would otherwise fill the cache without end (40 MB a
run for ukis-csmask's).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path


@functools.cache
def cpu_identity() -> str:
    """The CPU as the optimized graph depends on it: model name and instruction-set flags (Linux), else what
    the platform module says."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        first = text.split("\n\n", 1)[0]  # the first processor's block
        pairs = (line.split(":", 1) for line in first.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in pairs}  # "model name\t: ..." : the names are padded with tabs
        wanted = [fields.get(k, "") for k in ("vendor_id", "model name", "flags", "Features", "CPU part")]
        if any(wanted):
            return hashlib.sha256("|".join(wanted).encode()).hexdigest()[:16]
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}"


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "landseg" / "optimized"


def _key(model: Path) -> dict:
    import onnxruntime

    st = model.stat()
    return {"model": str(model.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "onnxruntime": onnxruntime.__version__, "level": "all", "cpu": cpu_identity()}  # fmt: skip


def optimized_graph(model: Path) -> Path:
    """The saved optimized graph of `model` (made now when missing or stale), or `model` when it cannot be.
    The caller loads a saved graph with onnxruntime's optimization off: it is optimized already."""
    import onnxruntime as ort

    tmp = None
    try:
        key = _key(model)
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        onnx, record = _cache_dir() / f"{name}.onnx", _cache_dir() / f"{name}.json"
        if record.exists() and onnx.exists() and json.loads(record.read_text()) == key:
            return onnx
        onnx.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=onnx.parent, prefix=f".{name}.", suffix=".tmp.onnx")
        os.close(fd)
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = tmp
        ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        os.replace(tmp, onnx)  # whole files only: a reader never sees half of one
        record.write_text(json.dumps(key))
        _prune(onnx.parent, keep=name, current=key)
        return onnx
    except Exception:  # no cache (read-only home, full disk, a graph it cannot load): the model itself
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        return model


def _prune(folder: Path, keep: str, current: dict) -> None:
    """Remove the copies whose model no longer exists or has another size or time, and those of another
    onnxruntime version or optimization level (a stale copy is never loaded: its key no longer matches); another
    CPU's copy stays. A copy in use by a running session is safe: onnxruntime has read it."""
    for record in folder.glob("*.json"):
        if record.stem == keep:
            continue
        try:
            key = json.loads(record.read_text())
            st = Path(key["model"]).stat()
            same = all(key.get(k) == current[k] for k in ("onnxruntime", "level"))
            if same and (st.st_size, st.st_mtime_ns) == (key["size"], key["mtime_ns"]):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable record, or its model is gone: stale
        record.with_suffix(".onnx").unlink(missing_ok=True)
        record.unlink(missing_ok=True)
