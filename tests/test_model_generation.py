"""LION decoding: our static-cache greedy and beam search against full recomputation and transformers."""
import pytest
import torch
from torch import nn
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor
from transformers.modeling_outputs import BaseModelOutput

from lion_ros.model import GenerationOutput, GenerationSettings, ImageFeatures, LionConfig, LionModel, generate
from lion_ros.model.generation import DecoderCache, T5DecoderStep, _beam_search, decode

MAX_NEW = 10
TASKS = torch.tensor([0, 1, 1])


@pytest.fixture(scope="module")
def model() -> LionModel:
    """Tiny model with random adapters, moderate logits, and an EOS that some samples reach early."""
    torch.manual_seed(0)
    model = LionModel(LionConfig.preset("lion-tiny")).eval()
    eos = model.config.language.eos_token_id
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".adapter." in name:
                param.normal_(0.0, 0.3)
        lm_head = model.language_model.lm_head.weight
        lm_head.normal_(0.0, 0.3)
        # EOS shadows a frequent token, so some answers end early and others run to the limit.
        lm_head[eos] = 1.01 * lm_head[43]
    return model


@pytest.fixture(scope="module")
def batch(model: LionModel) -> dict:
    config = model.config
    generator = torch.Generator().manual_seed(1)
    size = config.vision.image_size
    input_ids = torch.randint(2, 40, (3, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 4:] = 0  # right padding
    input_ids[0, 4:] = config.language.pad_token_id
    with torch.no_grad():
        features = model.encode_image(torch.randn(3, 3, size, size, generator=generator))
    return {
        "image_features": features,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "qformer_input_ids": torch.randint(1, config.qformer.vocab_size, (3, 5), generator=generator),
    }


def _encode(model: LionModel, batch: dict, task_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        prefix = model.visual_prefix(batch["image_features"], batch["qformer_input_ids"])
        return model.encode(prefix, batch["input_ids"], batch["attention_mask"], task_index)


def _generate(model: LionModel, batch: dict, task_index: torch.Tensor, **settings) -> GenerationOutput:
    settings.setdefault("max_new_tokens", MAX_NEW)
    return generate(model, task_index=task_index, config=GenerationSettings(**settings), **batch)


def _sample(batch: dict, b: int, prompt_length: int | None = None) -> dict:
    """Sample b of the batch on its own, its prompt cut to prompt_length."""
    features = batch["image_features"]
    return {
        "image_features": ImageFeatures(features.qformer_input[b : b + 1], features.aggregator_tokens[b : b + 1]),
        "input_ids": batch["input_ids"][b : b + 1, :prompt_length],
        "attention_mask": batch["attention_mask"][b : b + 1, :prompt_length],
        "qformer_input_ids": batch["qformer_input_ids"][b : b + 1],
    }


def test_greedy_equals_full_recompute_loop(model: LionModel, batch: dict) -> None:
    out = _generate(model, batch, TASKS, num_beams=1)
    encoder_hidden_states, encoder_mask = _encode(model, batch, TASKS)
    penalty = RepetitionPenaltyLogitsProcessor(1.5)
    eos = model.config.language.eos_token_id
    for b in range(3):
        decoder_ids, probs = torch.zeros(1, 1, dtype=torch.long), []  # decoder start token
        for _ in range(MAX_NEW):
            with torch.no_grad(), model.route(TASKS[b : b + 1]):
                hidden = model.language_model.decoder(
                    input_ids=decoder_ids,
                    encoder_hidden_states=encoder_hidden_states[b : b + 1],
                    encoder_attention_mask=encoder_mask[b : b + 1],
                ).last_hidden_state
                logits = model.lm_logits(hidden)[:, -1]
            token = penalty(decoder_ids, logits.clone()).argmax(-1)
            probs.append(logits.softmax(-1)[0, token].item())
            decoder_ids = torch.cat([decoder_ids, token[:, None]], dim=1)
            if token == eos:
                break
        assert out.tokens(b) == decoder_ids[0, 1:].tolist()
        assert out.token_probs[b, : out.lengths[b]].tolist() == pytest.approx(probs, abs=1e-5)
    assert min(out.lengths) < MAX_NEW  # EOS was reached and padded after
    assert out.sequences[out.lengths.index(min(out.lengths)), -1] == model.config.language.pad_token_id


@pytest.mark.parametrize("num_beams, length_penalty", [(1, 1.0), (3, 1.0), (4, 0.5)])
def test_search_matches_transformers_generate(
    model: LionModel, batch: dict, num_beams: int, length_penalty: float
) -> None:
    settings = {"num_beams": num_beams, "repetition_penalty": 1.5, "length_penalty": length_penalty}
    ours = _generate(model, batch, TASKS, **settings)
    encoder_hidden_states, encoder_mask = _encode(model, batch, TASKS)
    # transformers repeats every sample num_beams times, so the task index is repeated the same way.
    with torch.no_grad(), model.route(TASKS.repeat_interleave(num_beams)):
        theirs = model.language_model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states),
            attention_mask=encoder_mask,
            max_new_tokens=MAX_NEW,
            do_sample=False,
            **settings,
        )
    # transformers pads finished beams with EOS rather than pad (`pad_token_id or eos` with pad 0).
    assert theirs.shape[1] == 1 + ours.sequences.shape[1]
    for b, length in enumerate(ours.lengths):
        assert ours.tokens(b) == theirs[b, 1 : 1 + length].tolist()
    assert min(ours.lengths) < MAX_NEW


