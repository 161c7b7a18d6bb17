"""What the ONNX Runtime and TensorRT backends share: the four-graph compute behind `PipelineRuntime`.

A backend supplies the arrays (ONNX Runtime `OrtValue`s, CUDA tensors) and `_run(graph,
inputs)`; this module turns the graphs of `lion_ros.export.graphs` into `_encode_pixels`,
`_prefill` and a duck-typed `DecoderStep` for `lion_ros.model.generation.decode`. The decoder
step graph reorders its self-attention buffers itself (`cache_rows`), so beam search needs no
array operation outside the engines, and its buffers keep one shape for a whole answer.
"""
from __future__ import annotations

import dataclasses
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lion_ros.api import TaskKind
from lion_ros.export.engines import (
    BuildConfig,
    EngineMetadata,
    ProfileConfig,
    build_config_of,
    default_engine_dir,
    engine_precision,
    is_engine_dir,
    prepare,
)
from lion_ros.model.config import LionConfig
from lion_ros.runtime.pipeline import EncodedPrompt, PipelineRuntime, RuntimeConfig
from lion_ros.tokenization import LionTokenizers

HostOrDevice = np.ndarray | torch.Tensor | Any


@dataclass
class EncoderOutput:
    """What `_prefill` hands the decoder: cross-attention K/V per decoder layer, not the states."""

    hidden_states: Any  # [B, S, d_model]; kept for inspection and parity tests
    cross_k: Any  # [layers, B, heads, S, d_kv]
    cross_v: Any
    shape: tuple[int, ...]  # of hidden_states; `decode` reads the batch size from it


@dataclass
class EngineDecoderCache:
    self_k: Any  # [layers, N, heads, max_new_tokens, d_kv]
    self_v: Any
    rows: torch.Tensor  # [N]: the buffer row each row continues at the next step
    cross_k: Any
    cross_v: Any
    encoder_mask: Any

    def reorder(self, rows: torch.Tensor) -> None:
        """Applied inside the next decoder call (its `cache_rows` input); composes if called twice."""
        self.rows = self.rows.index_select(0, rows.to(self.rows.device))


class EngineDecoderStep:
    """`lion_ros.model.generation.DecoderStep` over the `t5_decoder_step` graph."""

    def __init__(self, runtime: EngineRuntime) -> None:
        self.runtime = runtime
        self.language = runtime.config.language
        self.device = runtime.step_device

    def new_cache(
        self, encoder_hidden_states: EncoderOutput, encoder_mask: Any, max_new_tokens: int, num_beams: int
    ) -> EngineDecoderCache:
        rows = encoder_hidden_states.shape[0] * num_beams
        self.runtime._check_decoder_shape(rows, max_new_tokens)
        language = self.language
        shape = (language.num_decoder_layers, rows, language.num_heads, max_new_tokens, language.d_kv)
        # Zeros, not empty memory: masked keys get weight 0, and 0 x NaN would still be NaN.
        return EngineDecoderCache(
            self_k=self.runtime._zeros(shape, self.runtime.kv_dtype),
            self_v=self.runtime._zeros(shape, self.runtime.kv_dtype),
            rows=torch.arange(rows, device=self.device),
            cross_k=encoder_hidden_states.cross_k,
            cross_v=encoder_hidden_states.cross_v,
            encoder_mask=encoder_mask,
        )

    def forward(
        self,
        token_ids: torch.Tensor,
        position: torch.Tensor,
        cache: EngineDecoderCache,
        task_index: torch.Tensor | None,
    ) -> torch.Tensor:
        runtime = self.runtime
        inputs = {
            "token_ids": runtime._array(token_ids),
            "position": runtime._array(position),
            "self_k": cache.self_k,
            "self_v": cache.self_v,
            "cache_rows": runtime._array(cache.rows),
            "cross_k": cache.cross_k,
            "cross_v": cache.cross_v,
            "encoder_mask": cache.encoder_mask,
        }
        if task_index is not None:
            inputs["task_index"] = runtime._array(task_index)
        outputs = runtime._run("t5_decoder_step", inputs)
        cache.self_k, cache.self_v = outputs["present_k"], outputs["present_v"]
        cache.rows = torch.arange(token_ids.shape[0], device=self.device)
        return runtime._logits(outputs["logits"])


