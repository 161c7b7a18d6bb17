"""The backend-independent half of answering a question, shared by every `LionRuntime`.

`PipelineRuntime` does everything but the neural-network compute: input checks, task
inference, prompt text (tag sentence + soft-prompt sentinel for T5, the raw question for the
Q-Former), tokenisation, the decoding loop (`lion_ros.model.generation.decode`, greedy or beam),
box-constrained decoding for REC-style questions, streaming, cancellation, detokenisation, box
parsing into pixels of the original image with a phrase and a score, and timings.

A backend subclasses it and supplies four things:
  * `_encode_pixels(pixels)`: the per-frame compute (ViT + aggregator) on a [1, 3, S, S] float32
    array (S = `config.vision.image_size`), returning features in any form it likes;
  * `_prefill(features, prompt, task)`: Q-Former + T5 encoder, returning encoder hidden states
    and mask in the form its decoder step takes;
  * `_decoder_step()`: a `lion_ros.model.generation.DecoderStep`;
  * `name`.
Each returns only when its results are ready (synchronised), so the timings are honest.

Which region-level questions are constrained to boxes: a question whose task is REGION
(inferred or requested) unless it asks for free text about regions, i.e. it names a box
literal (REG: "describe the area [0.1,...]") or asks for a description or caption (grounded
captions: "describe the image and include the coordinates ..."). See
`RuntimeConfig.free_text_pattern`; `RuntimeConfig.constrain_boxes=False` turns it off.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lion_ros.api import Answer, GroundedBox, StageTimings, TaskKind
from lion_ros.boxes import _BRACKET as BOX_BRACKET  # the codec's own bracket pattern: same spans
from lion_ros.boxes import DEFAULT_CODEC, BoxCodec
from lion_ros.model.config import LionConfig
from lion_ros.model.generation import DecoderStep, GenerationOutput, decode
from lion_ros.preprocess import PreprocessConfig, preprocess_image
from lion_ros.prompts import DEFAULT_PROMPTS, PromptConfig, build_qformer_prompt, build_t5_prompt, infer_task
from lion_ros.runtime.base import EncodedImage, GenerationSettings, PartialCallback, RequestCancelled
from lion_ros.runtime.constraints import BoxAutomaton, BoxConstraint, BoxGrammar
from lion_ros.tokenization import LionTokenizers

log = logging.getLogger(__name__)

FREE_TEXT_REGION_PATTERN = (
    r"\[\s*[-+]?\d*\.?\d+\s*,"  # a box literal: the question names a region (REG, region caption)
    r"|\b(?:describ\w*|description|captions?|captioning|explain\w*|happening|mention\w*"
    r"|referenc\w*|square brackets|ground(?:ed|ing))\b"
)


@dataclass(frozen=True)
class RuntimeConfig:
    """Backend-independent runtime settings."""

    constrain_boxes: bool = True  # box-constrained decoding for REC-style region questions
    box_grammar: BoxGrammar = field(default_factory=BoxGrammar)
    free_text_pattern: str = FREE_TEXT_REGION_PATTERN  # region questions answered in free text
    max_question_chars: int = 1000
    # The reference does not truncate at inference; this only bounds pathological inputs (the
    # tokenizer cuts from the left, as in training).
    max_prompt_tokens: int = 512
    prompts: PromptConfig = DEFAULT_PROMPTS
    codec: BoxCodec = DEFAULT_CODEC


DEFAULT_RUNTIME_CONFIG = RuntimeConfig()


class TokenizerMismatchError(ValueError):
    """The tokenizers do not fit the model's vocabulary (wrong tokenizer folder for the weights)."""


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one question, [1, T] int64 arrays (numpy, so any backend can take them)."""

    input_ids: np.ndarray  # T5: tag sentence + question, EOS-terminated
    attention_mask: np.ndarray
    qformer_input_ids: np.ndarray  # Q-Former: the raw question, [CLS] ... [SEP]
    qformer_attention_mask: np.ndarray


def check_vocabularies(config: LionConfig, tokenizers: LionTokenizers) -> None:
    """Fail early and clearly when the tokenizers and the model's embedding tables disagree."""
    language, problems = config.language, []
    if tokenizers.tag_token_id != language.soft_prompt_token_id:
        problems.append(
            f"the T5 tokenizer's <extra_id_0> is id {tokenizers.tag_token_id}, the model's soft-prompt "
            f"token is {language.soft_prompt_token_id}"
        )
    if len(tokenizers.t5) > language.vocab_size:
        problems.append(f"the T5 tokenizer has {len(tokenizers.t5)} tokens, the model only {language.vocab_size}")
    for what, tokenizer_id, model_id in (
        ("EOS", tokenizers.t5.eos_token_id, language.eos_token_id),
        ("pad", tokenizers.t5.pad_token_id, language.pad_token_id),
    ):
        if tokenizer_id != model_id:
            problems.append(f"the T5 tokenizer's {what} id is {tokenizer_id}, the model's {model_id}")
    if config.uses_qformer and len(tokenizers.qformer) > config.qformer.vocab_size:
        problems.append(
            f"the Q-Former tokenizer has {len(tokenizers.qformer)} tokens, the model only {config.qformer.vocab_size}"
        )
    if problems:
        raise TokenizerMismatchError("tokenizers do not match the model: " + "; ".join(problems))


