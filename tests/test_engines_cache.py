"""Engine directory: metadata, mismatch detection before deserialising, safe rebuilds, the CLI.

No TensorRT here: mismatches are produced by writing metadata for other TensorRT versions and
GPUs, and the build orchestration runs against a stand-in `tensorrt` module that implements the
builder calls lion_ros makes (TensorRT 10 API names) and records what it was asked for.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from lion_ros.export import cli, engines
from lion_ros.export.engines import (
    METADATA_NAME,
    BuildConfig,
    EngineMetadata,
    EngineMismatchError,
    ProfileConfig,
    TensorRTEnvironment,
    prepare,
)
from lion_ros.model import LionModel

FP32 = BuildConfig(precision="fp32")


@pytest.fixture(scope="module")
def built(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An fp32 ONNX-only engine directory, exported once for the module (copy it before changing it)."""
    engine_dir = tmp_path_factory.mktemp("built") / "engines"
    prepare(engine_dir, backend="onnxruntime", model_dir=model_dir, build=FP32)
    return engine_dir


@pytest.fixture
def engine_dir(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "engines"))


@pytest.fixture
def no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the ONNX export ran, but the directory was up to date")

    monkeypatch.setattr("lion_ros.export.onnx.export_onnx", fail)


def test_export_directory_layout_and_metadata(built: Path, model_dir: Path) -> None:
    metadata = EngineMetadata.load(built)
    assert metadata.precision == "fp32" and metadata.tensorrt is None
    assert metadata.source_dir == str(model_dir.resolve())
    assert set(metadata.source["files"]) >= {"config.json", "model.safetensors", "tokenizer/tokenizer.json"}
    assert (built / "tokenizer").is_dir() and (built / "qformer_tokenizer").is_dir()
    assert (built / "config.json").is_file()
    for name in ("vision", "qformer", "t5_encoder", "t5_decoder_step"):
        assert metadata.onnx_path(built, name).is_file()
    assert metadata.graphs["t5_decoder_step"]["inputs"]["self_k"]["shape"][3] == "steps"


def test_up_to_date_directory_is_reused(engine_dir: Path, model_dir: Path, no_export: None) -> None:
    assert prepare(engine_dir, backend="onnxruntime", model_dir=model_dir, build=FP32).precision == "fp32"


def test_changed_weights_are_named_and_rebuilt_only_when_allowed(engine_dir: Path, tmp_path: Path) -> None:
    source = Path(shutil.copytree(EngineMetadata.load(engine_dir).source_dir, tmp_path / "model"))
    model = LionModel.from_pretrained(source)
    with torch.no_grad():
        model.soft_prompt_hint.add_(1.0)
    model.save_pretrained(source)
    with pytest.raises(EngineMismatchError, match=r"source weights: .*changed: model\.safetensors"):
        prepare(engine_dir, backend="onnxruntime", model_dir=source, build=FP32)
    metadata = prepare(engine_dir, backend="onnxruntime", model_dir=source, build=FP32, rebuild_on_mismatch=True)
    assert metadata.source_dir == str(source.resolve())
    assert EngineMetadata.load(engine_dir).source["sha256"] == metadata.source["sha256"]
    assert not list(tmp_path.glob(".engines.*"))  # scratch and old directories are cleaned up


def test_precision_and_export_code_mismatches_are_named(engine_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EngineMismatchError, match="precision: exported as fp32, asked for bf16"):
        prepare(engine_dir, backend="onnxruntime", build=BuildConfig(precision="bf16"))
    monkeypatch.setattr("lion_ros.export.onnx.export_code_version", lambda: "99+abc")
    with pytest.raises(EngineMismatchError, match=r"export code: graphs exported by 1\+\w+, this code is 99\+abc"):
        prepare(engine_dir, backend="onnxruntime")


def _with_fake_plans(engine_dir: Path, **tensorrt: str) -> None:
    metadata = EngineMetadata.load(engine_dir)
    (engine_dir / "tensorrt").mkdir()
    plans = {}
    for name in metadata.graphs:
        (engine_dir / "tensorrt" / f"{name}.plan").write_bytes(b"not a plan")
        plans[name] = f"{name}.plan"
    metadata.tensorrt = {"version": "10.3.0", "device_name": "Orin", "compute_capability": "8.7", **tensorrt,
                         "plans": plans}
    (engine_dir / METADATA_NAME).write_text(metadata.to_json())


