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
from safetensors.torch import load_file, save_file
from tiny_lion import tiny_config, tiny_model, tiny_tokenizers
from transformers import T5Config, T5ForConditionalGeneration

from lion_ros.cli import convert as convert_cli
from lion_ros.model import LionConfig, LionModel
from lion_ros.model.config import PRESETS
from lion_ros.model.convert import ConversionError, ConvertConfig, convert, load_torch_weights
from lion_ros.runtime.pytorch import PyTorchRuntime
from lion_ros.tokenization import QFORMER_BOS, LionTokenizers

FP16, BF16, FP32 = torch.float16, torch.bfloat16, torch.float32
# The official model's dtypes after its CUDA load, over our names, first match wins. Written from
# the official code (LAVIS / LION eva_vit.py `convert_weights_to_fp16`: weight and bias of the
# ViT's nn.Conv2d / nn.Linear only; lion_t5.py: FlanT5 loaded in bf16, adapters added after it,
# LION's modules built in fp32), not from the converter's rule.
OFFICIAL_DTYPES = [
    (r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", FP16),  # patch_embed.proj: Conv2d
    (r"vision_model\.encoder\.layers\.\d+\.self_attn\.qkv\.weight", FP16),  # attn.qkv: Linear, bias=False
    (r"vision_model\.encoder\.layers\.\d+\.(self_attn\.projection|mlp\.fc[12])\.(weight|bias)", FP16),
    (r"vision_model\.encoder\.layers\.\d+\.self_attn\.qkv\.bias", FP32),  # attn.q_bias / v_bias: Parameters
    (r"vision_model\.encoder\.layers\.\d+\.layer_norm[12]\.(weight|bias)", FP32),  # norm1 / norm2
    (r"vision_model\.embeddings\.(class|position)_embedding", FP32),  # cls_token, pos_embed
    (r"vision_model\.post_layernorm\.(weight|bias)", FP32),  # LION's ln_vision
    (r"language_model\..*\.adapter\..*", FP32),  # LION's adapters and routers
    (r"language_model\..*", BF16),  # FlanT5
    (r".*", FP32),  # LION's Q-Former, query tokens, projections, aggregator, soft prompt
]


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
    extra = model.config.vision.num_hidden_layers  # EVA-CLIP-g's 40th block, which LION drops
    for key in list(eva):
        if key.startswith("blocks.0."):
            eva[key.replace("blocks.0.", f"blocks.{extra}.")] = torch.randn_like(eva[key])
    return lion, eva, t5


def _write_release(root: Path, model: LionModel, tokenizers: LionTokenizers) -> dict:
    """Official-format files of `model` under `root`, and the model itself."""
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
    stock_t5 = T5ForConditionalGeneration(T5Config.from_pretrained(flan))
    missing, unexpected = stock_t5.load_state_dict(t5_state, strict=False)
    assert not unexpected and all("embed_tokens" in name for name in missing)

    bert = root / "bert"  # hub style: vocab.txt without [DEC], no tokenizer class named
    bert.mkdir()
    vocab = [t for t, _ in sorted(tokenizers.qformer.get_vocab().items(), key=lambda kv: kv[1]) if t != QFORMER_BOS]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (bert / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))

    torch.save({"model": lion, "epoch": 3}, root / "lion.pth")  # a training checkpoint's wrapper
    torch.save(eva, root / "eva_vit_g.pth")
    return {"root": root, "model": model, "lion": lion, "eva": eva, "tokenizers": tokenizers}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict:
    """Official-format files of a tiny random model, and the model itself."""
    tokenizers = tiny_tokenizers()
    return _write_release(tmp_path_factory.mktemp("release"), tiny_model(tokenizers), tokenizers)


def _cli_args(root: Path) -> list[str]:
    return ["--lion", str(root / "lion.pth"), "--eva", str(root / "eva_vit_g.pth"), "--flan-t5", str(root / "flan-t5"),
            "--bert", str(root / "bert")]  # fmt: skip


def _logits(model: LionModel) -> torch.Tensor:
    """Teacher-forced logits of a fixed random batch, both router rows."""
    config, generator = model.config, torch.Generator().manual_seed(3)
    size = config.vision.image_size
    ids = torch.randint(2, config.language.vocab_size, (2, 6), generator=generator)
    with torch.no_grad():
        return model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            task_index=torch.tensor([0, 1]),
            pixel_values=torch.randn(2, 3, size, size, generator=generator),
            qformer_input_ids=ids % config.qformer.vocab_size,
            qformer_attention_mask=torch.ones_like(ids),
            decoder_input_ids=ids[:, :4],
        ).logits


def _convert(release: dict, out: Path, options: ConvertConfig | None = None, lion=None):
    root = release["root"]
    lion_path = root / "lion.pth"
    if lion is not None:
        lion_path = out.parent / f"{out.name}-lion.pth"
        torch.save(lion, lion_path)
    options = options or ConvertConfig(preset="lion-tiny")
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
    assert any(f"blocks.{loaded.config.vision.num_hidden_layers}." in d for d in report.dropped)
    assert any("position_ids" in d for d in report.dropped)
    assert not report.overridden and not report.allowed_missing

    tokenizers = LionTokenizers.load(tmp_path / "out")
    assert tokenizers.qformer_bos_id == len(tokenizers.qformer) - 1  # [DEC] appended, as in LION
    assert tokenizers.tag_token_id == loaded.config.language.soft_prompt_token_id


