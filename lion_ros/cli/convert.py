"""lion-convert: the official LION release -> a model directory for lion-ask, the node and export.

    lion-convert --lion LION-FlanT5-XL.pth --eva eva_vit_g.pth --flan-t5 google/flan-t5-xl \\
        --bert bert-base-uncased --out models/lion-4b

All inputs are local files (download them first, see lion-model.md §7). Strict: every tensor the
model needs must come from an input and every input tensor must be used, except the documented
drops; --allow-missing / --allow-unexpected relax that by pattern. A model size outside the presets
is described by --config, a (partial) config.json laid over the preset. Exit status: 0 converted,
1 failed (the message names every offending tensor or config field), 2 bad command line.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lion_ros.model.config import PRESETS
from lion_ros.model.convert import DTYPE_CHOICES, ConversionError, ConvertConfig, convert, load_overrides

CONFIG_EPILOG = """\
Model sizes outside the presets: --config CONFIG_JSON takes a JSON object in the layout of a
model directory's config.json (sections vision, qformer, aggregator, language, adapter, plus
name, visual_input, initializer_range, dtype_policy). It may be partial: its fields are laid over
the preset (section by section; without --preset, the preset of FlanT5's d_model), everything it
leaves out keeps the preset's value. T5's shape comes from the FlanT5 config.json, the
vocabulary sizes and the soft-prompt id from the tokenizers; a --config value that contradicts
them is an error. Example, a narrower ViT:
  {"name": "lion-custom", "vision": {"hidden_size": 1024, "num_hidden_layers": 24,
   "num_attention_heads": 16, "intermediate_size": 4096},
   "aggregator": {"main_layer": 23, "cross_layers": [17, 11]}}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lion-convert",
        description="Convert the official LION release (LION .pth, eva_vit_g.pth, FlanT5 and\n"
        "bert-base-uncased directories) into a lion_ros model directory.",
        epilog=CONFIG_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lion", required=True, type=Path, help="LION checkpoint (.pth), e.g. LION-FlanT5-XL.pth")
    parser.add_argument("--eva", required=True, type=Path, help="EVA ViT-g weights, eva_vit_g.pth (LAVIS BLIP-2)")
    parser.add_argument("--flan-t5", required=True, type=Path,
                        help="FlanT5 directory: config.json, weights (safetensors or .bin) and tokenizer")
    parser.add_argument("--bert", required=True, type=Path, help="bert-base-uncased tokenizer directory")
    parser.add_argument("--out", required=True, type=Path, help="output model directory")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="architecture besides T5 (default: lion-4b for FlanT5-XL, lion-12b for XXL); "
                             "the base --config is laid over")
    parser.add_argument("--config", type=Path, metavar="CONFIG_JSON",
                        help="(partial) config.json for a size outside the presets, see below")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32",
                        help="storage dtype of floating tensors (default float32). 'mixed' = the official "
                             "loader's dtypes on CUDA: the ViT's Linear and Conv weights and biases fp16 (its "
                             "LayerNorms, q/v biases, cls_token and pos_embed fp32), T5 bf16, ln_vision, "
                             "Q-Former, aggregator, projections, soft prompt and adapters fp32")
    parser.add_argument("--allow-missing", action="append", default=[], metavar="PATTERN",
                        help="fnmatch pattern over our tensor names that may be missing (they keep the "
                             "initialisation); repeatable")
    parser.add_argument("--allow-unexpected", action="append", default=[], metavar="PATTERN",
                        help="fnmatch pattern over input tensor names (optionally 'lion:', 'eva:' or "
                             "'flan_t5:' prefixed) that may be left unused; repeatable")
    parser.add_argument("--max-shard-gb", type=float, default=2.0, help="split weights into shards of this size")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = ConvertConfig(
            preset=args.preset,
            overrides=load_overrides(args.config) if args.config else {},
            dtype=args.dtype,
            allow_missing=tuple(args.allow_missing),
            allow_unexpected=tuple(args.allow_unexpected),
            max_shard_bytes=int(args.max_shard_gb * 1024**3),
        )
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
