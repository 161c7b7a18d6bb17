"""PipelineRuntime + PyTorchRuntime on a tiny random model with real tiny tokenizers."""
from __future__ import annotations

import dataclasses
import itertools
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_lion import rgb_image, save_model_dir, tiny_model, tiny_tokenizers

from lion_ros.api import TaskKind
from lion_ros.boxes import DEFAULT_CODEC
from lion_ros.model import CheckpointMismatchError, LionConfig
from lion_ros.runtime import GenerationSettings, LionRuntime, RequestCancelled
from lion_ros.runtime.pipeline import RuntimeConfig, TokenizerMismatchError, referring_expression
from lion_ros.runtime.pytorch import PyTorchRuntime

GREEDY = GenerationSettings(num_beams=1, max_new_tokens=12)
REC = "In the image <image>, can you locate the cup left of the bowl and let me know its coordinates?"


@pytest.fixture(scope="module")
def tokenizers():
    return tiny_tokenizers()


@pytest.fixture(scope="module")
def runtime(tokenizers) -> PyTorchRuntime:
    return PyTorchRuntime(tiny_model(tokenizers), tokenizers, "cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizers) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("tiny") / "model", tiny_model(tokenizers), tokenizers)


def test_implements_the_runtime_protocol(runtime: PyTorchRuntime) -> None:
    protocol_methods = {"encode_image", "answer"}
    assert protocol_methods <= {name for name in dir(LionRuntime) if not name.startswith("_")}
    assert all(callable(getattr(runtime, name)) for name in protocol_methods)
    assert runtime.name == "pytorch"
    encoded = runtime.encode_image(rgb_image(48, 80))
    assert (encoded.width, encoded.height) == (80, 48) and encoded.encode_ms > 0
    answer = runtime.answer(encoded, "What is on the table?", settings=GREEDY)
    assert isinstance(answer.text, str) and answer.task == TaskKind.IMAGE
    t = answer.timings
    assert t.image_encode_ms == encoded.encode_ms and t.prefill_ms > 0 and t.decode_ms > 0
    assert t.total_ms >= t.image_encode_ms + t.prefill_ms + t.decode_ms
    assert 1 <= t.tokens_generated <= GREEDY.max_new_tokens


def test_streamed_partials_grow_and_end_with_the_answer(runtime: PyTorchRuntime) -> None:
    encoded = runtime.encode_image(rgb_image())
    partials: list[tuple[str, int]] = []
    answer = runtime.answer(encoded, "What is on the table?", settings=GREEDY, on_partial=lambda *p: partials.append(p))
    assert partials and partials[-1][0] == answer.text
    counts = [n for _, n in partials]
    assert counts == sorted(counts) and counts[0] == 1
    texts = [text for text, _ in partials]
    assert all(len(a) <= len(b) for a, b in itertools.pairwise(texts))
    beam: list[tuple[str, int]] = []
    answer = runtime.answer(
        encoded, "What is on the table?", settings=dataclasses.replace(GREEDY, num_beams=2),
        on_partial=lambda *p: beam.append(p),
    )
    assert [text for text, _ in beam] == [answer.text]  # beam search: the final answer once


def test_cancel_raises_request_cancelled(runtime: PyTorchRuntime) -> None:
    encoded = runtime.encode_image(rgb_image())
    cancel = threading.Event()
    with pytest.raises(RequestCancelled):
        runtime.answer(encoded, "What is this?", settings=GREEDY, on_partial=lambda *_: cancel.set(), cancel=cancel)
    cancel.set()
    with pytest.raises(RequestCancelled):  # already cancelled: no work at all
        runtime.answer(encoded, "What is this?", settings=GREEDY, cancel=cancel)


def test_all_compute_runs_inside_the_backends_device_scope(runtime: PyTorchRuntime, monkeypatch) -> None:
    """Backends whose device state is per thread (TensorRT: CUDA context, stream) rely on it."""
    import contextlib

    inside: list[bool] = []
    depth = [0]

    @contextlib.contextmanager
    def scope():
        depth[0] += 1
        try:
            yield
        finally:
            depth[0] -= 1

    for name in ("_encode_pixels", "_prefill"):
        real = getattr(runtime, name)

        def spy(*args, real=real, **kwargs):
            inside.append(depth[0] == 1)
            return real(*args, **kwargs)

        monkeypatch.setattr(runtime, name, spy)
    monkeypatch.setattr(runtime, "_device_scope", scope)
    image = runtime.encode_image(rgb_image(seed=3))
    runtime.answer(image, "where is the red cup?", settings=GenerationSettings(max_new_tokens=4))
    assert inside == [True, True]


def test_encoded_features_are_reused_across_questions(runtime: PyTorchRuntime) -> None:
    image = rgb_image(seed=4)
    shared = runtime.encode_image(image)
    for question in ("What is on the table?", "where is the red cup?"):
        reused = runtime.answer(shared, question, settings=GREEDY)
        fresh = runtime.answer(runtime.encode_image(image), question, settings=GREEDY)
        assert (reused.text, reused.boxes) == (fresh.text, fresh.boxes)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_region_answers_parse_into_pixels_of_a_non_square_image(runtime: PyTorchRuntime, num_beams: int) -> None:
    height, width = 45, 120
    encoded = runtime.encode_image(rgb_image(height, width, seed=num_beams))
    settings = GenerationSettings(num_beams=num_beams, max_new_tokens=40)
    answer = runtime.answer(encoded, REC, settings=settings)
    assert answer.task == TaskKind.REGION
    normalised = DEFAULT_CODEC.parse_normalized(answer.text)
    assert len(answer.boxes) == len(normalised) >= 1, answer.text
    for box, (_, (x1, y1, x2, y2)) in zip(answer.boxes, normalised):
        assert box.phrase == "cup left of the bowl"
        assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((x1 * width, y1 * height, x2 * width, y2 * height))
        assert 0 <= box.x1 < box.x2 <= width and 0 <= box.y1 < box.y2 <= height
        assert 0 < box.score <= 1


def test_box_scores_are_the_mean_probability_of_the_box_tokens(runtime: PyTorchRuntime, monkeypatch) -> None:
    encoded = runtime.encode_image(rgb_image())
    outputs = []
    original = runtime._generate
    monkeypatch.setattr(runtime, "_generate", lambda *a: outputs.append(original(*a)) or outputs[-1])
    answer = runtime.answer(
        encoded, "where is the red cup?", settings=GenerationSettings(num_beams=1, max_new_tokens=40)
    )
    tokens, probs = outputs[0].tokens(0), outputs[0].token_probs[0]
    pieces = [runtime.tokenizers.t5.decode([t]) for t in tokens]
    # nano tokens: one character each inside the bracket; the box tokens sit between "[" and "]".
    first, last = pieces.index("["), pieces.index("]")
    assert answer.boxes[0].score == pytest.approx(float(probs[first + 1 : last].mean()), rel=1e-5)
    assert answer.boxes[0].phrase == "red cup"


def test_constraint_applies_to_rec_questions_only(runtime: PyTorchRuntime) -> None:
    assert runtime.wants_box_answer(REC, TaskKind.REGION)
    assert runtime.wants_box_answer("where is the red cup?", TaskKind.REGION)
    assert not runtime.wants_box_answer("where is the red cup?", TaskKind.IMAGE)
    for free_text in (
        "Can you provide a description of the image <image> and include the coordinates [x0,y0,x1,y1] "
        "for each mentioned object?",
        "For the given image <image>, can you provide a unique description of the area [0.100,0.200,0.300,0.400]?",
        "What is in the region [0.1,0.2,0.3,0.4]?",
    ):
        assert not runtime.wants_box_answer(free_text, TaskKind.REGION), free_text
    off = PyTorchRuntime(runtime.model, runtime.tokenizers, "cpu", RuntimeConfig(constrain_boxes=False))
    assert not off.wants_box_answer(REC, TaskKind.REGION)


@pytest.mark.parametrize(
    "question, expression",
    [
        ("where is the red cup?", "red cup"),
        (REC, "cup left of the bowl"),
        ("Where are the bananas located in the image?", "bananas"),
        ("Locate the white mug and provide its coordinates, please.", "white mug"),
        ("Help me to locate a black phone in image and give me its coordinates, please.", "black phone"),
        ("In the image <image>, can you locate all cups and let me know their coordinates?", "cups"),
        ("Please find the yellow banana.", "yellow banana"),
        ("I'd like to know the exact coordinates of the green plate in the photo.", "green plate"),
        ("What is this?", "What is this"),  # no expression: the question names the box
    ],
)
def test_referring_expression(question: str, expression: str) -> None:
    assert referring_expression(question) == expression


@pytest.mark.parametrize(
    "question, settings, message",
    [
        ("", GREEDY, "empty"),
        ("   ", GREEDY, "empty"),
        ("x" * 1001, GREEDY, "too long"),
        ("What?", GenerationSettings(max_new_tokens=0), "max_new_tokens"),
        ("What?", GenerationSettings(num_beams=0), "num_beams"),
        ("What?", GenerationSettings(repetition_penalty=0.0), "repetition_penalty"),
    ],
)
def test_bad_requests_raise_value_errors(runtime: PyTorchRuntime, question, settings, message) -> None:
    encoded = runtime.encode_image(rgb_image())
    with pytest.raises(ValueError, match=message):
        runtime.answer(encoded, question, settings=settings)


def test_bad_inputs_raise_value_errors(runtime: PyTorchRuntime) -> None:
    with pytest.raises(ValueError, match="EncodedImage"):
        runtime.answer(np.zeros((4, 4, 3), np.uint8), "What?")
    with pytest.raises(ValueError, match="tags"):
        runtime.answer(runtime.encode_image(rgb_image()), "What?", tags="cup, bowl")
    with pytest.raises(ValueError, match="HxWx3"):
        runtime.encode_image(np.zeros((4, 4), np.uint8))


def test_tags_and_task_reach_the_prompt(runtime: PyTorchRuntime) -> None:
    prompt = runtime.encode_prompt("where is the cup?", ["cup", "table"])
    t5 = runtime.tokenizers.t5.decode(prompt.input_ids[0])
    assert "<extra_id_0>" in t5 and "cup, table" in t5 and t5.rstrip("</s> ").endswith("where is the cup?")
    qformer = runtime.tokenizers.qformer.decode(prompt.qformer_input_ids[0], skip_special_tokens=True)
    assert qformer.replace(" ", "") == "whereisthecup?"  # the raw question only
    encoded = runtime.encode_image(rgb_image())
    image_task = runtime.answer(encoded, "where is the cup?", task=TaskKind.IMAGE, settings=GREEDY)
    assert image_task.task == TaskKind.IMAGE


def test_from_pretrained_and_its_errors(model_dir: Path, tmp_path: Path, runtime: PyTorchRuntime) -> None:
    loaded = PyTorchRuntime.from_pretrained(model_dir)
    loaded.warmup()
    image = rgb_image()
    expected = runtime.answer(runtime.encode_image(image), REC, settings=GREEDY)
    assert loaded.answer(loaded.encode_image(image), REC, settings=GREEDY).text == expected.text

    with pytest.raises(FileNotFoundError, match="does not exist"):
        PyTorchRuntime.from_pretrained(tmp_path / "nowhere")
    copy = tmp_path / "copy"
    copy.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        PyTorchRuntime.from_pretrained(copy)
    (copy / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="no weights"):
        PyTorchRuntime.from_pretrained(copy)
    for sub in ("tokenizer", "qformer_tokenizer"):
        (copy / sub).mkdir()
        for file in (model_dir / sub).iterdir():
            (copy / sub / file.name).write_bytes(file.read_bytes())
    weights = (model_dir / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        PyTorchRuntime.from_pretrained(copy)

    (copy / "model.safetensors").write_bytes(weights)
    config = LionConfig.load(model_dir / "config.json")
    bigger = dataclasses.replace(config, language=dataclasses.replace(config.language, d_ff=config.language.d_ff * 2))
    bigger.save(copy / "config.json")
    with pytest.raises(CheckpointMismatchError, match="d_ff|shape"):
        PyTorchRuntime.from_pretrained(copy)

    shifted = dataclasses.replace(config, language=dataclasses.replace(config.language, soft_prompt_token_id=3))
    shifted.save(copy / "config.json")
    with pytest.raises(TokenizerMismatchError, match="extra_id_0"):
        PyTorchRuntime.from_pretrained(copy)


def test_cuda_request_without_cuda_is_clear(model_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeError, match="CUDA"):
        PyTorchRuntime.from_pretrained(model_dir, device="cuda")


class _NumpyCache:
    def __init__(self, cache) -> None:
        self.cache = cache

    def reorder(self, rows: torch.Tensor) -> None:
        self.cache.reorder(torch.from_numpy(rows.numpy()))


class _NumpyStep:
    """A decoder step the way an ONNX Runtime backend writes one: no nn.Module, numpy inside."""

    def __init__(self, step) -> None:
        self.step, self.language, self.device = step, step.language, torch.device("cpu")

    def new_cache(
        self, encoder_hidden_states: np.ndarray, encoder_mask: np.ndarray, max_new_tokens: int, num_beams: int
    ):
        cache = self.step.new_cache(
            torch.from_numpy(encoder_hidden_states), torch.from_numpy(encoder_mask), max_new_tokens, num_beams
        )
        return _NumpyCache(cache)

    def forward(self, token_ids, position, cache: _NumpyCache, task_index) -> torch.Tensor:
        logits = self.step(token_ids, position, cache.cache, task_index).numpy()
        return torch.from_numpy(logits)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_decode_takes_a_duck_typed_step_and_a_logits_processor(runtime: PyTorchRuntime, num_beams: int) -> None:
    from lion_ros.model.generation import GenerationSettings, decode

    prompt = runtime.encode_prompt("What is on the table?")
    features = runtime.encode_image(rgb_image()).features
    hidden, mask = runtime._prefill(features, prompt, TaskKind.IMAGE)
    config = GenerationSettings(max_new_tokens=8, num_beams=num_beams)
    task = torch.tensor([int(TaskKind.IMAGE)])
    reference = decode(runtime.model, hidden, mask, task, config)
    step = _NumpyStep(runtime._decoder_step())
    ours = decode(None, hidden.numpy(), mask.numpy(), task, config, step=step)
    assert ours.tokens(0) == reference.tokens(0)

    banned = reference.tokens(0)[0]
    seen_histories = []

    def ban(generated: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen_histories.append(generated.shape)
        return scores.index_fill(1, torch.tensor([banned]), float("-inf"))

    constrained = decode(None, hidden.numpy(), mask.numpy(), task, config, step=step, logits_processor=ban)
    assert banned not in constrained.tokens(0)
    assert seen_histories[0] == (num_beams, 0) and seen_histories[1] == (num_beams, 1)


def test_vocabulary_that_cannot_spell_boxes_turns_the_constraint_off(runtime: PyTorchRuntime, caplog) -> None:
    config = RuntimeConfig(box_grammar=dataclasses.replace(RuntimeConfig().box_grammar, prefix="Antwort€:"))
    german = PyTorchRuntime(runtime.model, runtime.tokenizers, "cpu", config)
    assert german.box_automaton() is None and "box-constrained decoding is off" in caplog.text
    answer = german.answer(german.encode_image(rgb_image()), "where is the red cup?", settings=GREEDY)
    assert answer.task == TaskKind.REGION  # answered, in free text
