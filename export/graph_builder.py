"""A small helper for writing ONNX graphs as arithmetic (for physically based models and test models).

Each method adds a node and returns its output name, so a formula reads like numpy:
``g.div(g.sub(nir, red), g.add(nir, red))`` is NDVI.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class GraphBuilder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._n = 0

    def _fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def input(self, name: str, channels: int) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, "H", "W"]))
        return name

    def output(self, name: str, value: str, channels: int) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, "H", "W"]))

    def const(self, value: Any, hint: str = "c") -> str:
        name = self._fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs: Any) -> Any:
        outs = [self._fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def _v(self, x: str | float) -> str:
        return x if isinstance(x, str) else self.const(x)

    def add(self, a: str | float, b: str | float) -> str:
        return self.op("Add", self._v(a), self._v(b))

    def sub(self, a: str | float, b: str | float) -> str:
        return self.op("Sub", self._v(a), self._v(b))

    def mul(self, a: str | float, b: str | float) -> str:
        return self.op("Mul", self._v(a), self._v(b))

    def div(self, a: str | float, b: str | float) -> str:
        return self.op("Div", self._v(a), self._v(b))

    def channels(self, x: str, n: int) -> list[str]:
        sizes = self._fresh("split")
        self.inits.append(numpy_helper.from_array(np.ones(n, dtype=np.int64), sizes))
        return self.op("Split", x, sizes, n_out=n, axis=1)

    def concat(self, *xs: str) -> str:
        return self.op("Concat", *xs, axis=1)

    def reduce(self, op_type: str, x: str) -> str:
        return self.op(op_type, x, axes=[1], keepdims=1)

    def conv(self, x: str, weight: np.ndarray, bias: np.ndarray) -> str:
        k = weight.shape[-1]
        return self.op("Conv", x, self.const(weight, "w"), self.const(bias, "b"), pads=[k // 2] * 4)

    def smooth(self, x: str, k: int) -> str:
        """k x k box mean that ignores padding: stands in for a network's spatial context."""
        return self.op("AveragePool", x, kernel_shape=[k, k], pads=[k // 2] * 4, count_include_pad=0)

    def model(self, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="landseg-export")
        m.doc_string = doc
        onnx.checker.check_model(m, full_check=True)
        return m