_DETERMINERS = re.compile(r"^(?:(?:all|any|each|every)\s+(?:of\s+)?)?(?:the|a|an|this|that|these|those)\s+", re.I)
_GENERIC_EXPRESSIONS = (
    re.compile(
        r"\bwhere(?:'s|'re| is| are| was| were| can i find| do i find| can you see| do you see)\s+(?P<expr>.+?)"
        r"(?:\s+(?:located|positioned|placed|situated|standing|lying))?"
        r"(?:\s+(?:in|on) (?:the |this )?(?:image|picture|photo|photograph|scene|frame))?$",
        re.I,
    ),
    re.compile(
        r"\b(?:locate|find|detect|pinpoint|show me|point to|point at|coordinates of|position of"
        r"|bounding box (?:of|for|around)|box (?:of|for|around))\s+(?P<expr>.+?)"
        r"(?:\s+(?:in|on|within) (?:the |this |given )?(?:image|picture|photo|photograph|scene|frame)\b.*"
        r"|\s+and\s+(?:let|tell|give|provide|return|show|state)\b.*)?$",
        re.I,
    ),
)


def _normalise(text: str) -> str:
    # `<image>` is template text users may or may not type; punctuation spacing varies with it.
    text = re.sub(r"<image>", " ", text, flags=re.I)
    text = re.sub(r"\s+([,.?!;:])", r"\1", text)
    return " ".join(text.split()).strip(" .?!")


@functools.lru_cache(maxsize=8)
def _expression_patterns(prompts: PromptConfig) -> tuple[re.Pattern, ...]:
    """The REC and find-all templates as regexes capturing the expression, then the generic ones."""
    patterns = []
    for template in (*prompts.rec_templates, *prompts.find_all_templates):
        pattern = re.escape(_normalise(template))
        for slot in ("expr", "category"):
            pattern = pattern.replace(re.escape(f"<{slot}>"), r"(?P<expr>.+?)")
        patterns.append(re.compile(f"^{pattern}$", re.I))
    return (*patterns, *_GENERIC_EXPRESSIONS)


def referring_expression(question: str, prompts: PromptConfig = DEFAULT_PROMPTS) -> str:
    """The object a REC-style question asks for: "where is the red cup?" -> "red cup".

    Tries the REC and find-all templates first (exact wording of the training prompts), then
    generic "where is X" / "locate X" phrasings; falls back to the question itself so a box
    always has a label.
    """
    text = _normalise(question)
    for pattern in _expression_patterns(prompts):
        match = pattern.search(text)
        if match:
            expression = _DETERMINERS.sub("", match.group("expr").strip(" ,.?!")).strip()
            if expression:
                return expression
    return text