class EngineRuntime(PipelineRuntime):
    """A `LionRuntime` over an engine directory (see `lion_ros.export.engines`)."""

    # Where the search loops keep their tensors and receive the logits.
    step_device: torch.device = torch.device("cpu")

    def __init__(self, engine_dir: Path, metadata: EngineMetadata, runtime_config: RuntimeConfig) -> None:
        config = LionConfig.load(engine_dir / "config.json")
        super().__init__(config, LionTokenizers.load(engine_dir), runtime_config)
        self.engine_dir, self.metadata = engine_dir, metadata
        self.kv_dtype: str = metadata.graphs["t5_decoder_step"]["inputs"]["self_k"]["dtype"]
        self._step = EngineDecoderStep(self)

    @classmethod
    def _open(
        cls,
        path: str | Path,
        *,
        backend: str,
        precision: str | None,
        default_precision: str,
        profiles: ProfileConfig | None,
        engine_dir: str | Path | None,
        rebuild_on_mismatch: bool,
    ) -> tuple[Path, EngineMetadata]:
        """(engine directory, its checked metadata) for a model or engine directory.

        An engine directory is used as it is, checked against the request and this machine;
        it is rebuilt only with `rebuild_on_mismatch`. A model directory gets engines in
        `engine_dir` (default: a per-user cache), built or refreshed as needed: that cache is
        ours, so refreshing it is not a mismatch.
        """
        path = Path(path)
        precision = engine_precision(precision)
        if is_engine_dir(path):
            if precision is None and profiles is None:
                build = None
            else:
                # Everything not asked for (decoder weights, opset) is taken as the directory has it.
                build = build_config_of(EngineMetadata.load(path))
                build = dataclasses.replace(build, precision=precision or build.precision,
                                            profiles=profiles or build.profiles)
            return path, prepare(path, backend=backend, build=build, rebuild_on_mismatch=rebuild_on_mismatch)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is neither a LION model directory (config.json) nor an engine "
                                    "directory (metadata.json, from lion-build-engines)")
        precision = precision or default_precision
        target = Path(engine_dir) if engine_dir is not None else default_engine_dir(path, backend, precision)
        build = BuildConfig(precision=precision, profiles=profiles or ProfileConfig())
        return target, prepare(target, backend=backend, model_dir=path, build=build, rebuild_on_mismatch=True)

    # -- what a backend provides ------------------------------------------------------------

    @abstractmethod
    def _run(self, graph: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run one graph; `inputs` may hold more than the graph takes (extra names are ignored)."""

    @abstractmethod
    def _array(self, value: HostOrDevice) -> Any:
        """A numpy array or torch tensor as an input array of this backend (its own arrays pass through)."""

    @abstractmethod
    def _zeros(self, shape: tuple[int, ...], dtype: str) -> Any:
        """A zero-filled array of this backend; dtype by numpy name, or "bfloat16"."""

    @abstractmethod
    def _logits(self, value: Any) -> torch.Tensor:
        """Logits as a float32 torch tensor on `step_device`."""

    @abstractmethod
    def _shape(self, value: Any) -> tuple[int, ...]:
        ...

    def _synchronize(self) -> None:
        """Block until queued work is done (after each stage, so that the timings are honest)."""

    def _check_decoder_shape(self, rows: int, max_new_tokens: int) -> None:
        """Backends with fixed shape limits (TensorRT profiles) raise ValueError here."""

    # -- PipelineRuntime compute ---------------------------------------------------------------

    def _encode_pixels(self, pixels: np.ndarray) -> dict[str, Any]:
        features = self._run("vision", {"pixel_values": self._array(pixels)})
        self._synchronize()
        return features

    def _prefill(self, features: dict[str, Any], prompt: EncodedPrompt, task: TaskKind) -> tuple[EncoderOutput, Any]:
        inputs = dict(features)
        if self.config.uses_qformer:
            qformer = self._run("qformer", {
                "qformer_input": features["qformer_input"],
                "qformer_input_ids": self._array(prompt.qformer_input_ids),
                "qformer_attention_mask": self._array(prompt.qformer_attention_mask),
            })
            inputs["qformer_tokens"] = qformer["qformer_tokens"]
        inputs.update(
            input_ids=self._array(prompt.input_ids),
            attention_mask=self._array(prompt.attention_mask),
            task_index=self._array(np.full(prompt.input_ids.shape[:1], int(task), np.int64)),
        )
        out = self._run("t5_encoder", inputs)
        self._synchronize()
        hidden_states = out["encoder_hidden_states"]
        encoder = EncoderOutput(hidden_states, out["cross_k"], out["cross_v"], self._shape(hidden_states))
        return encoder, out["encoder_mask"]

    def _decoder_step(self) -> EngineDecoderStep:
        return self._step


def limit_prompt_tokens(runtime_config: RuntimeConfig, max_prompt_tokens: int) -> RuntimeConfig:
    """The tokenizer then cuts longer prompts from the left, as in training, instead of failing."""
    limit = min(runtime_config.max_prompt_tokens, max_prompt_tokens)
    return dataclasses.replace(runtime_config, max_prompt_tokens=limit)

