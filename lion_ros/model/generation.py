"""Decoding for LION: greedy and beam search over a static KV cache.

The encoder runs once per request and the cross-attention keys/values are computed from it once.
Self-attention keys/values live in buffers preallocated for `max_new_tokens` positions and are
written in place at the step index, so every decoder step sees the same shapes: `T5DecoderStep`
is what an exported (ONNX / TensorRT) decoder step mirrors.

The search follows transformers' `generate` for T5 (the reference decodes with it), so results
match it token for token:
  * repetition_penalty divides positive scores and multiplies negative ones of every token
    already in the decoder input, and that input starts with the decoder start token (T5's
    pad, id 0), which is therefore penalised too. Greedy applies it to the logits, beam search to
    the log-probabilities, as transformers does.
  * beam search keeps 2 x num_beams candidates per step, lets only the best num_beams of them
    finish, scores a finished hypothesis by sum(log p) / length ** length_penalty (length counts
    the generated tokens, EOS included) and stops with transformers' `early_stopping=False` rule.
The reported per-token probabilities are the model's own softmax(logits) of each chosen token,
before the repetition penalty and any logits processor: a confidence, not a search score.

The search loops only need a `DecoderStep`: `T5DecoderStep` here, or an ONNX Runtime / TensorRT
engine wrapped in an object of the same shape, so every backend decodes with this code.
A `LogitsProcessor` (e.g. `lion_ros.runtime.constraints.BoxConstraint`) edits the scores right
before tokens are selected: the logits in greedy search, the log-probabilities in beam search
(after the repetition penalty in both, as in transformers); -inf forbids a token.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.t5.modeling_t5 import T5Attention

from lion_ros.api import REFERENCE_MAX_NEW_TOKENS, GenerationSettings

from .config import LanguageConfig
from .lion import ImageFeatures, LionModel, task_index_tensor

_NEG = -1.0e9  # transformers' "impossible" score in beam search


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [B, L] generated ids without the decoder start token; pad after EOS
    token_probs: torch.Tensor  # [B, L] model probability of each generated token; 0 after EOS
    lengths: list[int]  # generated tokens per sample, EOS included
    prefill_ms: float  # Q-Former + T5 encoder; 0 when `decode` is called directly
    decode_ms: float  # cross-attention K/V + the decoding loop

    def tokens(self, i: int) -> list[int]:
        return self.sequences[i, : self.lengths[i]].tolist()


@dataclass
class DecoderCache:
    """Per-request decoder state of `T5DecoderStep`, N = batch x beams rows."""

    self_k: torch.Tensor  # [layers, N, heads, max_new_tokens, d_kv], position t written at step t
    self_v: torch.Tensor
    self_bias: torch.Tensor  # [1, heads, T, T]: relative position bias, causal mask folded in
    cross_k: torch.Tensor  # [layers, N, heads, S, d_kv], from the encoder output, never changes
    cross_v: torch.Tensor
    cross_bias: torch.Tensor  # [N, 1, 1, S]: 0 for encoder tokens, dtype min for padding

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row n continues the history of row rows[n]. Cross K/V are equal across a
        sample's beams, so only the self-attention cache moves."""
        self.self_k.copy_(self.self_k.index_select(1, rows))
        self.self_v.copy_(self.self_v.index_select(1, rows))


