"""The reference backend: `LionModel` in PyTorch, on CPU or CUDA.

Everything but the compute is `PipelineRuntime`'s; this module encodes images, runs the Q-Former
and the T5 encoder, and lends the search loops `T5DecoderStep`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from lion_ros.api import TaskKind
from lion_ros.model.generation import T5DecoderStep
from lion_ros.model.lion import CONFIG_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME, ImageFeatures, LionModel
from lion_ros.runtime.base import GenerationSettings
from lion_ros.runtime.pipeline import DEFAULT_RUNTIME_CONFIG, EncodedPrompt, PipelineRuntime, RuntimeConfig
from lion_ros.tokenization import LionTokenizers

DType = str | torch.dtype | None


class PyTorchRuntime(PipelineRuntime):
    """`LionRuntime` over a `LionModel` in eval mode on `device`."""

    name = "pytorch"

    def __init__(
        self,
        model: LionModel,
        tokenizers: LionTokenizers,
        device: str | torch.device | None = None,
        runtime_config: RuntimeConfig = DEFAULT_RUNTIME_CONFIG,
    ) -> None:
        super().__init__(model.config, tokenizers, runtime_config)
        self.device = torch.device(device) if device is not None else model.soft_prompt_hint.device
        self.model = model.to(self.device).eval()
        self._step = T5DecoderStep(self.model)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: DType = None,
        runtime_config: RuntimeConfig = DEFAULT_RUNTIME_CONFIG,
    ) -> PyTorchRuntime:
        """Load a model directory (config.json, safetensors weights, tokenizer/, qformer_tokenizer/).

        dtype: None for the config's precision policy, a policy name ("auto", "fp32", "mixed")
        or one torch dtype for the whole model (see `LionModel.from_pretrained`).
        Raises FileNotFoundError for a missing directory or file, ValueError for weights that
        are corrupt or do not match the config, and TokenizerMismatchError for tokenizers that
        do not fit the model.
        """
        directory = Path(model_dir)
        device = torch.device(device)
        _check_model_dir(directory)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device} requested, but this PyTorch has no usable CUDA device")
        tokenizers = LionTokenizers.load(directory)
        try:
            model = LionModel.from_pretrained(directory, device=device, dtype=dtype)
        except SafetensorError as exc:
            raise ValueError(
                f"cannot read the weights in {directory}: {exc}. The file is truncated or corrupt: "
                "copy or convert it again"
            ) from exc
        return cls(model, tokenizers, device, runtime_config)

    def warmup(self) -> None:
        """A short answer and the box automaton's vocabulary scan, so the first request does not pay
        for lazy initialisation."""
        size = self.config.vision.image_size
        image = self.encode_image(np.zeros((size, size, 3), np.uint8))
        settings = GenerationSettings(num_beams=1, max_new_tokens=2)
        self.answer(image, "What is in the image?", task=TaskKind.IMAGE, settings=settings)
        if self.runtime_config.constrain_boxes:
            self.box_automaton()

    # -- backend compute ------------------------------------------------------------------------

    @torch.inference_mode()
    def _encode_pixels(self, pixels: np.ndarray) -> ImageFeatures:
        dtype = self.model.vision_model.embeddings.patch_embedding.weight.dtype
        features = self.model.encode_image(torch.from_numpy(pixels).to(self.device, dtype))
        self._synchronize()
        return features

    @torch.inference_mode()
    def _prefill(
        self, features: ImageFeatures, prompt: EncodedPrompt, task: TaskKind
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(self.device)

        prefix = self.model.visual_prefix(
            features, tensor(prompt.qformer_input_ids), tensor(prompt.qformer_attention_mask)
        )
        task_index = torch.tensor([int(task)], device=self.device)
        hidden_states, mask = self.model.encode(
            prefix, tensor(prompt.input_ids), tensor(prompt.attention_mask), task_index
        )
        self._synchronize()
        return hidden_states, mask

    def _decoder_step(self) -> T5DecoderStep:
        return self._step

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _check_model_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"no {CONFIG_NAME} in {directory}: a LION model directory holds {CONFIG_NAME}, "
            f"{WEIGHTS_NAME} (or shards with {WEIGHTS_INDEX_NAME}), tokenizer/ and qformer_tokenizer/"
        )
    if not (directory / WEIGHTS_NAME).is_file() and not (directory / WEIGHTS_INDEX_NAME).is_file():
        raise FileNotFoundError(
            f"no weights in {directory}: expected {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} with its shards"
        )
