"""LION modules: parity with transformers' InstructBLIP, adapters and routing, aggregator, checkpoints."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

from lion_ros.api import TaskKind
from lion_ros.model import CheckpointMismatchError, LionConfig, LionModel
from lion_ros.model.adapters import MixtureOfAdapters, TaskRouting
from lion_ros.model.config import AdapterConfig

BATCH = 3


def tiny_config(mode: str = "all") -> LionConfig:
    return dataclasses.replace(LionConfig.preset("lion-tiny"), visual_input=mode)


def tiny_model(mode: str = "all", seed: int = 0) -> LionModel:
    """A tiny model whose LION-only parameters are random too (adapters and gates start as no-ops)."""
    torch.manual_seed(seed)
    model = LionModel(tiny_config(mode)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".adapter." in name or name.startswith("aggregator."):
                param.normal_(0.0, 0.3)
    return model


def inputs(config: LionConfig, seed: int = 1) -> dict:
    """A batch whose prompts are right-padded to different lengths; no soft-prompt token."""
    generator = torch.Generator().manual_seed(seed)
    size = config.vision.image_size
    input_ids = torch.randint(2, config.language.vocab_size - 2, (BATCH, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = config.language.pad_token_id
    qformer_input_ids = torch.randint(1, config.qformer.vocab_size, (BATCH, 5), generator=generator)
    qformer_attention_mask = torch.ones_like(qformer_input_ids)
    qformer_attention_mask[2, 3:] = 0
    return {
        "pixel_values": torch.randn(BATCH, 3, size, size, generator=generator),
        "qformer_input_ids": qformer_input_ids,
        "qformer_attention_mask": qformer_attention_mask,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": torch.randint(2, config.language.vocab_size, (BATCH, 4), generator=generator),
    }


def test_qformer_mode_matches_transformers_instructblip() -> None:
    model = LionModel(tiny_config("qformer")).eval()  # adapters at their zero init
    config = model.config
    image_token = config.language.vocab_size - 2
    hf_config = InstructBlipConfig(
        vision_config=model.vision_model.config.to_dict(),
        qformer_config=model.qformer.config.to_dict(),
        text_config=model.language_model.config,  # an object keeps dense_act_fn="gelu"
        num_query_tokens=config.qformer.num_query_tokens,
        image_token_index=image_token,
    )
    reference = InstructBlipForConditionalGeneration(hf_config).eval()
    reference.language_model.lm_head.weight = nn.Parameter(torch.empty_like(reference.language_model.lm_head.weight))
    shared = {k: v for k, v in model.state_dict().items() if ".adapter." not in k and k != "soft_prompt_hint"}
    missing, unexpected = reference.load_state_dict(shared, strict=False)
    assert not missing and not unexpected
    assert reference.language_model.lm_head.weight is not reference.language_model.shared.weight
    # transformers uses the ViT's own epsilon for this norm; LAVIS's ln_vision has 1e-5.
    reference.vision_model.post_layernorm.eps = model.vision_model.post_layernorm.eps

    batch = inputs(config)
    task_index = torch.tensor([TaskKind.REGION, TaskKind.IMAGE, TaskKind.REGION])
    with torch.no_grad():
        ours = model(task_index=task_index, **batch)
        query_slots = torch.full((BATCH, config.qformer.num_query_tokens), image_token)
        theirs = reference(
            pixel_values=batch["pixel_values"],
            qformer_input_ids=batch["qformer_input_ids"],
            qformer_attention_mask=batch["qformer_attention_mask"],
            input_ids=torch.cat([query_slots, batch["input_ids"]], dim=1),
            attention_mask=torch.cat([torch.ones_like(query_slots), batch["attention_mask"]], dim=1),
            labels=batch["labels"],
        )
    assert (ours.logits - theirs.logits).abs().max().item() <= 1e-5
    assert ours.loss.item() == pytest.approx(theirs.loss.item(), abs=1e-5)


def test_loss_is_mean_cross_entropy_over_unmasked_labels() -> None:
    model = tiny_model()
    batch = inputs(model.config)
    batch["labels"][0, 2:] = -100
    with torch.no_grad():
        out = model(task_index=1, **batch)
    logits, labels = out.logits.flatten(0, 1), batch["labels"].flatten()
    keep = labels != -100
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits[keep], labels[keep]).item(), rel=1e-6)


def test_router_matches_formula_per_sample() -> None:
    torch.manual_seed(0)
    routing = TaskRouting()
    router = MixtureOfAdapters(d_model=16, num_adapters=2, config=AdapterConfig(bottleneck=4), routing=routing)
    with torch.no_grad():
        for param in router.parameters():
            param.normal_()
    x = torch.randn(4, 5, 16)
    task = torch.tensor([0, 1, 1, 0])
    expected = torch.zeros_like(x)
    for b in range(4):
        for k, adapter in enumerate(router.adapters):
            h = torch.relu(x[b] @ adapter.down_proj.weight.T + adapter.down_proj.bias)
            h = (h @ adapter.up_proj.weight.T + adapter.up_proj.bias) * adapter.scale
            expected[b] += h * getattr(router, f"router_ratio{k + 1}")[task[b]]
    with torch.no_grad(), routing(task):
        assert torch.allclose(router(x), expected, atol=1e-5)
    with pytest.raises(RuntimeError, match="task index"):
        router(x)


def test_one_hot_gates_route_region_to_adapter0_and_image_to_adapter1() -> None:
    routing = TaskRouting()
    router = MixtureOfAdapters(d_model=8, num_adapters=2, config=AdapterConfig(bottleneck=4), routing=routing)
    with torch.no_grad():
        for adapter in router.adapters:
            adapter.up_proj.weight.normal_()
        x = torch.randn(2, 3, 8)
        with routing(torch.tensor([TaskKind.REGION, TaskKind.IMAGE])):
            out = router(x)
        assert torch.allclose(out[0], router.adapters[0](x[0]))
        assert torch.allclose(out[1], router.adapters[1](x[1]))
    assert torch.equal(router.router_ratio1, torch.tensor([[1.0] * 8, [0.0] * 8]))


@pytest.mark.parametrize("mode", ["qformer", "aggregator"])
def test_single_adapter_modes_have_no_gates(mode: str) -> None:
    model = tiny_model(mode)
    names = [name for name, _ in model.named_parameters()]
    assert not any("router_ratio" in name for name in names)
    assert any(".adapters.0." in name for name in names) and not any(".adapters.1." in name for name in names)
    with torch.no_grad():
        model(task_index=None, **inputs(model.config))


def test_adapter_reads_pre_layernorm_residual_in_every_t5_ffn() -> None:
    model = tiny_model()
    stacks = (model.language_model.encoder, model.language_model.decoder)
    ffns = [block.layer[-1] for stack in stacks for block in stack.block]
    assert len(ffns) == model.config.language.num_layers + model.config.language.num_decoder_layers
    ffn = ffns[-1]
    h = torch.randn(2, 3, model.config.language.d_model)
    task = torch.tensor([0, 1])
    with torch.no_grad(), model.route(task):
        stock = h + ffn.DenseReluDense(ffn.layer_norm(h))
        assert torch.allclose(ffn(h), stock + ffn.adapter(h), atol=1e-6)
        assert not torch.allclose(ffn.adapter(h), torch.zeros_like(h))


def test_batch_with_mixed_tasks_equals_each_sample_alone() -> None:
    model = tiny_model()
    batch = inputs(model.config)
    task = torch.tensor([TaskKind.REGION, TaskKind.IMAGE, TaskKind.IMAGE])
    with torch.no_grad():
        together = model(task_index=task, **batch).logits
        for b in range(BATCH):
            one = {k: v[b : b + 1] for k, v in batch.items()}
            alone = model(task_index=task[b : b + 1], **one).logits
            assert torch.allclose(together[b : b + 1], alone, atol=1e-5)
        # The routing is real: the other task gives other logits.
        other = model(task_index=1 - task, **batch).logits
    assert not torch.allclose(together, other, atol=1e-3)


def test_vit_layers_feeding_the_aggregator_and_qformer() -> None:
    model = tiny_model()
    pixel_values = inputs(model.config)["pixel_values"]
    agg = model.config.aggregator
    with torch.no_grad():
        features = model.encode_image(pixel_values)
        vision = model.vision_model(pixel_values, output_hidden_states=True)
        hidden = vision.hidden_states  # [embeddings, block 0, block 1, ...]: intermediate[i] = hidden[i + 1]
        fused = model.aggregator(hidden[agg.main_layer + 1], [hidden[i + 1] for i in agg.cross_layers])
        expected = model.adapter_proj(model.ln_adapter(fused))
    assert torch.allclose(features.aggregator_tokens, expected, atol=1e-5)
    assert torch.allclose(features.qformer_input, vision.last_hidden_state, atol=1e-5)


def test_aggregator_init_is_near_identity_and_attention_is_bidirectional() -> None:
    torch.manual_seed(0)
    model = LionModel(tiny_config()).eval()
    width = model.config.vision.hidden_size
    x, cross = torch.randn(1, 6, width), [torch.randn(1, 6, width) for _ in range(2)]
    with torch.no_grad():
        # Zero output projections: each sublayer is LayerNorm(input), and LayerNorm is idempotent.
        assert torch.allclose(model.aggregator(x, cross), F.layer_norm(x, (width,)), atol=1e-4)
        for param in model.aggregator.parameters():
            param.normal_(0.0, 0.3)
        changed = x.clone()
        changed[:, -1] += 1.0
        # The first token sees the last one: no causal mask.
        assert not torch.allclose(model.aggregator(x, cross)[:, 0], model.aggregator(changed, cross)[:, 0])


def test_soft_prompt_replaces_the_sentinel_embedding_only() -> None:
    model = tiny_model()
    sentinel = model.config.language.soft_prompt_token_id
    batch = inputs(model.config)
    batch["input_ids"][0, 2] = sentinel
    with torch.no_grad():
        model.soft_prompt_hint.copy_(model.language_model.shared.weight[sentinel])
        as_token = model(task_index=0, **batch).logits
        model.soft_prompt_hint.normal_()
        as_hint = model(task_index=0, **batch).logits
    assert not torch.allclose(as_token[0], as_hint[0], atol=1e-3)
    assert torch.allclose(as_token[1:], as_hint[1:], atol=1e-6)


def test_one_frame_serves_a_batch_of_questions() -> None:
    model = tiny_model()
    batch = inputs(model.config)
    with torch.no_grad():
        one_frame = model.encode_image(batch["pixel_values"][:1])
        text_inputs = {k: v for k, v in batch.items() if k != "pixel_values"}
        shared = model(task_index=1, image_features=one_frame, **text_inputs)
        repeated = batch["pixel_values"][:1].expand(BATCH, -1, -1, -1)
        separate = model(task_index=1, **{**batch, "pixel_values": repeated})
    assert torch.allclose(shared.logits, separate.logits, atol=1e-5)


def test_mixed_precision_policy_casts_components_and_runs() -> None:
    model = tiny_model().apply_dtype_policy("cpu", "mixed")
    dtypes = {name: param.dtype for name, param in model.named_parameters()}
    assert dtypes["vision_model.encoder.layers.0.mlp.fc1.weight"] == torch.float16
    assert dtypes["vision_model.post_layernorm.weight"] == torch.float32
    assert dtypes["language_model.shared.weight"] == torch.bfloat16
    assert dtypes["language_model.encoder.block.0.layer.1.adapter.router_ratio1"] == torch.float32
    assert dtypes["qformer.encoder.layer.0.attention.attention.query.weight"] == torch.float32
    assert dtypes["aggregator.blocks.0.output.dense.weight"] == torch.float32
    with torch.no_grad():
        mixed = model(task_index=0, **inputs(model.config))
        reference = tiny_model()(task_index=0, **inputs(model.config))
    assert mixed.logits.dtype == torch.bfloat16
    assert (mixed.logits.float() - reference.logits).abs().max().item() < 0.5


# --------------------------------------------------------------------------------------------
# Checkpoints


def _logits(model: LionModel) -> torch.Tensor:
    with torch.no_grad():
        return model(task_index=torch.tensor([0, 1, 0]), **inputs(model.config)).logits


def test_save_load_round_trip_keeps_logits_and_ties(tmp_path) -> None:
    model = tiny_model()
    (tmp_path / "tokenizer").mkdir()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer").is_dir()
    assert json.loads((tmp_path / "config.json").read_text())["name"] == "lion-tiny"
    stored = load_file(tmp_path / "model.safetensors")
    assert "language_model.shared.weight" in stored and "language_model.lm_head.weight" in stored
    assert "language_model.encoder.embed_tokens.weight" not in stored  # an alias of `shared`

    loaded = LionModel.from_pretrained(tmp_path)
    t5 = loaded.language_model
    assert t5.encoder.embed_tokens.weight is t5.shared.weight is t5.decoder.embed_tokens.weight
    assert t5.lm_head.weight is not t5.shared.weight
    assert torch.equal(_logits(model), _logits(loaded))


def test_sharded_checkpoint_round_trip(tmp_path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path, max_shard_bytes=100_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (tmp_path / "model.safetensors").exists()
    assert torch.equal(_logits(model), _logits(LionModel.from_pretrained(tmp_path)))
    model.save_pretrained(tmp_path)  # back to one file: the stale shards and index go
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]


def test_strict_loading_names_missing_and_unexpected_keys(tmp_path) -> None:
    tiny_model().save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["soft_prompt_hint"]
    tensors["fusion_adapter.blocks.0.output.dense.weight"] = torch.zeros(1)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as error:
        LionModel.from_pretrained(tmp_path)
    assert "soft_prompt_hint" in str(error.value)
    assert "fusion_adapter.blocks.0.output.dense.weight" in str(error.value)


def test_loading_rejects_wrong_shapes(tmp_path) -> None:
    tiny_model().save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["soft_prompt_hint"] = torch.zeros(3)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="soft_prompt_hint"):
        LionModel.from_pretrained(tmp_path)


def test_only_known_buffers_are_left_out_of_checkpoints() -> None:
    # from_pretrained refills these itself after building the model on the meta device.
    model = tiny_model()
    stored = set(model.state_dict())
    assert {name for name, _ in model.named_buffers() if name not in stored} == {"qformer.embeddings.position_ids"}