class StepCache(Protocol):
    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row n continues the history of row rows[n] ([N] long)."""


class DecoderStep(Protocol):
    """What the search loops need from a decoder, whatever runs it.

    `language` gives the token ids (pad, EOS, decoder start) and the vocabulary size; `device`
    is where the loops keep their tensors and where `forward` returns its logits.
    """

    language: LanguageConfig
    device: torch.device

    def new_cache(
        self, encoder_hidden_states: Any, encoder_mask: Any, max_new_tokens: int, num_beams: int
    ) -> StepCache:
        """Per-request state for batch x num_beams rows from the T5 encoder output [B, S, d_model]."""

    def forward(
        self, token_ids: torch.Tensor, position: torch.Tensor, cache: Any, task_index: torch.Tensor | None
    ) -> torch.Tensor:
        """token_ids [N] at `position` ([1] long) -> next-token logits [N, vocab]; fills the cache there."""


class T5DecoderStep(nn.Module):
    """One decoder position for N sequences, computed from the T5 decoder's own modules."""

    def __init__(self, model: LionModel) -> None:
        super().__init__()
        self.model = model
        self.decoder = model.language_model.decoder
        self.language = model.config.language
        self.num_heads, self.d_kv = self.language.num_heads, self.language.d_kv

    @property
    def device(self) -> torch.device:
        return self.decoder.embed_tokens.weight.device

    @torch.no_grad()
    def new_cache(
        self, encoder_hidden_states: torch.Tensor, encoder_mask: torch.Tensor, max_new_tokens: int, num_beams: int
    ) -> DecoderCache:
        batch_size = encoder_hidden_states.shape[0]
        dtype, device = encoder_hidden_states.dtype, encoder_hidden_states.device
        blocks = self.decoder.block
        cross_k = torch.stack([self._heads(b.layer[1].EncDecAttention.k(encoder_hidden_states)) for b in blocks])
        cross_v = torch.stack([self._heads(b.layer[1].EncDecAttention.v(encoder_hidden_states)) for b in blocks])
        cross_bias = (1.0 - encoder_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

        bias = blocks[0].layer[0].SelfAttention.compute_bias(max_new_tokens, max_new_tokens, device=device)
        future = torch.ones(max_new_tokens, max_new_tokens, dtype=torch.bool, device=device).triu(1)
        self_bias = bias.to(dtype).masked_fill(future, torch.finfo(dtype).min)

        rows = batch_size * num_beams
        cache_shape = (len(blocks), rows, self.num_heads, max_new_tokens, self.d_kv)
        return DecoderCache(
            self_k=torch.zeros(cache_shape, dtype=dtype, device=device),
            self_v=torch.zeros(cache_shape, dtype=dtype, device=device),
            self_bias=self_bias,
            cross_k=cross_k.repeat_interleave(num_beams, dim=1),
            cross_v=cross_v.repeat_interleave(num_beams, dim=1),
            cross_bias=cross_bias.repeat_interleave(num_beams, dim=0),
        )

    def forward(
        self,
        token_ids: torch.Tensor,
        position: torch.Tensor,
        cache: DecoderCache,
        task_index: torch.Tensor | None,
    ) -> torch.Tensor:
        """token_ids [N] at `position` ([1] long) -> next-token logits [N, vocab]; fills the cache there."""
        hidden_states = self.decoder.embed_tokens(token_ids).unsqueeze(1)  # [N, 1, d_model]
        self_bias = cache.self_bias.index_select(2, position)  # [1, heads, 1, T]
        with self.model.route(task_index):
            for i, block in enumerate(self.decoder.block):
                self_attention, cross_attention, feed_forward = block.layer
                attention = self_attention.SelfAttention
                x = self_attention.layer_norm(hidden_states)
                cache.self_k[i].index_copy_(2, position, self._heads(attention.k(x)))
                cache.self_v[i].index_copy_(2, position, self._heads(attention.v(x)))
                hidden_states = hidden_states + self._attend(
                    attention, x, cache.self_k[i], cache.self_v[i], self_bias
                )
                x = cross_attention.layer_norm(hidden_states)
                hidden_states = hidden_states + self._attend(
                    cross_attention.EncDecAttention, x, cache.cross_k[i], cache.cross_v[i], cache.cross_bias
                )
                hidden_states = feed_forward(hidden_states)
        hidden_states = self.decoder.final_layer_norm(hidden_states)
        return self.model.lm_logits(hidden_states)[:, 0]

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        """[N, L, heads * d_kv] -> [N, heads, L, d_kv]"""
        return states.unflatten(-1, (self.num_heads, self.d_kv)).transpose(1, 2)

    def _attend(
        self, attention: T5Attention, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        query = self._heads(attention.q(x))
        # T5 folds the scaling into its weights: scores are plain dot products plus the bias.
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=bias, scale=1.0)
        return attention.o(out.transpose(1, 2).flatten(2))


Streamer = Callable[[int], None]  # receives token ids as they are decided
StepHook = Callable[[], None]  # called after every step; raise from it to abandon the request
# (tokens generated so far [N, t], scores [N, vocab]) -> scores; rows are batch x beams.
LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.inference_mode()
def generate(
    model: LionModel,
    image_features: ImageFeatures,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    task_index: torch.Tensor | int | None,
    qformer_input_ids: torch.Tensor | None = None,
    qformer_attention_mask: torch.Tensor | None = None,
    config: GenerationSettings | None = None,
    streamer: Streamer | None = None,
    on_step: StepHook | None = None,
    logits_processor: LogitsProcessor | None = None,
) -> GenerationOutput:
    """Answer a batch of prompts about already encoded images (`LionModel.encode_image`).

    Features of one frame (batch 1) serve a whole batch of questions. `streamer`, for batch size
    1, receives each new token id (EOS included) as it is chosen (greedy) or the best beam's ids
    at the end. `on_step` runs after every decoding step, e.g. to check for cancellation.
    """
    config = config or GenerationSettings(max_new_tokens=REFERENCE_MAX_NEW_TOKENS)
    device = input_ids.device
    started = time.perf_counter()
    prefix = model.visual_prefix(image_features, qformer_input_ids, qformer_attention_mask)
    if task_index is not None:
        task_index = task_index_tensor(task_index, input_ids.shape[0], device)
    encoder_hidden_states, encoder_mask = model.encode(prefix, input_ids, attention_mask, task_index)
    _synchronize(device)
    prefilled = time.perf_counter()
    output = decode(
        model, encoder_hidden_states, encoder_mask, task_index, config, streamer, on_step,
        logits_processor=logits_processor,
    )
    output.prefill_ms = (prefilled - started) * 1e3
    return output


@torch.inference_mode()
def decode(
    model: LionModel | None,
    encoder_hidden_states: Any,
    encoder_mask: Any,
    task_index: torch.Tensor | None,
    config: GenerationSettings,
    streamer: Streamer | None = None,
    on_step: StepHook | None = None,
    *,
    step: DecoderStep | None = None,
    logits_processor: LogitsProcessor | None = None,
) -> GenerationOutput:
    """Greedy (num_beams 1) or beam search from T5 encoder outputs [B, S, d_model].

    `step` decodes one position (default: `T5DecoderStep(model)`); with a step of its own a
    backend passes `model=None` and encoder outputs in whatever form its step takes.
    """
    if step is None:
        if model is None:
            raise ValueError("decode needs a model or a decoder step")
        if model.training:
            raise RuntimeError("decoding needs the model in eval mode (dropout off): call model.eval()")
        step = T5DecoderStep(model)
    batch_size = encoder_hidden_states.shape[0]
    if streamer is not None and batch_size != 1:
        raise ValueError("streaming is for batch size 1")
    if config.max_new_tokens < 1 or config.num_beams < 1:
        raise ValueError(f"max_new_tokens and num_beams must be >= 1, got {config.max_new_tokens}, {config.num_beams}")
    started = time.perf_counter()
    cache = step.new_cache(encoder_hidden_states, encoder_mask, config.max_new_tokens, config.num_beams)
    if task_index is not None:
        task_index = task_index.to(step.device).repeat_interleave(config.num_beams)
    search = _greedy if config.num_beams == 1 else _beam_search
    sequences, token_probs = search(step, cache, task_index, batch_size, config, streamer, on_step, logits_processor)

    is_eos = sequences == step.language.eos_token_id
    lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, sequences.shape[1]).tolist()
    width = max(lengths)
    _synchronize(step.device)
    return GenerationOutput(
        sequences=sequences[:, :width],
        token_probs=token_probs[:, :width],
        lengths=lengths,
        prefill_ms=0.0,
        decode_ms=(time.perf_counter() - started) * 1e3,
    )


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor over a [N, vocab] mask of tokens already used."""
    if penalty == 1.0:
        return scores
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def _start(step: DecoderStep, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder start tokens [rows] and the [rows, vocab] mask of tokens seen so far (the start token)."""
    start, device = step.language.decoder_start_token_id, step.device
    tokens = torch.full((rows,), start, dtype=torch.long, device=device)
    seen = torch.zeros(rows, step.language.vocab_size, dtype=torch.bool, device=device)
    seen[:, start] = True
    return tokens, seen