def test_one_beam_search_is_greedy_without_penalties(model: LionModel, batch: dict) -> None:
    # With length_penalty 0 a finished hypothesis can never be beaten, so one beam is greedy.
    config = GenerationSettings(max_new_tokens=MAX_NEW, num_beams=1, repetition_penalty=1.0, length_penalty=0.0)
    greedy = _generate(model, batch, TASKS, num_beams=1, repetition_penalty=1.0)
    encoder_hidden_states, encoder_mask = _encode(model, batch, TASKS)
    step = T5DecoderStep(model)
    cache = step.new_cache(encoder_hidden_states, encoder_mask, MAX_NEW, num_beams=1)
    with torch.no_grad():
        sequences, probs = _beam_search(step, cache, TASKS, 3, config, None, None)
    assert torch.equal(sequences[:, : greedy.sequences.shape[1]], greedy.sequences)
    assert torch.allclose(probs[:, : greedy.sequences.shape[1]], greedy.token_probs, atol=1e-6)


def test_static_cache_size_does_not_change_tokens(model: LionModel, batch: dict) -> None:
    short = _generate(model, batch, TASKS, num_beams=1, max_new_tokens=4)
    long = _generate(model, batch, TASKS, num_beams=1, max_new_tokens=MAX_NEW)
    assert short.sequences.shape[1] == 4
    assert torch.equal(short.sequences, long.sequences[:, :4])
    encoder_hidden_states, encoder_mask = _encode(model, batch, TASKS)
    cache = T5DecoderStep(model).new_cache(encoder_hidden_states, encoder_mask, MAX_NEW, num_beams=2)
    t5 = model.config.language
    assert cache.self_k.shape == (t5.num_decoder_layers, 6, t5.num_heads, MAX_NEW, t5.d_kv)
    assert cache.cross_k.shape == (t5.num_decoder_layers, 6, t5.num_heads, encoder_hidden_states.shape[1], t5.d_kv)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batch_with_mixed_tasks_equals_each_sample_alone(model: LionModel, batch: dict, num_beams: int) -> None:
    together = _generate(model, batch, TASKS, num_beams=num_beams)
    for b in range(3):
        alone = _generate(
            model, _sample(batch, b, int(batch["attention_mask"][b].sum())), TASKS[b], num_beams=num_beams
        )
        assert alone.tokens(0) == together.tokens(b)
        assert torch.allclose(
            alone.token_probs[0, : alone.lengths[0]], together.token_probs[b, : together.lengths[b]], atol=1e-5
        )
    # The router really is per sample: other tasks give other answers.
    assert _generate(model, batch, 1 - TASKS, num_beams=num_beams).sequences.tolist() != together.sequences.tolist()