def test_tensorrt_mismatch_is_caught_before_deserialising(engine_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans built for another TensorRT and GPU: every difference is named, and the runtime fails
    before touching TensorRT (nothing here could deserialise the fake plans)."""
    _with_fake_plans(engine_dir, version="10.7.0", device_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")
    here = TensorRTEnvironment(version="10.3.0", device_name="Orin", compute_capability="8.7")
    monkeypatch.setattr(TensorRTEnvironment, "detect", classmethod(lambda cls: here))
    from lion_ros.runtime.tensorrt import TensorRTRuntime

    with pytest.raises(EngineMismatchError) as error:
        TensorRTRuntime.from_pretrained(engine_dir)
    assert error.value.differences == [
        "TensorRT version: engines built for 10.7.0, this machine has 10.3.0",
        "GPU: engines built for NVIDIA H100 80GB HBM3, this machine has Orin",
        "compute capability: engines built for 9.0, this machine has 8.7",
    ]
    with pytest.raises(EngineMismatchError, match=r"profiles: built for .*'max_new_tokens': 64.*'max_new_tokens': 32"):
        TensorRTRuntime.from_pretrained(engine_dir, profiles=ProfileConfig(max_new_tokens=32))


def test_onnx_only_directory_has_no_tensorrt_engines(engine_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = TensorRTEnvironment("10.3.0", "Orin", "8.7")
    monkeypatch.setattr(TensorRTEnvironment, "detect", classmethod(lambda cls: here))
    with pytest.raises(EngineMismatchError, match="no engines built in this directory"):
        prepare(engine_dir, backend="tensorrt")


@pytest.mark.parametrize("bad", ["../outside.onnx", "/etc/passwd", ""])
def test_unsafe_paths_in_metadata_are_refused(engine_dir: Path, bad: str) -> None:
    data = json.loads((engine_dir / METADATA_NAME).read_text())
    data["graphs"]["vision"]["file"] = bad
    (engine_dir / METADATA_NAME).write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match="unsafe file path|outside the engine directory"):
        EngineMetadata.load(engine_dir)


def test_symlink_out_of_the_directory_is_refused(engine_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere.onnx").write_bytes(b"")
    (engine_dir / "onnx" / "vision.onnx").unlink()
    (engine_dir / "onnx" / "vision.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    with pytest.raises(EngineMismatchError, match="outside the engine directory"):
        EngineMetadata.load(engine_dir)


def test_never_replaces_a_directory_that_is_not_an_engine_directory(model_dir: Path, tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an engine directory"):
        prepare(precious, backend="onnxruntime", model_dir=model_dir, build=FP32)
    assert (precious / "notes.txt").read_text() == "keep me"


# -- TensorRT build orchestration against a stand-in module ------------------------------------


def fake_tensorrt(version: str, log: list, fail_on: tuple[str, ...] = ()) -> types.ModuleType:
    """The TensorRT 10 builder API surface lion_ros uses; `build_serialized_network` returns the
    profile it was given as JSON, and drives the progress monitor like the real builder. Builds
    of the graphs named in `fail_on` fail."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.BuilderFlag = types.SimpleNamespace(TF32=6)

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class Parser:
        num_errors = 0

        def __init__(self, network, logger) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            self.network["onnx"] = path
            return Path(path).is_file()

    class Config:
        def __init__(self) -> None:
            self.profiles, self.cache, self.progress_monitor = [], None, None
            self.flags = {trt.BuilderFlag.TF32}  # TensorRT's default

        def clear_flag(self, flag) -> None:
            self.flags.discard(flag)

        def set_memory_pool_limit(self, pool, size) -> None:
            self.workspace = size

        def add_optimization_profile(self, profile) -> None:
            self.profiles.append(profile)

        def create_timing_cache(self, data: bytes):
            log.append(("timing cache in", bytes(data)))
            return types.SimpleNamespace(data=bytes(data), serialize=lambda: b"timing-cache")

        def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
            # As TensorRT: a cache made on another device/version is refused unless ignored.
            if cache.data.startswith(b"other-gpu") and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags: int) -> dict:
            assert flags == 1 << 5  # strongly typed
            return {}

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> dict:
            profile = {}

            def set_shape(name: str, smallest, typical, largest) -> None:
                profile[name] = [list(smallest), list(typical), list(largest)]

            return types.SimpleNamespace(shapes=profile, set_shape=set_shape)

        def build_serialized_network(self, network: dict, config: Config) -> bytes | None:
            log.append(("flags", Path(network["onnx"]).stem, sorted(config.flags)))
            if Path(network["onnx"]).stem in fail_on:
                return None  # as TensorRT when a build fails
            monitor = config.progress_monitor
            monitor.phase_start("Building engine", None, 2)
            assert monitor.step_complete("Building engine", 0) is True
            monitor.phase_finish("Building engine")
            log.append(("built", Path(network["onnx"]).name))
            return json.dumps(config.profiles[0].shapes).encode()

    trt.IProgressMonitor = IProgressMonitor
    trt.OnnxParser = Parser
    trt.Builder = Builder
    return trt


