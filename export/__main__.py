"""python -m export baseline --out models/rgb_index_baseline.onnx"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("baseline", help="write the physically based RGB index baseline model")
    b.add_argument("--out", default="models/rgb_index_baseline.onnx")
    args = parser.parse_args(argv)
    if args.command == "baseline":
        from .baseline import write

        print(write(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
