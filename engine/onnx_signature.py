"""What a model package check needs from an ONNX file, read without parsing its weights.

Why: `onnx.load` parses every weight into Python objects, and importing onnx loads its C++ extension: 0.1 s of
every job for ukis-csmask's 40 MB model (1.5 % of a 2048² job on 2 cores), to learn a few names and shapes. This
reads the file's protobuf wire format (stable, documented at protobuf.dev/programming-guides/encoding) and walks
only the fields below, skipping every other one by its length; the field numbers are onnx.proto's. The check
(`model_package._checked`) and the Deepness reader see the same names, shapes and metadata as `onnx.load` gives
(tests/test_model_package.py compares both on every shipped model).

ModelProto: graph 7, metadata_props 14 (key 1, value 2). GraphProto: node 1 (counted), name 2, initializer 5
(TensorProto name 8), input 11, output 12. ValueInfoProto: name 1, type 2 -> TypeProto tensor_type 1 -> shape 2
-> dim 1 -> dim_value 1 | dim_param 2.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TensorSignature:
    name: str
    dims: tuple[int | None, ...] = ()  # a fixed size, or None (named or unknown); () when no shape is given


@dataclass(frozen=True)
class GraphSignature:
    name: str
    n_nodes: int
    inputs: tuple[TensorSignature, ...]  # the graph's inputs that are not initializers (weights)
    outputs: tuple[TensorSignature, ...]
    metadata: dict[str, str] = field(default_factory=dict)


class WireError(ValueError):
    """Not a protobuf message (a truncated or foreign file)."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, value) of one message: an int for varints, (start, end) for length-delimited
    fields; fixed-size fields are skipped."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise WireError("field runs past its message")
            yield number, wire, (pos, pos + size)
            pos += size
        elif wire in (1, 5):  # fixed64, fixed32
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise WireError("truncated fixed-size field")
        else:  # groups (3, 4) are not used by onnx.proto; 6 and 7 do not exist
            raise WireError(f"wire type {wire}")


def _text(buf, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).decode("utf-8", errors="replace")


def _sub(buf, span: tuple[int, int], number: int, wire: int = 2):
    """Every value of field `number` in the message at `span`."""
    return [v for n, w, v in _fields(buf, *span) if n == number and w == wire]


def _dims(buf, type_span: tuple[int, int]) -> tuple[int | None, ...]:
    dims: list[int | None] = []
    for tensor in _sub(buf, type_span, 1):
        for shape in _sub(buf, tensor, 2):
            for dim in _sub(buf, shape, 1):
                value = None
                for n, w, v in _fields(buf, *dim):
                    if n == 1 and w == 0:
                        value = v - (1 << 64) if v >= 1 << 63 else v  # int64, two's complement
                    elif n == 2 and w == 2:
                        value = None
                dims.append(value)
    return tuple(dims)


def _value_info(buf, span: tuple[int, int]) -> TensorSignature:
    name, dims = "", ()
    for n, w, v in _fields(buf, *span):
        if n == 1 and w == 2:
            name = _text(buf, v)
        elif n == 2 and w == 2:
            dims = _dims(buf, v)
    return TensorSignature(name, dims)


def read_signature(path: str | Path) -> GraphSignature:
    """The graph's name, node count, inputs (less initializers), outputs and metadata. Raises WireError for a
    file that is not a protobuf message, OSError when it cannot be read."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise WireError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                return _read(buf, len(mm))
            finally:
                buf.release()


def _read(buf, size: int) -> GraphSignature:
    graphs, metadata = [], {}
    for n, w, v in _fields(buf, 0, size):
        if n == 7 and w == 2:
            graphs.append(v)
        elif n == 14 and w == 2:
            entry = {k: _text(buf, s) for k, wk, s in _fields(buf, *v) if wk == 2 and k in (1, 2)}
            metadata[entry.get(1, "")] = entry.get(2, "")
    name, n_nodes, initializers, inputs, outputs = "", 0, set(), [], []
    for graph in graphs:  # written once; were it more, protobuf merges them: lists add up, the last name wins
        for n, w, v in _fields(buf, *graph):
            if w != 2:
                continue
            if n == 1:
                n_nodes += 1
            elif n == 2:
                name = _text(buf, v)
            elif n == 5:
                initializers.update(_text(buf, s) for s in _sub(buf, v, 8))
            elif n == 11:
                inputs.append(_value_info(buf, v))
            elif n == 12:
                outputs.append(_value_info(buf, v))
    return GraphSignature(
        name=name,
        n_nodes=n_nodes,
        inputs=tuple(i for i in inputs if i.name not in initializers),
        outputs=tuple(outputs),
        metadata=metadata,
    )