class PipelineRuntime(ABC):
    """A `LionRuntime` minus the compute; see the module docstring for what a backend adds."""

    name: str = "pipeline"

    def __init__(
        self, config: LionConfig, tokenizers: LionTokenizers, runtime_config: RuntimeConfig = DEFAULT_RUNTIME_CONFIG
    ) -> None:
        check_vocabularies(config, tokenizers)
        self.config = config
        self.tokenizers = tokenizers
        self.runtime_config = runtime_config
        self.preprocess = PreprocessConfig(image_size=config.vision.image_size)
        # One device, one request at a time: the routing state of the adapters and the decoder
        # caches are per model, so concurrent callers are serialised here.
        self._compute_lock = threading.RLock()
        self._automaton: BoxAutomaton | bool | None = None  # False: the vocabulary cannot spell boxes
        self._automaton_lock = threading.Lock()

    # -- what a backend provides ------------------------------------------------------------

    @abstractmethod
    def _encode_pixels(self, pixels: np.ndarray) -> Any:
        """[1, 3, S, S] float32 preprocessed image -> backend features for `_prefill`."""

    @abstractmethod
    def _prefill(self, features: Any, prompt: EncodedPrompt, task: TaskKind) -> tuple[Any, Any]:
        """Q-Former + T5 encoder -> (encoder hidden states [1, S, d_model], mask [1, S])."""

    @abstractmethod
    def _decoder_step(self) -> DecoderStep:
        """The one-position decoder the search loops call."""

    def _device_scope(self) -> contextlib.AbstractContextManager:
        """Entered around all compute, in the calling thread: a backend whose device state is
        per thread (a CUDA context, a stream) makes it current here."""
        return contextlib.nullcontext()

    # -- LionRuntime ------------------------------------------------------------------------

    def encode_image(self, rgb: np.ndarray) -> EncodedImage:
        """Preprocess and encode an RGB uint8 HxWx3 image; `encode_ms` includes preprocessing."""
        started = time.perf_counter()
        pixels = preprocess_image(rgb, self.preprocess)[None]
        with self._compute_lock, self._device_scope():
            features = self._encode_pixels(pixels)
        return EncodedImage(
            features=features,
            width=int(rgb.shape[1]),
            height=int(rgb.shape[0]),
            encode_ms=(time.perf_counter() - started) * 1e3,
        )

    def answer(
        self,
        image: EncodedImage,
        question: str,
        *,
        tags: Sequence[str] = (),
        task: TaskKind | None = None,
        settings: GenerationSettings | None = None,
        on_partial: PartialCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Answer:
        """See `LionRuntime.answer`. `timings.total_ms` adds `image.encode_ms` to this call's time."""
        started = time.perf_counter()
        settings = settings or GenerationSettings()
        self._check_request(image, question, tags, settings)
        question = question.strip()
        kind = infer_task(question, task, config=self.runtime_config.prompts)
        check_cancel = _cancel_check(cancel)
        check_cancel()

        prompt = self.encode_prompt(question, tags)
        with self._compute_lock, self._device_scope():
            prefill_started = time.perf_counter()
            encoder_hidden_states, encoder_mask = self._prefill(image.features, prompt, kind)
            prefill_ms = (time.perf_counter() - prefill_started) * 1e3
            check_cancel()
            stream = _Stream(self, on_partial) if on_partial is not None else None
            output = self._generate(encoder_hidden_states, encoder_mask, kind, question, settings, stream, check_cancel)

        tokens = output.tokens(0)
        text = self._detokenize(tokens)
        if stream is not None:
            stream.finish(text.strip(), len(self._answer_tokens(tokens)))
        default_phrase = referring_expression(question, self.runtime_config.prompts) if kind == TaskKind.REGION else ""
        boxes = self._boxes(text, tokens, output.token_probs[0].tolist(), image, default_phrase)
        timings = StageTimings(
            image_encode_ms=image.encode_ms,
            prefill_ms=prefill_ms,
            decode_ms=output.decode_ms,
            total_ms=image.encode_ms + (time.perf_counter() - started) * 1e3,
            tokens_generated=output.lengths[0],
        )
        return Answer(text=text.strip(), task=kind, boxes=boxes, timings=timings)

    # -- pieces, public for backends' tests and tools ----------------------------------------

    def encode_prompt(self, question: str, tags: Sequence[str] = ()) -> EncodedPrompt:
        """Both token sequences of a question (see `EncodedPrompt`)."""
        t5 = self.tokenizers.t5(
            build_t5_prompt(question, list(tags), config=self.runtime_config.prompts),
            truncation=True,
            max_length=self.runtime_config.max_prompt_tokens,
            return_tensors="np",
        )
        # The Q-Former's text positions are bounded by its position table, not only by the
        # tokenizer's 128 (tiny and nano models have smaller tables).
        qformer_max = min(self.tokenizers.qformer.model_max_length, self.config.qformer.max_position_embeddings)
        qformer = self.tokenizers.qformer(
            build_qformer_prompt(question), truncation=True, max_length=qformer_max, return_tensors="np"
        )
        return EncodedPrompt(
            input_ids=t5["input_ids"].astype(np.int64),
            attention_mask=t5["attention_mask"].astype(np.int64),
            qformer_input_ids=qformer["input_ids"].astype(np.int64),
            qformer_attention_mask=qformer["attention_mask"].astype(np.int64),
        )

    def wants_box_answer(self, question: str, task: TaskKind) -> bool:
        """Whether `question` gets box-constrained decoding (see the module docstring)."""
        return (
            self.runtime_config.constrain_boxes
            and task == TaskKind.REGION
            and not re.search(self.runtime_config.free_text_pattern, question, re.I)
        )

    def box_automaton(self) -> BoxAutomaton | None:
        """Built on first use (it scans the vocabulary) and kept for all requests; None, with one
        warning, when the vocabulary cannot spell box answers (region answers are then free text)."""
        with self._automaton_lock:
            if self._automaton is None:
                language = self.config.language
                try:
                    self._automaton = BoxAutomaton.from_tokenizer(
                        self.tokenizers.t5, language.vocab_size, language.eos_token_id, self.runtime_config.box_grammar
                    )
                except ValueError as exc:
                    log.warning("box-constrained decoding is off: %s", exc)
                    self._automaton = False
            return self._automaton or None

    # -- internals -----------------------------------------------------------------------------

    def _check_request(
        self, image: EncodedImage, question: str, tags: Sequence[str], settings: GenerationSettings
    ) -> None:
        if not isinstance(image, EncodedImage):
            raise ValueError(f"image must be an EncodedImage from encode_image(), got {type(image).__name__}")
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty: ask something about the image")
        limit = self.runtime_config.max_question_chars
        if len(question) > limit:
            raise ValueError(f"the question is too long: {len(question)} characters, at most {limit}")
        if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags):
            raise ValueError(f"tags must be a sequence of strings, got {tags!r}")
        if settings.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {settings.max_new_tokens}")
        if settings.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {settings.num_beams}")
        if not settings.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be positive, got {settings.repetition_penalty}")
        if not math.isfinite(settings.length_penalty):
            raise ValueError(f"length_penalty must be finite, got {settings.length_penalty}")

    def _generate(
        self,
        encoder_hidden_states: Any,
        encoder_mask: Any,
        task: TaskKind,
        question: str,
        settings: GenerationSettings,
        stream: _Stream | None,
        check_cancel: Callable[[], None],
    ) -> GenerationOutput:
        step = self._decoder_step()
        automaton = self.box_automaton() if self.wants_box_answer(question, task) else None
        processor = BoxConstraint(automaton, settings.max_new_tokens) if automaton is not None else None
        # Beam search knows its answer only at the end: `finish` reports it then.
        streamer = stream.token if stream is not None and settings.num_beams == 1 else None
        task_index = torch.tensor([int(task)], dtype=torch.long)
        return decode(
            None,
            encoder_hidden_states,
            encoder_mask,
            task_index,
            settings,
            streamer,
            check_cancel,
            step=step,
            logits_processor=processor,
        )

    def _answer_tokens(self, tokens: list[int]) -> list[int]:
        eos = self.config.language.eos_token_id
        return tokens[: tokens.index(eos)] if eos in tokens else tokens

    def _detokenize(self, tokens: list[int]) -> str:
        return self.tokenizers.t5.decode(self._answer_tokens(tokens), skip_special_tokens=True)

    def _boxes(
        self, text: str, tokens: list[int], probs: list[float], image: EncodedImage, default_phrase: str
    ) -> list[GroundedBox]:
        """Boxes in pixels of the original image, each scored by the mean probability of its tokens."""
        codec = self.runtime_config.codec
        boxes = codec.parse(text, image.width, image.height, default_phrase)
        if not boxes:
            return boxes
        # Where each token's text ends in `text` (prefix decoding: detokenisers merge pieces).
        answer = self._answer_tokens(tokens)
        ends, end = [], 0
        for k in range(1, len(answer) + 1):
            end = max(end, len(self._detokenize(answer[:k])))
            ends.append(end)
        starts = [0, *ends[:-1]]
        scores = []
        for start, stop in _box_spans(text, codec):
            covering = [probs[k] for k in range(len(answer)) if starts[k] < stop and ends[k] > start]
            scores.append(sum(covering) / len(covering) if covering else 1.0)
        if len(scores) != len(boxes):  # cannot happen with the codec's own pattern; stay safe
            return boxes
        return [dataclasses.replace(box, score=score) for box, score in zip(boxes, scores)]


