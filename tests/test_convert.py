"""lion-convert on tiny stand-ins for the official files.

The official state dicts are written here by hand from the official names (lion-model.md §7,
LAVIS eva_vit.py / Qformer.py), independently of the converter's own mapping table, so a mapping
mistake shows up as a difference instead of cancelling out.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import T5Config, T5ForConditionalGeneration

from lion_ros.cli import convert as convert_cli
from lion_ros.model import LionModel
from lion_ros.model.convert import ConversionError, ConvertConfig, convert, load_torch_weights
from lion_ros.tokenization import QFORMER_BOS, LionTokenizers
from tiny_lion import tiny_model, tiny_tokenizers

EXTRA_EVA_BLOCK = 4  # lion-tiny keeps 4 ViT blocks; the EVA file has one more, as EVA-CLIP-g's 40th


class NotAWeight:
    """A custom class: weights-only loading must refuse to rebuild it."""


def _official_qformer(name: str) -> str:
    name = name.replace("qformer.", "Qformer.bert.", 1).replace("embeddings.layernorm", "embeddings.LayerNorm")
    return name.replace("attention.attention.", "attention.self.")  # also crossattention.attention.


def _official(model: LionModel) -> tuple[dict, dict, dict]:
    """(LION .pth, eva_vit_g.pth, FlanT5 T5ForConditionalGeneration) state dicts of `model`."""
    lion, eva, t5 = {}, {}, {}
    width = model.config.vision.hidden_size
    for name, tensor in model.checkpoint_tensors().items():
        tensor = tensor.detach().clone()
        if name.startswith("vision_model.post_layernorm."):
            lion["ln_vision." + name.rsplit(".", 1)[1]] = tensor
        elif name.startswith("vision_model.embeddings."):
            eva[{
                "class_embedding": "cls_token",
                "position_embedding": "pos_embed",
                "patch_embedding.weight": "patch_embed.proj.weight",
                "patch_embedding.bias": "patch_embed.proj.bias",
            }[name[len("vision_model.embeddings."):]]] = tensor  # fmt: skip
        elif name.startswith("vision_model.encoder.layers."):
            i, rest = re.match(r"vision_model\.encoder\.layers\.(\d+)\.(.+)", name).groups()
            if rest == "self_attn.qkv.bias":
                eva[f"blocks.{i}.attn.q_bias"] = tensor[:width]
                eva[f"blocks.{i}.attn.v_bias"] = tensor[2 * width :]
                continue
            rest = (rest.replace("layer_norm1", "norm1").replace("layer_norm2", "norm2")
                    .replace("self_attn.qkv", "attn.qkv").replace("self_attn.projection", "attn.proj"))  # fmt: skip
            eva[f"blocks.{i}.{rest}"] = tensor
        elif name.startswith("qformer."):
            lion[_official_qformer(name)] = tensor
        elif name.startswith("language_projection."):
            lion["t5_proj." + name.rsplit(".", 1)[1]] = tensor
        elif name.startswith("aggregator."):
            lion["fusion_adapter." + name[len("aggregator."):]] = tensor
        elif name.startswith("language_model.") and ".adapter." in name:
            lion["t5_model." + name[len("language_model."):]] = tensor
        elif name.startswith("language_model."):
            t5[name[len("language_model."):]] = tensor
        else:  # query_tokens, soft_prompt_hint, ln_adapter.*, adapter_proj.*
            lion[name] = tensor
    lion["Qformer.bert.embeddings.position_ids"] = torch.arange(model.config.qformer.max_position_embeddings)[None]
    for key in list(eva):  # EVA-CLIP-g's 40th block, which LION drops
        if key.startswith("blocks.0."):
            eva[key.replace("blocks.0.", f"blocks.{EXTRA_EVA_BLOCK}.")] = torch.randn_like(eva[key])
    return lion, eva, t5


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict:
    """Official-format files of a tiny random model, and the model itself."""
    root = tmp_path_factory.mktemp("release")
    tokenizers = tiny_tokenizers()
    model = tiny_model(tokenizers)
    with torch.no_grad():  # EVA has no key bias: the converter writes zeros there
        for layer in model.vision_model.encoder.layers:
            width = model.config.vision.hidden_size
            layer.self_attn.qkv.bias[width : 2 * width] = 0
    lion, eva, t5_state = _official(model)

    # A hub FlanT5 directory: its own lm_head, `tie_word_embeddings: false`. Written by hand:
    # transformers 5 ties T5's lm_head on save_pretrained.
    language, flan = model.config.language, root / "flan-t5"
    T5Config(
        vocab_size=language.vocab_size, d_model=language.d_model, d_kv=language.d_kv, d_ff=language.d_ff,
        num_layers=language.num_layers, num_decoder_layers=language.num_decoder_layers,
        num_heads=language.num_heads, relative_attention_num_buckets=language.relative_attention_num_buckets,
        relative_attention_max_distance=language.relative_attention_max_distance,
        feed_forward_proj="gated-gelu", decoder_start_token_id=0,
    ).save_pretrained(flan)  # fmt: skip
    config = json.loads((flan / "config.json").read_text())
    (flan / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    t5_state["encoder.embed_tokens.weight"] = t5_state["shared.weight"].clone()  # older saves hold it
    save_file({k: v.contiguous() for k, v in t5_state.items()}, flan / "model.safetensors")
    tokenizers.t5.save_pretrained(flan)
    # The model's own T5 must load into transformers' T5 from these names.
    missing, unexpected = T5ForConditionalGeneration(T5Config.from_pretrained(flan)).load_state_dict(t5_state, strict=False)
    assert not unexpected and all("embed_tokens" in name for name in missing)

    bert = root / "bert"  # hub style: vocab.txt without [DEC], no tokenizer class named
    bert.mkdir()
    vocab = [t for t, _ in sorted(tokenizers.qformer.get_vocab().items(), key=lambda kv: kv[1]) if t != QFORMER_BOS]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (bert / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))

    torch.save({"model": lion, "epoch": 3}, root / "lion.pth")  # a training checkpoint's wrapper
    torch.save(eva, root / "eva_vit_g.pth")
    return dict(root=root, model=model, lion=lion, eva=eva, tokenizers=tokenizers)


def _convert(release: dict, out: Path, options: ConvertConfig = ConvertConfig(preset="lion-tiny"), lion=None):
    root = release["root"]
    lion_path = root / "lion.pth"
    if lion is not None:
        lion_path = out.parent / f"{out.name}-lion.pth"
        torch.save(lion, lion_path)
    return convert(lion_path, root / "eva_vit_g.pth", root / "flan-t5", root / "bert", out, options)


def test_round_trip_reproduces_every_tensor(release: dict, tmp_path: Path) -> None:
    report = _convert(release, tmp_path / "out")
    loaded = LionModel.from_pretrained(tmp_path / "out")
    original = release["model"].checkpoint_tensors()
    converted = loaded.checkpoint_tensors()
    assert set(converted) == set(original)
    for name, tensor in original.items():
        assert torch.equal(converted[name], tensor), name
    assert loaded.config.language == release["model"].config.language
    assert any(f"blocks.{EXTRA_EVA_BLOCK}." in d for d in report.dropped)
    assert any("position_ids" in d for d in report.dropped)
    assert not report.overridden and not report.allowed_missing

    tokenizers = LionTokenizers.load(tmp_path / "out")
    assert tokenizers.qformer_bos_id == len(tokenizers.qformer) - 1  # [DEC] appended, as in LION
    assert tokenizers.tag_token_id == loaded.config.language.soft_prompt_token_id


def test_lion_file_overrides_flan_t5_and_mixed_dtype(release: dict, tmp_path: Path) -> None:
    lion = dict(release["lion"])
    lion["t5_model.shared.weight"] = torch.ones_like(release["model"].language_model.shared.weight).bfloat16()
    _convert(release, tmp_path / "out", ConvertConfig(preset="lion-tiny", dtype="mixed"), lion=lion)
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("language_model.shared.weight").dtype == torch.bfloat16
        assert bool((f.get_tensor("language_model.shared.weight") == 1).all())
        assert f.get_tensor("vision_model.encoder.layers.0.mlp.fc1.weight").dtype == torch.float16
        assert f.get_tensor("vision_model.post_layernorm.weight").dtype == torch.float32
        assert f.get_tensor("soft_prompt_hint").dtype == torch.float32
        adapter = "language_model.encoder.block.0.layer.1.adapter.adapters.0.up_proj.weight"
        assert f.get_tensor(adapter).dtype == torch.float32


def test_missing_and_unexpected_tensors_are_named(release: dict, tmp_path: Path) -> None:
    lion = dict(release["lion"])
    del lion["fusion_adapter.blocks.1.output.dense.weight"]
    lion["Qformer.cls.predictions.bias"] = torch.zeros(3)
    lion["t5_model.encoder.block.0.layer.1.adapter.adapters.5.scale"] = torch.ones(1)
    with pytest.raises(ConversionError) as error:
        _convert(release, tmp_path / "strict", lion=lion)
    message = str(error.value)
    assert "aggregator.blocks.1.output.dense.weight" in message
    assert "lion:Qformer.cls.predictions.bias" in message
    assert "lion:t5_model.encoder.block.0.layer.1.adapter.adapters.5.scale" in message

    options = ConvertConfig(
        preset="lion-tiny",
        allow_missing=("aggregator.blocks.1.output.*",),
        allow_unexpected=("Qformer.cls.*", "lion:t5_model.*.adapters.5.*"),
    )
    report = _convert(release, tmp_path / "relaxed", options, lion=lion)
    assert report.allowed_missing == ["aggregator.blocks.1.output.dense.weight"]
    assert len(report.allowed_unexpected) == 2
    LionModel.from_pretrained(tmp_path / "relaxed")


def test_wrong_shapes_are_named(release: dict, tmp_path: Path) -> None:
    lion = dict(release["lion"])
    lion["query_tokens"] = torch.zeros(1, 7, 5)
    with pytest.raises(ConversionError, match=r"query_tokens: source \(1, 7, 5\)"):
        _convert(release, tmp_path / "out", lion=lion)


def test_pickles_with_code_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": NotAWeight()}, path)
    with pytest.raises(ConversionError, match="not a plain weights file"):
        load_torch_weights(path)
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ConversionError, match="cannot read"):
        load_torch_weights(tmp_path / "broken.pth")
    torch.save({"model": {"step": 3}}, tmp_path / "numbers.pth")
    with pytest.raises(ConversionError, match="not tensors.*step"):
        load_torch_weights(tmp_path / "numbers.pth")


def test_cli_converts_and_reports_errors(release: dict, tmp_path: Path, capsys) -> None:
    root = release["root"]
    args = ["--lion", str(root / "lion.pth"), "--eva", str(root / "eva_vit_g.pth"), "--flan-t5", str(root / "flan-t5"),
            "--bert", str(root / "bert"), "--preset", "lion-tiny"]  # fmt: skip
    assert convert_cli.main([*args, "--out", str(tmp_path / "out")]) == 0
    assert "dropped on purpose" in capsys.readouterr().out
    assert (tmp_path / "out" / "config.json").is_file()
    assert convert_cli.main([*args, "--out", str(tmp_path / "bad"), "--preset", "lion-nano"]) == 1
    assert "wrong shapes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        convert_cli.main(["--help"])
    assert exit_.value.code == 0
