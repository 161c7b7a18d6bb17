"""`lion-build-engines`: export LION to ONNX and, where TensorRT is importable, build its engines.

    lion-build-engines --model MODEL_DIR --out ENGINE_DIR [--precision auto|bf16|fp16|fp32]
                       [--decoder-weights float|int8]
                       [--max-batch N] [--max-beams N] [--max-new-tokens N] [--max-prompt-tokens N]
                       [--onnx-only] [--force]

Without --model, builds TensorRT engines from the ONNX already in ENGINE_DIR (export on a
desktop, build on the Jetson). Up-to-date directories are left alone unless --force.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .engines import (
    BuildConfig,
    EngineMetadata,
    EngineMismatchError,
    ProfileConfig,
    TensorRTUnavailable,
    import_tensorrt,
    is_engine_dir,
    prepare,
    tensorrt_available,
)
from .graphs import PRECISIONS
from .onnx import DECODER_WEIGHTS

log = logging.getLogger("lion_ros.export")


def _parser() -> argparse.ArgumentParser:
    defaults = ProfileConfig()
    parser = argparse.ArgumentParser(prog="lion-build-engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="LION model directory (config.json + safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="engine directory to create or update")
    parser.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                        help="auto: bf16 when TensorRT is present, else fp32 (ONNX Runtime CPU); fp16: "
                             "float16 T5 with float32 residual/RMSNorm/FFN output, for TensorRT without bf16")
    parser.add_argument("--decoder-weights", choices=DECODER_WEIGHTS,
                        help="int8: weight-only INT8 for the linear layers of the T5 decoder step except the LM "
                             "head (int8 weights with per-output-channel scales, dequantized in the graph; "
                             "activations keep --precision): about 2x (bf16/fp16) or 4x (fp32) fewer weight bytes "
                             "read per generated token. Default: what --out was exported with, float for a new export")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch, help="questions per call")
    parser.add_argument("--max-beams", type=int, default=defaults.max_beams)
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--max-prompt-tokens", type=int, default=defaults.max_prompt_tokens)
    parser.add_argument("--max-question-tokens", type=int, default=defaults.max_question_tokens)
    parser.add_argument("--workspace-gib", type=float, default=BuildConfig.workspace_gib)
    parser.add_argument("--onnx-only", action="store_true", help="export ONNX, do not build TensorRT engines")
    parser.add_argument("--force", action="store_true", help="rebuild even if the directory is up to date")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[lion-build-engines] %(message)s")
    with_tensorrt = not args.onnx_only and tensorrt_available()
    if not args.onnx_only and not with_tensorrt:
        try:
            import_tensorrt()
            reason = "no CUDA device visible"
        except TensorRTUnavailable as exc:
            reason = str(exc)
        log.warning("TensorRT engines will not be built: %s", reason)
        log.warning("exporting ONNX only (usable with the onnxruntime backend, or build engines later on the target "
                    "with: lion-build-engines --out %s)", args.out)
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if with_tensorrt else "fp32"
    if args.model is None and not is_engine_dir(args.out):
        log.error("--out %s holds no export yet: pass --model", args.out)
        return 2
    try:
        # Building plans from an existing export (no --model) must not turn it back into float.
        decoder_weights = args.decoder_weights or (
            EngineMetadata.load(args.out).decoder_weights if is_engine_dir(args.out) else "float")
        build = BuildConfig(
            precision=precision,
            decoder_weights=decoder_weights,
            profiles=ProfileConfig(
                max_batch=args.max_batch,
                max_beams=args.max_beams,
                max_new_tokens=args.max_new_tokens,
                max_prompt_tokens=args.max_prompt_tokens,
                max_question_tokens=args.max_question_tokens,
            ),
            workspace_gib=args.workspace_gib,
        )
        metadata = prepare(
            args.out,
            backend="tensorrt" if with_tensorrt else "onnxruntime",
            model_dir=args.model,
            build=build,
            rebuild_on_mismatch=True,
            force=args.force,
        )
    except (EngineMismatchError, FileExistsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    built = "TensorRT engines + ONNX" if metadata.tensorrt else "ONNX only"
    log.info("%s: %s, precision %s, %s decoder weights, model %s", args.out, built, metadata.precision,
             metadata.decoder_weights, metadata.model_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