@pytest.fixture
def tensorrt_here(monkeypatch: pytest.MonkeyPatch):
    """Installs a stand-in TensorRT of a given version on a fake "Orin" and returns its call log."""
    log: list = []

    def install(version: str = "10.3.0", fail_on: tuple[str, ...] = ()) -> list:
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, log, fail_on))
        monkeypatch.setattr(engines, "cuda_device", lambda: ("Orin", "8.7"))
        return log

    return install


def test_tensorrt_build_profiles_metadata_and_timing_cache(engine_dir: Path, tensorrt_here, no_export) -> None:
    log = tensorrt_here("10.3.0")
    build = BuildConfig(precision="fp32", profiles=ProfileConfig(max_batch=2, max_beams=3, max_new_tokens=16))
    metadata = prepare(engine_dir, backend="tensorrt", build=build, rebuild_on_mismatch=True)  # ONNX kept
    assert metadata.tensorrt["version"] == "10.3.0" and metadata.tensorrt["device_name"] == "Orin"
    assert [entry for entry in log if entry[0] == "built"] == [
        ("built", f"{name}.onnx") for name in ("vision", "qformer", "t5_encoder", "t5_decoder_step")]
    caches = [entry for entry in log if entry[0] == "timing cache in"]
    assert caches[0] == ("timing cache in", b"") and caches[1] == ("timing cache in", b"timing-cache")
    # fp32 plans are the exact reference: TF32 is switched off for every graph.
    assert all(entry[2] == [] for entry in log if entry[0] == "flags")

    config = json.loads((engine_dir / "config.json").read_text())
    language = config["language"]
    decoder = json.loads(metadata.plan_path(engine_dir, "t5_decoder_step").read_bytes())
    layers, heads, d_kv = language["num_decoder_layers"], language["num_heads"], language["d_kv"]
    assert decoder["self_k"] == [
        [layers, 1, heads, 1, d_kv], [layers, 3, heads, 16, d_kv], [layers, 6, heads, 16, d_kv]]
    assert decoder["token_ids"] == [[1], [3], [6]]
    assert "position" not in decoder  # static shapes need no profile
    encoder = json.loads(metadata.plan_path(engine_dir, "t5_encoder").read_bytes())
    assert encoder["input_ids"] == [[1, 1], [1, 96], [2, 256]]
    assert encoder["aggregator_tokens"][2][0] == 2

    assert prepare(engine_dir, backend="tensorrt", build=build).tensorrt == metadata.tensorrt  # up to date
    tensorrt_here("10.7.0")
    with pytest.raises(EngineMismatchError, match="TensorRT version: engines built for 10.3.0, this machine has 10.7"):
        prepare(engine_dir, backend="tensorrt", build=build)
    rebuilt = prepare(engine_dir, backend="tensorrt", build=build, rebuild_on_mismatch=True)
    assert rebuilt.tensorrt["version"] == "10.7.0"


