"""lion-convert: the official LION release -> a model directory for lion-ask, the node and export.

    lion-convert --lion LION-FlanT5-XL.pth --eva eva_vit_g.pth --flan-t5 google/flan-t5-xl \\
        --bert bert-base-uncased --out models/lion-4b

All inputs are local files (download them first, see lion-model.md §7). Strict: every tensor the
model needs must come from an input and every input tensor must be used, except the documented
drops; --allow-missing / --allow-unexpected relax that by pattern. Exit status: 0 converted,
1 failed (the message names every offending tensor), 2 bad command line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from lion_ros.model.config import PRESETS
from lion_ros.model.convert import DTYPE_CHOICES, ConversionError, ConvertConfig, convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lion-convert",
        description="Convert the official LION release (LION .pth, eva_vit_g.pth, FlanT5 and "
        "bert-base-uncased directories) into a lion_ros model directory.",
    )
    parser.add_argument("--lion", required=True, type=Path, help="LION checkpoint (.pth), e.g. LION-FlanT5-XL.pth")
    parser.add_argument("--eva", required=True, type=Path, help="EVA ViT-g weights, eva_vit_g.pth (LAVIS BLIP-2)")
    parser.add_argument("--flan-t5", required=True, type=Path,
                        help="FlanT5 directory: config.json, weights (safetensors or .bin) and tokenizer")
    parser.add_argument("--bert", required=True, type=Path, help="bert-base-uncased tokenizer directory")
    parser.add_argument("--out", required=True, type=Path, help="output model directory")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="architecture besides T5 (default: lion-4b for FlanT5-XL, lion-12b for XXL)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32",
                        help="storage dtype of floating tensors; 'mixed' = ViT fp16, T5 bf16, the rest fp32 "
                             "(default float32)")
    parser.add_argument("--allow-missing", action="append", default=[], metavar="PATTERN",
                        help="fnmatch pattern over our tensor names that may be missing (they keep the "
                             "initialisation); repeatable")
    parser.add_argument("--allow-unexpected", action="append", default=[], metavar="PATTERN",
                        help="fnmatch pattern over input tensor names (optionally 'lion:', 'eva:' or "
                             "'flan_t5:' prefixed) that may be left unused; repeatable")
    parser.add_argument("--max-shard-gb", type=float, default=2.0, help="split weights into shards of this size")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    options = ConvertConfig(
        preset=args.preset,
        dtype=args.dtype,
        allow_missing=tuple(args.allow_missing),
        allow_unexpected=tuple(args.allow_unexpected),
        max_shard_bytes=int(args.max_shard_gb * 1024**3),
    )
    try:
        report = convert(args.lion, args.eva, args.flan_t5, args.bert, args.out, options)
    except (ConversionError, FileNotFoundError, ValueError) as exc:
        print(f"lion-convert: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {report.output} ({report.config.name}, {report.tensors} tensors, {args.dtype})")
    for title, names in (
        ("dropped on purpose", report.dropped),
        ("replaced by a later input", report.overridden),
        ("allowed missing (initialised)", report.allowed_missing),
        ("allowed unexpected (unused)", report.allowed_unexpected),
    ):
        if names:
            print(f"{title} ({len(names)}): " + ", ".join(names[:8]) + (" ..." if len(names) > 8 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
