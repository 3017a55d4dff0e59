"""Segment Anything (segment-anything package) -> two ONNX files the engine can run without torch:

- ``encoder.onnx``: raw RGB (1, 3, S, S), values 0..255, already resized so the long side is S and padded
  -> image embeddings (1, C, S/16, S/16). Pixel normalisation is inside the graph.
- ``decoder.onnx``: segment-anything's own SamOnnxModel (as its scripts/export_onnx_model.py exports it):
  embeddings + points/labels (+ optional mask prompt) -> masks, IoU predictions, low-res masks.
- ``sam.json``: what the engine needs to drive them (image size, normalisation, file names).

Weights are never downloaded: pass the official vit_b / vit_l / vit_h checkpoint you have, or build ``tiny``
(a small random SAM from segment-anything's own building blocks) for tests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .errors import ExportError

MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "tiny")


def _import_segment_anything():
    """Import segment_anything without torchvision.

    The package imports torchvision at top level only for its image-resize helper and the automatic mask
    generator's NMS, neither of which the export uses; no CPU torchvision wheel is installable here. When
    torchvision is missing, a stub whose functions raise stands in for it.
    """
    import importlib.util
    import sys
    import types

    stubbed: list[str] = []
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:

        def missing(*_a, **_k):
            raise ExportError("this segment-anything helper needs torchvision, which is not installed")

        names = (
            "torchvision",
            "torchvision.ops",
            "torchvision.ops.boxes",
            "torchvision.transforms",
            "torchvision.transforms.functional",
        )
        for name in names:
            mod = types.ModuleType(name)
            mod.__dict__.update(batched_nms=missing, box_area=missing, resize=missing, to_pil_image=missing)
            sys.modules[name] = mod
            stubbed.append(name)
    try:
        import segment_anything
    except ImportError:
        raise ExportError("SAM export needs the segment-anything package: pip install segment-anything") from None
    finally:
        # Only segment_anything may see the stub: other libraries probe for a real torchvision.
        for name in stubbed:
            sys.modules.pop(name, None)
    return segment_anything


PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]


@dataclass
class SamExportParams:
    model_type: str
    out_dir: Path
    checkpoint: Path | None = None
    opset: int = 17
    tolerance: float = 1e-3


def build_tiny_sam(img_size: int = 256, seed: int = 0):
    """A SAM with the real architecture at toy size (ViT depth 2, width 64), randomly initialised."""
    import torch

    _import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    patch, prompt_dim = 16, 32
    emb = img_size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=64,
            img_size=img_size,
            mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(1,),
            window_size=4,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(img_size, img_size),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )
    return sam.eval()


def build_sam(model_type: str, checkpoint: Path | None):
    if model_type not in MODEL_TYPES:
        raise ExportError(f"SAM model type must be one of {', '.join(MODEL_TYPES)}, not {model_type!r}")
    if model_type == "tiny":
        return build_tiny_sam()
    sam_model_registry = _import_segment_anything().sam_model_registry
    if checkpoint is not None and not Path(checkpoint).exists():
        raise ExportError(f"SAM checkpoint not found: {checkpoint} (weights cannot be downloaded here)")
    try:
        return sam_model_registry[model_type](checkpoint=str(checkpoint) if checkpoint else None).eval()
    except RuntimeError as exc:
        raise ExportError(f"checkpoint {checkpoint} does not fit {model_type}: {str(exc).splitlines()[0]}") from None


def _encoder_wrapper(sam):
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = sam.image_encoder
            self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.encoder((image - self.mean) / self.std)

    return Encoder().eval()


def _decoder_inputs(sam, n_points: int = 5, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    size = sam.image_encoder.img_size
    emb = sam.prompt_encoder.image_embedding_size
    return {
        "image_embeddings": torch.randn(1, sam.prompt_encoder.embed_dim, *emb, generator=g),
        "point_coords": torch.randint(0, size, (1, n_points, 2), generator=g).float(),
        "point_labels": torch.randint(0, 4, (1, n_points), generator=g).float(),
        "mask_input": torch.randn(1, 1, 4 * emb[0], 4 * emb[1], generator=g),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([float(size), float(size)]),
    }


def _export(module, args: tuple, path: Path, input_names, output_names, dynamic_axes, opset: int) -> None:
    import torch

    tmp = path.with_name(f".{path.stem}.tmp.onnx")
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(tmp),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        os.replace(tmp, path)
    except Exception as exc:
        raise ExportError(f"SAM export of {path.name} failed: {str(exc).splitlines()[0]}") from None
    finally:
        tmp.unlink(missing_ok=True)


def export_sam(params: SamExportParams, log=print) -> dict:
    import onnxruntime as ort
    import torch

    sam = build_sam(params.model_type, params.checkpoint)
    out = Path(params.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = sam.image_encoder.img_size
    enc, dec = out / "encoder.onnx", out / "decoder.onnx"

    encoder = _encoder_wrapper(sam)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    _export(encoder, (image,), enc, ["image"], ["image_embeddings"], None, params.opset)
    from segment_anything.utils.onnx import SamOnnxModel

    decoder = SamOnnxModel(sam, return_single_mask=True)
    dummy = _decoder_inputs(sam)
    _export(
        decoder,
        tuple(dummy.values()),
        dec,
        list(dummy),
        ["masks", "iou_predictions", "low_res_masks"],
        {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        params.opset,
    )

    # Parity, torch vs onnxruntime: encoder on a random image, decoder on a different number of points.
    with torch.no_grad():
        ref_emb = encoder(image).numpy()
    got_emb = ort.InferenceSession(str(enc), providers=["CPUExecutionProvider"]).run(None, {"image": image.numpy()})[0]
    enc_diff = float(np.abs(ref_emb - got_emb).max())
    feeds = _decoder_inputs(sam, n_points=3, seed=1)
    with torch.no_grad():
        ref_masks, ref_iou, _ = decoder(*feeds.values())
    sess = ort.InferenceSession(str(dec), providers=["CPUExecutionProvider"])
    got_masks, got_iou, _ = sess.run(None, {k: v.numpy() for k, v in feeds.items()})
    iou_diff = float(np.abs(ref_iou.numpy() - got_iou).max())
    mask_agree = float(((ref_masks.numpy() > sam.mask_threshold) == (got_masks > sam.mask_threshold)).mean())
    report = {
        "encoder_max_abs_diff": enc_diff,
        "decoder_iou_max_abs_diff": iou_diff,
        "decoder_mask_agreement": mask_agree,
    }
    scale = max(1.0, float(np.abs(ref_emb).max()))
    if enc_diff > params.tolerance * scale or iou_diff > params.tolerance or mask_agree < 0.999:
        raise ExportError(f"SAM parity check failed: {report}")
    doc = {
        "format": "landseg-sam/1",
        "model_type": params.model_type,
        "checkpoint": str(params.checkpoint) if params.checkpoint else None,
        "img_size": size,
        "embedding_size": list(sam.prompt_encoder.image_embedding_size),
        "embed_dim": sam.prompt_encoder.embed_dim,
        "pixel_mean": PIXEL_MEAN,
        "pixel_std": PIXEL_STD,
        "mask_threshold": sam.mask_threshold,
        "encoder": enc.name,
        "decoder": dec.name,
        "parity": report,
    }
    (out / "sam.json").write_text(json.dumps(doc, indent=1))
    log(f"SAM {params.model_type} exported to {out}: {report}")
    return doc
