"""Reduced-precision copies of an ONNX model, made once and cached next to it.

int8 (the CPU's fast path): onnxruntime's static quantization (QDQ, per-channel int8 weights, uint8
activations, MinMax ranges) calibrated on real tiles of the raster being processed. fp16 (GPU): the CUDA
provider runs a float16 copy (inputs and outputs stay float32); the TensorRT provider builds its own FP16
engine from the fp32 model, so it needs no copy.

The copy sits beside the model (``model.int8.onnx`` + ``model.int8.json``), or in the user's cache folder when
the model's folder is read-only. The JSON records the source model's SHA-256, the recipe and what calibrated
it; a copy is valid while those match, so it is never re-made for a model it was made from, and a replaced
model (new hash) is quantized afresh.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..errors import ModelError

RECIPES = {"int8": "qdq-u8s8-per-channel-minmax/1", "fp16": "float16-keep-io/2"}
CALIBRATION_TILES = 16  # tiles spread over the raster: enough for stable MinMax ranges, ~1 s of inference
# The copy is used only where its classes agree with fp32's on this share of the pixels of held-back tiles
# (tiles of the same raster that did not calibrate it): int8 can be badly wrong without a sign (issue #33: 76 %
# on a Landsat scene with a cloud-mask model), and a wrong map is worse than a slow one.
MIN_AGREEMENT = 0.98
VALID_KEY = "__valid__"  # a held-back batch's (tiles, H, W) mask of valid pixels (not a model input)

Calibration = Callable[[], Iterable[dict[str, np.ndarray]]]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_paths(model: Path, precision: str, digest: str) -> tuple[Path, Path]:
    """Next to the model when its folder is writable, else ~/.cache/landseg/<precision>/<hash>.onnx."""
    model = Path(model)
    if os.access(model.parent, os.W_OK):
        onnx = model.with_name(f"{model.stem}.{precision}.onnx")
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "landseg" / precision
        onnx = root / f"{digest[:24]}.onnx"
    return onnx, onnx.with_suffix(".json")


def cached(model: Path, precision: str, digest: str | None = None) -> tuple[Path, dict] | None:
    """The valid cached copy of ``model`` at ``precision`` and its record, or None (``digest``: the model's
    SHA-256 when the caller has it already)."""
    digest = digest or sha256(model)
    onnx, record = cache_paths(model, precision, digest)
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if info.get("source_sha256") == digest and info.get("recipe") == RECIPES[precision] and onnx.exists():
        return onnx, info
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _float32_graph(model: Path, dst: Path) -> Path:
    """A float16 graph (fp16 weights and activations between Casts, as some exporters save them) as plain
    float32, which is what onnxruntime's quantizer takes; a float32 model is returned as it is."""
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.load(str(model))
    F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT

    def fix_tensor(t) -> bool:
        if t.data_type != F16:
            return False
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
        return True

    changed = any([fix_tensor(t) for t in m.graph.initializer])
    for node in m.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                changed |= fix_tensor(a.t)
            elif node.op_type == "Cast" and a.name == "to" and a.i == F16:
                a.i, changed = F32, True
    for vi in [*m.graph.value_info, *m.graph.input, *m.graph.output]:
        if vi.type.tensor_type.elem_type == F16:
            vi.type.tensor_type.elem_type, changed = F32, True
    if not changed:
        return model
    onnx.save(m, str(dst))
    return dst


