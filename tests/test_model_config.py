"""LION configuration: presets, JSON round trip, parameter counts and visual token counts."""
import dataclasses

import pytest
import torch

from lion_ros.model import LionConfig, LionModel, parameter_group
from lion_ros.model.config import PRESETS


def _count(config: LionConfig) -> dict[str, int]:
    with torch.device("meta"):
        model = LionModel(config)
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        group = parameter_group(name)
        counts[group] = counts.get(group, 0) + param.numel()
    return counts


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_json_round_trip(name: str, tmp_path) -> None:
    config = LionConfig.preset(name)
    config.save(tmp_path / "config.json")
    assert LionConfig.load(tmp_path / "config.json") == config


def test_config_rejects_unknown_fields_and_bad_values() -> None:
    data = LionConfig.preset("lion-tiny").to_dict()
    data["language"]["d_modle"] = 8
    with pytest.raises(ValueError, match="d_modle"):
        LionConfig.from_dict(data)
    with pytest.raises(ValueError, match="visual_input"):
        dataclasses.replace(LionConfig(), visual_input="both")
    with pytest.raises(ValueError, match="ViT block"):
        LionConfig(aggregator=dataclasses.replace(LionConfig().aggregator, main_layer=39))


@pytest.mark.parametrize(
    "name, billions, lion_millions",
    # The reference's arithmetic: ≈ 4.1 B / 12.4 B in total, ≈ 281.6 M / 320.4 M trainable.
    [("lion-4b", 4.1, 281.6), ("lion-12b", 12.4, 320.4)],
)
def test_full_size_parameter_counts(name: str, billions: float, lion_millions: float) -> None:
    counts = _count(LionConfig.preset(name))
    total = sum(counts.values())
    assert total == pytest.approx(billions * 1e9, rel=0.02)
    trainable = total - counts["vit"] - counts["t5"]
    assert trainable == pytest.approx(lion_millions * 1e6, rel=0.02)
    assert counts["vit"] == pytest.approx(986e6, rel=0.01)


def test_nano_is_small_enough_to_ship() -> None:
    total = sum(_count(LionConfig.preset("lion-nano")).values())
    assert 5e6 <= total <= 7e6
    assert total * 4 < 25e6  # float32 safetensors


@pytest.mark.parametrize("mode, tokens", [("qformer", 32), ("aggregator", 257), ("all", 289)])
def test_visual_prefix_length_on_eva_geometry(mode: str, tokens: int) -> None:
    # Real 224 px / patch 14 geometry and 32 queries; narrow widths keep it fast on CPU.
    tiny = LionConfig.preset("lion-tiny")
    config = dataclasses.replace(
        tiny,
        visual_input=mode,
        vision=dataclasses.replace(tiny.vision, image_size=224, patch_size=14),
        qformer=dataclasses.replace(tiny.qformer, num_query_tokens=32),
    )
    assert config.num_visual_tokens == tokens
    model = LionModel(config).eval()
    with torch.no_grad():
        features = model.encode_image(torch.randn(1, 3, 224, 224))
        prefix = model.visual_prefix(features, torch.tensor([[5, 6, 7]]))
    assert prefix.shape == (1, tokens, config.language.d_model)


def test_full_size_image_features_on_meta_device() -> None:
    with torch.device("meta"):
        model = LionModel(LionConfig.preset("lion-4b"))
        features = model.encode_image(torch.empty(2, 3, 224, 224))
    assert features.qformer_input.shape == (2, 257, 1408)
    assert features.aggregator_tokens.shape == (2, 257, 2048)


def test_overlay_lays_a_partial_config_over_a_preset() -> None:
    tiny = LionConfig.preset("lion-tiny")
    custom = tiny.overlay({"name": "custom", "vision": {"hidden_size": 48}, "aggregator": {"cross_layers": [0, 1]}})
    assert custom.name == "custom" and custom.vision.hidden_size == 48
    assert custom.aggregator.cross_layers == (0, 1)
    assert dataclasses.replace(custom.vision, hidden_size=32) == tiny.vision  # the rest is the preset's
    assert custom.qformer == tiny.qformer and custom.language == tiny.language
    nano = LionConfig.preset("lion-nano")
    assert tiny.overlay(nano.to_dict()) == nano  # a whole config.json replaces everything
    assert tiny.overlay({}) == tiny
    assert tiny.overlay({"initializer_range": 1}).initializer_range == 1  # JSON's 1 is a valid float


@pytest.mark.parametrize(
    "partial, message",
    [
        ({"vision": 3}, "vision must be an object of fields, got 3"),
        ({"vision": {"hidden_size": "48"}}, "vision.hidden_size must be like 32, got '48'"),
        ({"vision": {"qkv_bias": 1}}, "vision.qkv_bias must be like True, got 1"),
        ({"language": {"vocab_size": 4.5}}, "language.vocab_size must be like 48, got 4.5"),
        ({"aggregator": {"cross_layers": [1.5, 0]}}, r"aggregator.cross_layers must be like \(2, 1\)"),
        ({"name": 7, "visual_input": "both"}, "name must be like 'lion-tiny', got 7"),
        ({"vision": {"hidden_sise": 48}}, r"unknown VisionConfig fields: \['hidden_sise'\]"),
        ({"vision_model": {}}, "unknown LionConfig fields"),
        ({"visual_input": "both"}, "visual_input must be one of"),
    ],
)
def test_overlay_names_bad_fields(partial: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LionConfig.preset("lion-tiny").overlay(partial)