def test_mixed_dtype_stores_the_official_loaders_dtypes(release: dict, tmp_path: Path) -> None:
    lion = dict(release["lion"])
    lion["t5_model.shared.weight"] = torch.ones_like(release["model"].language_model.shared.weight).bfloat16()
    out = tmp_path / "out"
    report = _convert(release, out, ConvertConfig(preset="lion-tiny", dtype="mixed"), lion=lion)
    assert report.overridden == ["language_model.shared.weight"]  # the LION file overrides FlanT5
    stored = load_file(out / "model.safetensors")

    rules_used = set()
    for name, tensor in stored.items():
        rule, dtype = next((i, d) for i, (pattern, d) in enumerate(OFFICIAL_DTYPES) if re.fullmatch(pattern, name))
        assert tensor.dtype == dtype, f"{name}: stored {tensor.dtype}, official {dtype}"
        rules_used.add(rule)
    assert rules_used == set(range(len(OFFICIAL_DTYPES)))  # no rule is vacuous
    original = release["model"].checkpoint_tensors()
    original["language_model.shared.weight"] = torch.ones_like(stored["language_model.shared.weight"])
    assert all(torch.equal(tensor, original[name].to(tensor.dtype)) for name, tensor in stored.items())  # cast only

    # The PyTorch runtime loads it under either precision policy; fp32 holds the stored values.
    runtime = PyTorchRuntime.from_pretrained(out, dtype="fp32")
    loaded = runtime.model.checkpoint_tensors()
    assert all(torch.equal(loaded[name], tensor.float()) for name, tensor in stored.items())
    runtime.warmup()
    PyTorchRuntime.from_pretrained(out, dtype="mixed").warmup()


# A size no preset has, as a user writes it: laid over --preset lion-tiny.
CUSTOM_CONFIG = {
    "name": "lion-custom",
    "vision": {"image_size": 36, "patch_size": 12, "hidden_size": 24, "num_hidden_layers": 3,
               "num_attention_heads": 2, "intermediate_size": 40},
    "qformer": {"hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 24,
                "num_query_tokens": 3},
    "aggregator": {"num_attention_heads": 3, "intermediate_size": 20, "main_layer": 2, "cross_layers": [0, 1],
                   "proj_hidden_size": 28},
    "adapter": {"bottleneck": 6},
    "language": {"d_model": 20},  # may be given; FlanT5's config.json decides T5's shape
}  # fmt: skip
CUSTOM_T5 = {"d_model": 20, "d_ff": 36, "num_heads": 2, "d_kv": 10, "num_layers": 1, "num_decoder_layers": 2}


def test_cli_converts_a_size_outside_the_presets(tmp_path: Path, capsys) -> None:
    tokenizers = tiny_tokenizers()
    config = tiny_config(tokenizers).overlay({**CUSTOM_CONFIG, "language": CUSTOM_T5})
    assert all(LionConfig.preset(name).vision != config.vision for name in PRESETS)
    (tmp_path / "release").mkdir()
    release = _write_release(tmp_path / "release", tiny_model(tokenizers, seed=1, config=config), tokenizers)
    args = [*_cli_args(release["root"]), "--preset", "lion-tiny"]
    assert convert_cli.main([*args, "--out", str(tmp_path / "preset")]) == 1  # the preset cannot hold it
    assert "wrong shapes" in capsys.readouterr().err

    (tmp_path / "custom.json").write_text(json.dumps(CUSTOM_CONFIG))
    out = tmp_path / "out"
    assert convert_cli.main([*args, "--config", str(tmp_path / "custom.json"), "--out", str(out)]) == 0
    assert "lion-custom" in capsys.readouterr().out
    loaded = LionModel.from_pretrained(out)
    assert loaded.config == config
    original, converted = release["model"].checkpoint_tensors(), loaded.checkpoint_tensors()
    assert set(converted) == set(original)
    assert all(torch.equal(converted[name], tensor) for name, tensor in original.items())
    assert torch.equal(_logits(loaded), _logits(release["model"]))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "holds a JSON list"),
        ('{"vision": {"hidden_sise": 24}}', "unknown VisionConfig fields.*hidden_sise"),
        ('{"vision": {"hidden_size": "24"}}', "vision.hidden_size must be like 32, got '24'"),
        ('{"aggregator": {"main_layer": 9}}', "ViT block indices"),
    ],
)
def test_bad_config_files_fail_before_writing(release: dict, tmp_path: Path, capsys, text: str, message: str) -> None:
    (tmp_path / "bad.json").write_text(text)
    args = [*_cli_args(release["root"]), "--preset", "lion-tiny", "--config", str(tmp_path / "bad.json")]
    assert convert_cli.main([*args, "--out", str(tmp_path / "out")]) == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_config_contradicting_the_inputs_is_named(release: dict, tmp_path: Path) -> None:
    overrides = {"language": {"d_model": 64, "num_layers": 2}, "qformer": {"vocab_size": 7}}
    with pytest.raises(ConversionError) as error:
        _convert(release, tmp_path / "out", ConvertConfig(preset="lion-tiny", overrides=overrides))
    message = str(error.value)
    assert "language.d_model: the config says 64, the inputs 32" in message
    assert "qformer.vocab_size: the config says 7" in message
    assert "num_layers" not in message  # agrees with FlanT5's config.json


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
    with pytest.raises(ConversionError, match=r"not tensors.*step"):
        load_torch_weights(tmp_path / "numbers.pth")


def test_cli_converts_and_reports_errors(release: dict, tmp_path: Path, capsys) -> None:
    args = [*_cli_args(release["root"]), "--preset", "lion-tiny"]
    assert convert_cli.main([*args, "--out", str(tmp_path / "out")]) == 0
    assert "dropped on purpose" in capsys.readouterr().out
    assert (tmp_path / "out" / "config.json").is_file()
    assert convert_cli.main([*args, "--out", str(tmp_path / "bad"), "--preset", "lion-nano"]) == 1
    assert "wrong shapes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        convert_cli.main(["--help"])
    assert exit_.value.code == 0
    assert "--config" in capsys.readouterr().out