def _greedy(
    step: DecoderStep,
    cache: StepCache,
    task_index: torch.Tensor | None,
    batch_size: int,
    config: GenerationSettings,
    streamer: Streamer | None,
    on_step: StepHook | None,
    logits_processor: LogitsProcessor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    language = step.language
    device, steps = step.device, config.max_new_tokens
    positions = torch.arange(steps, device=device)
    tokens, seen = _start(step, batch_size)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    sequences = torch.full((batch_size, steps), language.pad_token_id, dtype=torch.long, device=device)
    token_probs = torch.zeros(batch_size, steps, device=device)
    for t in range(steps):
        logits = step.forward(tokens, positions[t : t + 1], cache, task_index).float()
        scores = apply_repetition_penalty(logits, seen, config.repetition_penalty)
        if logits_processor is not None:
            scores = logits_processor(sequences[:, :t], scores)
        tokens = torch.where(finished, language.pad_token_id, scores.argmax(-1))
        probs = logits.softmax(-1).gather(1, tokens[:, None])[:, 0]
        sequences[:, t] = tokens
        token_probs[:, t] = torch.where(finished, 0.0, probs)
        seen[torch.arange(batch_size, device=device), tokens] = True
        finished |= tokens == language.eos_token_id
        if streamer is not None:
            streamer(int(tokens[0]))
        if on_step is not None:
            on_step()
        if bool(finished.all()):  # the one host sync per step
            break
    return sequences[:, : t + 1], token_probs[:, : t + 1]


def _beam_search(
    step: DecoderStep,
    cache: StepCache,
    task_index: torch.Tensor | None,
    batch_size: int,
    config: GenerationSettings,
    streamer: Streamer | None,
    on_step: StepHook | None,
    logits_processor: LogitsProcessor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    language = step.language
    device, steps, beams = step.device, config.max_new_tokens, config.num_beams
    vocab_size, rows, candidates = language.vocab_size, batch_size * beams, 2 * beams
    positions = torch.arange(steps, device=device)
    tokens, seen = _start(step, rows)

    # Running beams and the best finished hypotheses, [B, beams, ...] each.
    running_seqs = torch.full((batch_size, beams, steps), language.pad_token_id, dtype=torch.long, device=device)
    running_probs = torch.zeros(batch_size, beams, steps, device=device)
    running_scores = torch.zeros(batch_size, beams, device=device)
    running_scores[:, 1:] = _NEG  # all beams start identical: expand only the first one
    done_seqs, done_probs = running_seqs.clone(), running_probs.clone()
    done_scores = torch.full((batch_size, beams), _NEG, device=device)
    done_flags = torch.zeros(batch_size, beams, dtype=torch.bool, device=device)
    improvable = torch.ones(batch_size, 1, dtype=torch.bool, device=device)
    may_finish = torch.arange(candidates, device=device) < beams
    row_offset = torch.arange(batch_size, device=device)[:, None] * beams

    for t in range(steps):
        logits = step.forward(tokens, positions[t : t + 1], cache, task_index).float()
        log_probs = apply_repetition_penalty(logits.log_softmax(-1), seen, config.repetition_penalty)
        if logits_processor is not None:
            log_probs = logits_processor(running_seqs[:, :, :t].reshape(rows, t), log_probs)
        scores = (log_probs.view(batch_size, beams, vocab_size) + running_scores[..., None]).flatten(1)
        top_scores, top_index = scores.topk(candidates)  # [B, 2 x beams] over beams x vocab
        source, top_tokens = top_index // vocab_size, top_index % vocab_size
        cand_seqs = _gather_beams(running_seqs, source)
        cand_seqs[:, :, t] = top_tokens
        cand_probs = _gather_beams(running_probs, source)
        cand_probs[:, :, t] = logits.softmax(-1).view(batch_size, -1).gather(1, top_index)
        ends = (top_tokens == language.eos_token_id) | (t + 1 >= steps)

        # The best candidates that did not end continue.
        alive_scores = top_scores + ends * _NEG
        keep = alive_scores.topk(beams).indices
        running_scores = alive_scores.gather(1, keep)
        running_seqs, running_probs = _gather_beams(cand_seqs, keep), _gather_beams(cand_probs, keep)
        tokens = top_tokens.gather(1, keep).flatten()
        parent_rows = (source.gather(1, keep) + row_offset).flatten()
        cache.reorder(parent_rows)
        seen = seen.index_select(0, parent_rows)
        seen[torch.arange(rows, device=device), tokens] = True

        # Those that ended compete with the finished hypotheses kept so far.
        finishing = ends & may_finish
        new_scores = top_scores / (t + 1) ** config.length_penalty + ~finishing * _NEG + ~improvable * _NEG
        best = torch.cat([done_scores, new_scores], 1).topk(beams).indices
        done_scores = torch.cat([done_scores, new_scores], 1).gather(1, best)
        done_seqs = _gather_beams(torch.cat([done_seqs, cand_seqs], 1), best)
        done_probs = _gather_beams(torch.cat([done_probs, cand_probs], 1), best)
        done_flags = torch.cat([done_flags, finishing], 1).gather(1, best)

        # transformers' early_stopping=False heuristic: can the best running beam, scored at its
        # current length, still beat the worst finished hypothesis?
        best_running = running_scores[:, :1] / (t + 1) ** config.length_penalty
        worst_done = torch.where(done_flags, done_scores.min(1, keepdim=True).values, _NEG)
        improvable = improvable & (best_running > worst_done).any(1, keepdim=True)
        if on_step is not None:
            on_step()
        if t + 1 >= steps or not bool(improvable.any()):  # the one host sync per step
            break

    sequences, token_probs = done_seqs[:, 0, : t + 1], done_probs[:, 0, : t + 1]
    if streamer is not None:
        for token in sequences[0].tolist():
            streamer(token)
            if token == language.eos_token_id:
                break
    return sequences, token_probs


def _gather_beams(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor [B, beams, ...] indexed along dim 1 by index [B, k] -> [B, k, ...]"""
    index = index.view(*index.shape, *([1] * (tensor.dim() - 2))).expand(-1, -1, *tensor.shape[2:])
    return tensor.gather(1, index)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