def test_cli_without_tensorrt_exports_onnx_only(model_dir: Path, tmp_path: Path, caplog, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    out = tmp_path / "engines"
    with caplog.at_level(logging.INFO):
        assert cli.main(["--model", str(model_dir), "--out", str(out)]) == 0
    assert "TensorRT engines will not be built: TensorRT is not installed" in caplog.text
    metadata = EngineMetadata.load(out)
    assert metadata.tensorrt is None and metadata.precision == "fp32"  # auto without TensorRT
    assert cli.main(["--out", str(tmp_path / "nothing")]) == 2  # no export there and no --model


def test_cli_builds_engines_from_an_existing_export(engine_dir: Path, tensorrt_here, no_export, caplog) -> None:
    """The Jetson flow: export on a desktop (--onnx-only), copy, build plans on the target."""
    tensorrt_here("10.3.0")
    with caplog.at_level(logging.INFO):
        assert cli.main(["--out", str(engine_dir), "--precision", "fp32", "--max-new-tokens", "32"]) == 0
    assert "this takes minutes" in caplog.text
    metadata = EngineMetadata.load(engine_dir)
    assert metadata.tensorrt["plans"]["vision"] == "vision.plan"
    assert dataclasses.asdict(ProfileConfig(max_new_tokens=32)) == metadata.profiles


def test_reduced_precision_builds_keep_tf32(model_dir: Path, tmp_path: Path, tensorrt_here) -> None:
    log = tensorrt_here("10.3.0")
    prepare(tmp_path / "engines", backend="tensorrt", model_dir=model_dir, build=BuildConfig(precision="fp16"))
    flags = [entry[2] for entry in log if entry[0] == "flags"]
    assert len(flags) == 4 and all(f == [6] for f in flags)


def test_timing_cache_from_another_gpu_falls_back_to_an_empty_one(
    engine_dir: Path, tensorrt_here, no_export, caplog
) -> None:
    log = tensorrt_here("10.3.0")
    (engine_dir / engines.TENSORRT_DIR).mkdir()
    (engine_dir / engines.TENSORRT_DIR / engines.TIMING_CACHE_NAME).write_bytes(b"other-gpu cache")
    with caplog.at_level(logging.WARNING):
        metadata = prepare(engine_dir, backend="tensorrt", build=FP32, rebuild_on_mismatch=True)
    assert "does not match this GPU/TensorRT; building with an empty one" in caplog.text
    caches = [entry[1] for entry in log if entry[0] == "timing cache in"]
    assert caches[:2] == [b"other-gpu cache", b""]  # refused, then an empty one
    assert len(metadata.tensorrt["plans"]) == 4


def test_failed_in_place_rebuild_leaves_the_old_engines_as_they_were(
    engine_dir: Path, tensorrt_here, no_export
) -> None:
    tensorrt_here("10.3.0")
    old = prepare(engine_dir, backend="tensorrt", build=FP32, rebuild_on_mismatch=True)
    plans = {name: old.plan_path(engine_dir, name).read_bytes() for name in old.tensorrt["plans"]}
    tensorrt_here("10.7.0", fail_on=("t5_encoder",))  # a new TensorRT, and one graph fails to build
    with pytest.raises(RuntimeError, match="TensorRT failed to build t5_encoder"):
        prepare(engine_dir, backend="tensorrt", build=FP32, rebuild_on_mismatch=True)
    kept = EngineMetadata.load(engine_dir)
    assert kept.tensorrt == old.tensorrt  # still the 10.3.0 engines, every plan as it was
    assert {name: kept.plan_path(engine_dir, name).read_bytes() for name in plans} == plans
    assert not [p for p in engine_dir.iterdir() if p.name.startswith(".")]  # no partial folder left

    tensorrt_here("10.7.0")
    rebuilt = prepare(engine_dir, backend="tensorrt", build=FP32, rebuild_on_mismatch=True)
    assert rebuilt.tensorrt["version"] == "10.7.0"


@pytest.mark.parametrize(
    ("version", "ok"), [("10.0.1.6", False), ("10.1.0", True), ("10.3.0.26", True), ("9.2", False)]
)
def test_tensorrt_version_gate(version: str, ok: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """set_device_memory(memory, size) and device_memory_size_v2, which the runtime uses, exist from 10.1."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
    if ok:
        assert engines.import_tensorrt().__version__ == version
    else:
        with pytest.raises(engines.TensorRTUnavailable, match="needs TensorRT 10.1 or newer"):
            engines.import_tensorrt()
