#!/usr/bin/env python3
"""lion_ros's generation against transformers' InstructBLIP generate, on the same weights.

A LION in Q-Former mode with its adapters at their zero init is InstructBLIP-FlanT5: its weights
load into `InstructBlipForConditionalGeneration` unchanged (the parity construction of
tests/test_model_lion.py). Both then answer the same batch; timings are medians of interleaved
repeats (the machines are shared and noisy) and every row prints the ratio measured in that run.

Stages, for both: image encode (the ViT; ours caches it per frame), prefill (Q-Former, projection,
T5 encoder), decode ms per token ((end to end with N new tokens - with 1) / (N - 1)), and end to
end with N new tokens. EOS is made unreachable so both generate exactly N tokens; greedy token ids
are compared and the result printed.

    python bench/bench_vs_transformers.py --sizes tiny t5-small --threads 1
    python bench/bench_vs_transformers.py --device cuda --sizes lion-4b --dtype bfloat16
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

from lion_ros.model import LionConfig, LionModel
from lion_ros.model.generation import GenerationSettings, decode

# flan-t5-small's language model on nano's vision side.
T5_SMALL = {"d_model": 512, "d_kv": 64, "d_ff": 1024, "num_heads": 6, "num_layers": 8, "num_decoder_layers": 8,
            "vocab_size": 32128}
SIZES = ("tiny", "t5-small", "lion-4b")
PROMPT_TOKENS = 24


def lion_config(size: str) -> LionConfig:
    if size == "tiny":
        config = LionConfig.preset("lion-tiny")
    elif size == "t5-small":
        nano = LionConfig.preset("lion-nano")
        config = dataclasses.replace(nano, language=dataclasses.replace(nano.language, **T5_SMALL))
    else:
        config = LionConfig.preset(size)
    # No EOS within the vocabulary: both implementations generate exactly max_new_tokens.
    language = dataclasses.replace(config.language, eos_token_id=config.language.vocab_size + 7)
    return dataclasses.replace(config, visual_input="qformer", language=language)


def build_pair(size: str, device: str, dtype: torch.dtype) -> tuple[LionModel, InstructBlipForConditionalGeneration]:
    torch.manual_seed(0)
    model = LionModel(lion_config(size)).eval()
    config = model.config
    reference = InstructBlipForConditionalGeneration(InstructBlipConfig(
        vision_config=model.vision_model.config.to_dict(),
        qformer_config=model.qformer.config.to_dict(),
        text_config=model.language_model.config,
        num_query_tokens=config.qformer.num_query_tokens,
        image_token_index=config.language.vocab_size - 2,
    )).eval()
    reference.language_model.lm_head.weight = nn.Parameter(torch.empty_like(reference.language_model.lm_head.weight))
    shared = {k: v for k, v in model.state_dict().items() if ".adapter." not in k and k != "soft_prompt_hint"}
    missing, unexpected = reference.load_state_dict(shared, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto InstructBLIP: missing {missing}, unexpected {unexpected}")
    reference.vision_model.post_layernorm.eps = model.vision_model.post_layernorm.eps
    return model.to(device, dtype), reference.to(device, dtype)


@dataclasses.dataclass
class Batch:
    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    qformer_input_ids: torch.Tensor
    qformer_attention_mask: torch.Tensor


def make_batch(config: LionConfig, batch_size: int, device: str, dtype: torch.dtype) -> Batch:
    generator = torch.Generator().manual_seed(1)
    size = config.vision.image_size
    input_ids = torch.randint(2, config.language.vocab_size - 2, (batch_size, PROMPT_TOKENS), generator=generator)
    qformer_ids = torch.randint(1, config.qformer.vocab_size, (batch_size, 12), generator=generator)
    return Batch(
        pixel_values=torch.randn(batch_size, 3, size, size, generator=generator).to(device, dtype),
        input_ids=input_ids.to(device),
        attention_mask=torch.ones_like(input_ids).to(device),
        qformer_input_ids=qformer_ids.to(device),
        qformer_attention_mask=torch.ones_like(qformer_ids).to(device),
    )


def ours(model: LionModel, batch: Batch, new_tokens: int, beams: int) -> dict[str, Callable[[], Any]]:
    settings = GenerationSettings(max_new_tokens=new_tokens, num_beams=beams, repetition_penalty=1.0)
    task_index = None  # Q-Former mode: one adapter, no routing

    @torch.inference_mode()
    def prefill(features):
        prefix = model.visual_prefix(features, batch.qformer_input_ids, batch.qformer_attention_mask)
        return model.encode(prefix, batch.input_ids, batch.attention_mask, task_index)

    @torch.inference_mode()
    def end_to_end(tokens: int):
        states, mask = prefill(model.encode_image(batch.pixel_values))
        return decode(model, states, mask, task_index, dataclasses.replace(settings, max_new_tokens=tokens))

    return {
        "encode": lambda: torch.inference_mode()(model.encode_image)(batch.pixel_values),
        "prefill": lambda: prefill(model.encode_image(batch.pixel_values)),
        "e2e": lambda: end_to_end(new_tokens),
        "e2e1": lambda: end_to_end(1),
        "tokens": lambda: [end_to_end(new_tokens).tokens(i) for i in range(batch.input_ids.shape[0])],
    }


def transformers_generate(reference: InstructBlipForConditionalGeneration, batch: Batch, new_tokens: int,
                          beams: int) -> dict[str, Callable[[], Any]]:
    config = reference.config
    slots = torch.full((batch.input_ids.shape[0], config.num_query_tokens), config.image_token_index,
                       device=batch.input_ids.device)
    input_ids = torch.cat([slots, batch.input_ids], 1)
    attention_mask = torch.cat([torch.ones_like(slots), batch.attention_mask], 1)
    eos = reference.language_model.config.vocab_size + 7

    @torch.inference_mode()
    def generate(tokens: int):
        return reference.generate(
            pixel_values=batch.pixel_values, qformer_input_ids=batch.qformer_input_ids,
            qformer_attention_mask=batch.qformer_attention_mask, input_ids=input_ids, attention_mask=attention_mask,
            max_new_tokens=tokens, min_new_tokens=tokens, num_beams=beams, do_sample=False, eos_token_id=eos,
            repetition_penalty=1.0, length_penalty=1.0)

    @torch.inference_mode()
    def prefill():
        image = reference.vision_model(pixel_values=batch.pixel_values).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        queries = reference.query_tokens.expand(image.shape[0], -1, -1)
        qformer = reference.qformer(
            input_ids=batch.qformer_input_ids,
            attention_mask=torch.cat([torch.ones(queries.shape[:-1], dtype=torch.long, device=image.device),
                                      batch.qformer_attention_mask], 1),
            query_embeds=queries, encoder_hidden_states=image, encoder_attention_mask=image_mask,
        ).last_hidden_state[:, : queries.shape[1]]
        prefix = reference.language_projection(qformer)
        embeds = reference.language_model.get_input_embeddings()(batch.input_ids)
        return reference.language_model.encoder(
            inputs_embeds=torch.cat([prefix.to(embeds.dtype), embeds], 1), attention_mask=attention_mask)

    return {
        "encode": lambda: torch.inference_mode()(reference.vision_model)(pixel_values=batch.pixel_values),
        "prefill": prefill,
        "e2e": lambda: generate(new_tokens),
        "e2e1": lambda: generate(1),
        # transformers starts its output with the decoder start token.
        "tokens": lambda: [row[1:].tolist() for row in generate(new_tokens)],
    }


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_medians(variants: dict[str, dict[str, Callable[[], Any]]], stages: list[str], repeats: int,
                        device: str) -> dict[tuple[str, str], float]:
    """Median ms of every (variant, stage); each repeat runs every variant's stage once, in turn."""
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for fns in variants.values():  # warm-up: lazy init, allocator, kernels
        for stage in stages:
            fns[stage]()
    synchronize(device)
    for _ in range(repeats):
        for stage in stages:
            for name, fns in variants.items():
                started = time.perf_counter()
                fns[stage]()
                synchronize(device)
                times[name, stage].append((time.perf_counter() - started) * 1e3)
    return {key: statistics.median(values) for key, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=["tiny", "t5-small"])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args(argv)
    if "lion-4b" in args.sizes and args.device != "cuda":
        parser.error("lion-4b is measured on a GPU only (--device cuda)")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (decode ms/token is measured between 1 and N tokens)")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    machine = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    print(f"device {args.device} ({machine}) | dtype {args.dtype} | threads {args.threads} | prompt "
          f"{PROMPT_TOKENS} tokens | {args.new_tokens} new tokens | median of {args.repeats} interleaved repeats")
    print("| size | search | batch | stage | lion_ros ms | transformers ms | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        model, reference = build_pair(size, args.device, dtype)
        for beams in args.beams:
            for batch_size in args.batch_sizes:
                batch = make_batch(model.config, batch_size, args.device, dtype)
                variants = {"lion_ros": ours(model, batch, args.new_tokens, beams),
                            "transformers": transformers_generate(reference, batch, args.new_tokens, beams)}
                medians = interleaved_medians(variants, ["encode", "prefill", "e2e", "e2e1"], args.repeats,
                                              args.device)
                rows = {stage: (medians["lion_ros", stage], medians["transformers", stage])
                        for stage in ("encode", "prefill")}
                rows["decode per token"] = tuple(
                    (medians[name, "e2e"] - medians[name, "e2e1"]) / (args.new_tokens - 1)
                    for name in ("lion_ros", "transformers"))
                rows["end to end"] = (medians["lion_ros", "e2e"], medians["transformers", "e2e"])
                search = "greedy" if beams == 1 else f"beam {beams}"
                for stage, (mine, theirs) in rows.items():
                    print(f"| {size} | {search} | {batch_size} | {stage} | {mine:.2f} | {theirs:.2f} | "
                          f"{theirs / mine:.2f}x |")
                if beams == 1 and dtype == torch.float32:
                    same = variants["lion_ros"]["tokens"]() == variants["transformers"]["tokens"]()
                    print(f"<!-- {size} greedy batch {batch_size}: token ids identical: {same} -->")
                    if not same:
                        print("greedy token ids differ between lion_ros and transformers", file=sys.stderr)
                        return 1
        del model, reference
    return 0


def cpu_name() -> str:
    """The CPU model, to print beside CPU figures (machines here differ from run to run)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