def _quantize_int8(model: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a warning per tensor it leaves in float: not the user's news
    try:
        with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
            pre = Path(tmp) / "pre.onnx"
            f32 = _float32_graph(model, Path(tmp) / "float32.onnx")
            # Shape inference and graph fusions (batch norm into conv) before quantizing; the symbolic pass
            # cannot follow the dynamic batch and spatial axes, ONNX's own inference can.
            quant_pre_process(str(f32), str(pre), skip_symbolic_shape=True)
            out = Path(tmp) / "int8.onnx"
            quantize_static(
                str(pre),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
            _write_atomic(dst, out.read_bytes())
    finally:
        root.setLevel(level)


def _convert_fp16(model: Path, dst: Path) -> None:
    import onnx
    from onnx import TensorProto
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.load(str(model))
    if any(t.data_type == TensorProto.FLOAT16 for t in m.graph.initializer):
        # Already a float16 graph between float32 Casts (ukis-csmask's model: it went through this converter
        # once). Converting again adds the converter's input Cast a second time under the same name and output,
        # which onnxruntime refuses to load; the model runs in float16 as it is.
        _write_atomic(dst, Path(model).read_bytes())
        return
    _write_atomic(dst, convert_float_to_float16(m, keep_io_types=True).SerializeToString())


def reduced_model(
    model: Path,
    precision: str,
    calibration: Calibration | None = None,
    notify: Callable[[str], None] | None = None,
) -> Path:
    """The model file to load for ``precision``: the model itself for fp32, else its cached copy (made now if
    there is no valid one; int8 then needs ``calibration``, batches of model inputs from real tiles). An int8 copy
    whose classes agree with fp32's on fewer than MIN_AGREEMENT of the held-back tiles' pixels is not used: the
    model itself is returned, and ``notify`` says why (the figure is cached with the copy)."""
    path, _record = checked_model(model, precision, calibration, notify)
    return path


def checked_model(
    model: Path,
    precision: str,
    calibration: Calibration | None = None,
    notify: Callable[[str], None] | None = None,
) -> tuple[Path, dict]:
    """reduced_model, with the copy's record (``agreement``, ``check_tiles``, ``used``)."""
    model = Path(model)
    if precision == "fp32":
        return model, {}
    path, info = _copy(model, precision, calibration, notify)
    if precision == "int8" and info.get("agreement") is not None:
        share = info["agreement"]
        if share < MIN_AGREEMENT:
            if notify:
                notify(
                    f"--precision int8: the int8 copy of {model.name} agrees with fp32 on only {100 * share:.1f} % "
                    f"of the pixels of {info['check_tiles']} held-back tiles (below {100 * MIN_AGREEMENT:.0f} %): "
                    "running fp32"
                )
            return model, info | {"used": "fp32"}
        if notify:
            notify(
                f"--precision int8: the int8 copy of {model.name} agrees with fp32 on {100 * share:.2f} % of the "
                f"pixels of {info['check_tiles']} held-back tiles"
            )
    return path, info | {"used": precision}


def _copy(model: Path, precision: str, calibration, notify) -> tuple[Path, dict]:
    digest = sha256(model)
    onnx, record = cache_paths(model, precision, digest)
    onnx.parent.mkdir(parents=True, exist_ok=True)
    # One maker at a time: the batch workers that start together wait for the first one's copy and all run
    # that same copy (chunks of one mosaic must not be inferred by differently calibrated models).
    with open(onnx.with_name(f".{onnx.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        hit = cached(model, precision, digest)
        if hit is not None:
            return hit
        return _make(model, precision, onnx, record, digest, calibration, notify)


def _make(model: Path, precision: str, onnx: Path, record: Path, digest: str, calibration, notify):
    info = {"source": model.name, "source_sha256": digest, "recipe": RECIPES[precision]}
    try:
        if precision == "int8":
            batches = list(calibration()) if calibration is not None else []
            # The first CALIBRATION_TILES tiles calibrate; the ones after them (other tiles of the raster,
            # engine.predict.calibration_feeds) are held back to check the copy against fp32
            feeds, held, n = [], [], 0
            for b in batches:
                if VALID_KEY in b:
                    held.append(b)
                elif n < CALIBRATION_TILES:
                    feeds.append(b)
                    n += len(next(iter(b.values())))
            if not feeds:
                raise ModelError(
                    f"--precision int8: no calibrated copy of {model.name} yet and no tiles to calibrate it on; "
                    "run a land-cover or change job with --precision int8 on a representative raster first"
                )
            info["calibration_tiles"] = sum(len(next(iter(f.values()))) for f in feeds)
            if notify:
                notify(f"quantizing {model.name} to int8 on {info['calibration_tiles']} tiles")
            _quantize_int8(model, onnx, feeds)
            if held:
                info["agreement"], info["check_tiles"] = agreement(model, onnx, held)
        else:
            _convert_fp16(model, onnx)
    except ModelError:
        raise
    except Exception as exc:  # onnx / quantization tooling errors: one line, naming the model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot make the {precision} copy of {model}: {first}") from None
    import onnxruntime

    info["onnxruntime"] = onnxruntime.__version__
    _write_atomic(record, json.dumps(info, indent=1).encode())
    return onnx, info


def agreement(model: Path, copy: Path, batches: list[dict[str, np.ndarray]]) -> tuple[float, int]:
    """(share of pixels whose class is the same, tiles) for ``copy`` against ``model`` on the CPU: the class is
    the argmax over the output channels (the sign, for a one-channel output)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    runs = [ort.InferenceSession(str(m), so, providers=["CPUExecutionProvider"]) for m in (model, copy)]
    names = [{i.name for i in r.get_inputs()} for r in runs]
    same = total = tiles = 0
    for feeds in batches:
        a, b = (r.run(None, {k: v for k, v in feeds.items() if k in n})[0] for r, n in zip(runs, names, strict=True))
        ca, cb = (x.argmax(1) if x.shape[1] > 1 else x[:, 0] > 0 for x in (a, b))
        valid = feeds.get(VALID_KEY, np.ones(ca.shape, bool))
        same += int((ca == cb)[valid].sum())
        total += int(valid.sum())
        tiles += len(a)
    return round(same / max(1, total), 5), tiles