@pytest.mark.parametrize("num_beams", [1, 3])
def test_streaming_sees_the_answer_tokens(model: LionModel, batch: dict, num_beams: int) -> None:
    streamed, steps = [], []
    out = generate(
        model,
        task_index=1,
        config=GenerationSettings(max_new_tokens=MAX_NEW, num_beams=num_beams),
        streamer=streamed.append,
        on_step=lambda: steps.append(1),
        **_sample(batch, 1),
    )
    assert streamed == out.tokens(0)
    assert len(steps) >= out.lengths[0]
    with pytest.raises(ValueError, match="batch size 1"):
        generate(model, task_index=TASKS, config=GenerationSettings(num_beams=num_beams), streamer=print, **batch)


def test_cancellation_from_the_step_hook(model: LionModel, batch: dict) -> None:
    class Cancelled(Exception):
        pass

    def cancel() -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        generate(model, task_index=TASKS, config=GenerationSettings(max_new_tokens=MAX_NEW), on_step=cancel, **batch)


def test_one_frame_answers_a_batch_of_questions_with_timings(model: LionModel, batch: dict) -> None:
    frame = _sample(batch, 0)["image_features"]
    shared = _generate(model, {**batch, "image_features": frame}, TASKS, num_beams=2)
    assert shared.sequences.shape[0] == 3
    assert shared.prefill_ms > 0 and shared.decode_ms > 0
    probs = shared.token_probs
    for b, length in enumerate(shared.lengths):
        assert ((probs[b, :length] > 0) & (probs[b, :length] <= 1)).all()
        assert (probs[b, length:] == 0).all()


def test_decoding_refuses_training_mode(model: LionModel, batch: dict) -> None:
    encoder_hidden_states, encoder_mask = _encode(model, batch, TASKS)
    model.train()
    try:
        with pytest.raises(RuntimeError, match="eval"):
            decode(model, encoder_hidden_states, encoder_mask, TASKS, GenerationSettings(max_new_tokens=2))
    finally:
        model.eval()


class _StepWithCacheInputs(nn.Module):
    """The decoder step with its cache as plain tensor inputs and outputs, as an export sees it."""

    def __init__(self, step: T5DecoderStep, template: DecoderCache) -> None:
        super().__init__()
        self.step, self.template = step, template

    def forward(self, token_ids, position, self_k, self_v, task_index):
        t = self.template
        cache = DecoderCache(self_k, self_v, t.self_bias, t.cross_k, t.cross_v, t.cross_bias)
        return self.step(token_ids, position, cache, task_index), cache.self_k


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_decoder_step_traces_with_task_index_and_position_as_inputs(model: LionModel, batch: dict) -> None:
    # What an ONNX / TensorRT export of the step relies on: neither the routing nor the cache
    # position is frozen into the graph.
    encoder_hidden_states, encoder_mask = _encode(model, batch, TASKS)
    step = T5DecoderStep(model)
    template = step.new_cache(encoder_hidden_states, encoder_mask, MAX_NEW, num_beams=1)
    wrapped = _StepWithCacheInputs(step, template)

    def inputs(position: int, task_index: torch.Tensor) -> tuple:
        tokens = torch.tensor([3, 4, 5])
        return tokens, torch.tensor([position]), template.self_k.clone(), template.self_v.clone(), task_index

    with torch.no_grad():
        traced = torch.jit.trace(wrapped, inputs(0, TASKS), check_trace=False)
        for position, task_index in [(3, 1 - TASKS), (0, TASKS)]:
            expected_logits, expected_k = wrapped(*inputs(position, task_index))
            logits, self_k = traced(*inputs(position, task_index))
            assert torch.allclose(logits, expected_logits, atol=1e-6)
            assert torch.equal(self_k, expected_k)