def _box_spans(text: str, codec: BoxCodec) -> list[tuple[int, int]]:
    """Character spans of the box groups the codec accepts, in the order it returns them."""
    spans = []
    for match in BOX_BRACKET.finditer(text):
        offset = match.start(1)
        for group in match.group(1).split(";"):
            if codec.parse_normalized(f"[{group}]"):
                spans.append((offset, offset + len(group)))
            offset += len(group) + 1
    return spans


class _Stream:
    """Partial answers for `on_partial`: the text so far after every token, then the final text
    if the last partial was not already it."""

    def __init__(self, runtime: PipelineRuntime, on_partial: PartialCallback) -> None:
        self.runtime, self.on_partial = runtime, on_partial
        self.tokens: list[int] = []
        self.last: str | None = None

    def token(self, token: int) -> None:
        if token == self.runtime.config.language.eos_token_id:
            return
        self.tokens.append(token)
        self.last = self.runtime._detokenize(self.tokens).strip()
        self.on_partial(self.last, len(self.tokens))

    def finish(self, text: str, n_tokens: int) -> None:
        if text != self.last:
            self.on_partial(text, n_tokens)


def _cancel_check(cancel: threading.Event | None) -> Callable[[], None]:
    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise RequestCancelled("the request was cancelled")

    return check
