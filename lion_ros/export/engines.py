"""The engine directory: ONNX export + TensorRT plans + the metadata that says what they are for.

    ENGINE_DIR/
      metadata.json                 written last: its presence marks a complete directory
      config.json, tokenizer/, qformer_tokenizer/   copied from the model (runtimes need no weights)
      onnx/<graph>.onnx[.data]      the export (what ONNX Runtime runs and TensorRT builds from)
      tensorrt/<graph>.plan         TensorRT engines, when built
      tensorrt/timing.cache         reused by later builds on the same machine

An engine only works with the TensorRT version, GPU and shapes it was built for, and only means
the model it was exported from. `check` compares the metadata with what is asked for and with
this machine *before* anything is deserialised and returns every difference by name; `prepare`
then either raises `EngineMismatchError` with that list or rebuilds (`rebuild_on_mismatch`).
Rebuilds happen in a scratch directory that replaces the old one only once complete, and a
directory is only ever replaced if it is an engine directory (has metadata.json) or empty.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lion_ros.runtime.backends import ENGINE_BACKENDS

log = logging.getLogger(__name__)

METADATA_NAME = "metadata.json"
ONNX_DIR = "onnx"
TENSORRT_DIR = "tensorrt"
TIMING_CACHE_NAME = "timing.cache"
MIN_TENSORRT = (10, 1)
METADATA_FORMAT = 1
MODEL_FILES = ("config.json",)
WEIGHT_GLOBS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
TOKENIZER_DIRS = ("tokenizer", "qformer_tokenizer")


class EngineMismatchError(ValueError):
    """An engine directory does not fit the request or this machine; `differences` names each item."""

    def __init__(self, engine_dir: Path, differences: list[str], hint: str = "") -> None:
        self.engine_dir = engine_dir
        self.differences = differences
        lines = "\n  ".join(differences)
        super().__init__(f"engines in {engine_dir} cannot be used:\n  {lines}" + (f"\n{hint}" if hint else ""))


class TensorRTUnavailable(ImportError):
    """TensorRT (or a CUDA device it can use) is not present on this machine."""


# ------------------------------------------------------------------------------------------
# Configuration

# Names the node and the PyTorch backend use for precisions: "auto" = the backend's default (or
# what an engine directory holds); "mixed" = the official ViT fp16 + T5 bf16, i.e. the bf16 plan.
PRECISION_ALIASES: dict[str, str | None] = {"auto": None, "mixed": "bf16"}


def engine_precision(name: str | None) -> str | None:
    """An export precision (a key of export.graphs.PRECISIONS) or None for "whatever is default"."""
    from .graphs import precision_plan

    name = PRECISION_ALIASES.get(name, name) if name is not None else None
    return None if name is None else precision_plan(name).name


@dataclass(frozen=True)
class ProfileConfig:
    """Shape ranges the engines accept (TensorRT optimisation profiles: min / opt / max).

    Larger maxima cost activation memory and build time, not speed at the typical (opt) shape.
    """

    max_batch: int = 1  # questions answered together
    max_beams: int = 5  # the reference decodes with 5 beams
    opt_question_tokens: int = 24
    max_question_tokens: int = 128  # the reference's max_txt_len; capped by the Q-Former's positions
    opt_prompt_tokens: int = 96  # tag sentence + question
    max_prompt_tokens: int = 256
    max_new_tokens: int = 64  # decoder self-attention buffer length

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    def axis_ranges(self, config: Any) -> dict[str, tuple[int, int, int]]:
        """min / opt / max of every named dynamic axis of the graphs, for a `LionConfig`."""
        questions = min(self.max_question_tokens, config.qformer.max_position_embeddings)
        prefix = config.num_visual_tokens
        rows = self.max_batch * self.max_beams
        return {
            "image_batch": (1, 1, self.max_batch),
            "batch": (1, 1, self.max_batch),
            "question": (1, min(self.opt_question_tokens, questions), questions),
            "prompt": (1, min(self.opt_prompt_tokens, self.max_prompt_tokens), self.max_prompt_tokens),
            "encoder": (prefix + 1, prefix + min(self.opt_prompt_tokens, self.max_prompt_tokens),
                        prefix + self.max_prompt_tokens),
            "rows": (1, min(self.max_beams, rows), rows),
            "steps": (1, self.max_new_tokens, self.max_new_tokens),
        }


@dataclass(frozen=True)
class BuildConfig:
    """What to build: the export precision, the shapes, and TensorRT builder settings."""

    precision: str = "bf16"  # a key of export.graphs.PRECISIONS
    profiles: ProfileConfig = field(default_factory=ProfileConfig)
    workspace_gib: float = 4.0  # TensorRT tactic scratch limit
    opset: int = 17
    decoder_weights: str = "float"  # export.onnx.DECODER_WEIGHTS: "int8" = weight-only INT8 decoder step


# ------------------------------------------------------------------------------------------
# Source fingerprint: sha256 of the model files, with a (size, mtime) cache so that checking an
# 8 GB checkpoint at every start does not re-read it.


def model_files(model_dir: Path) -> list[Path]:
    files = [model_dir / name for name in MODEL_FILES if (model_dir / name).is_file()]
    for pattern in WEIGHT_GLOBS:
        files += sorted(model_dir.glob(pattern))
    for sub in TOKENIZER_DIRS:
        files += sorted(p for p in (model_dir / sub).rglob("*") if p.is_file())
    return files


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(16 * 1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_fingerprint(model_dir: Path, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"sha256": over all files, "files": {relative path: {size, mtime_ns, sha256}}}.

    A file whose size and mtime equal those in `known` (an earlier fingerprint) is not re-read.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a LION model directory (no config.json)")
    known_files = (known or {}).get("files", {})
    files, total = {}, hashlib.sha256()
    for path in model_files(model_dir):
        rel = path.relative_to(model_dir).as_posix()
        stat = path.stat()
        entry = known_files.get(rel, {})
        if entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            sha = entry["sha256"]
        else:
            (log.info if stat.st_size > 2**26 else log.debug)("hashing %s", path)
            sha = _sha256_file(path)
        files[rel] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
        total.update(f"{rel}\0{sha}\n".encode())
    return {"sha256": total.hexdigest(), "files": files}


# ------------------------------------------------------------------------------------------
# Metadata


@dataclass(frozen=True)
class TensorRTEnvironment:
    """What a TensorRT plan is tied to."""

    version: str
    device_name: str
    compute_capability: str  # "8.7"

    @classmethod
    def detect(cls) -> TensorRTEnvironment:
        trt = import_tensorrt()
        name, capability = cuda_device()
        return cls(version=trt.__version__, device_name=name, compute_capability=capability)


@dataclass
class EngineMetadata:
    format: int
    export_code: str
    precision: str
    opset: int
    model_name: str
    source_dir: str  # where the model was when exported: used for rebuilds if it is still there
    source: dict[str, Any]  # source_fingerprint
    graphs: dict[str, dict[str, Any]]  # export.onnx.GraphSpec.to_dict() by graph name
    profiles: dict[str, int]  # ProfileConfig fields
    decoder_weights: str = "float"  # directories exported before the option have float weights
    tensorrt: dict[str, Any] | None = None  # TensorRTEnvironment fields + "plans": {graph: file}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def load(cls, engine_dir: Path) -> EngineMetadata:
        path = Path(engine_dir) / METADATA_NAME
        try:
            data = json.loads(path.read_text())
            known = {f.name for f in dataclasses.fields(cls)}
            metadata = cls(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError) as exc:
            raise EngineMismatchError(Path(engine_dir), [f"{METADATA_NAME}: unreadable ({exc})"]) from exc
        names = [graph.get("file") for graph in metadata.graphs.values()]
        names += list((metadata.tensorrt or {}).get("plans", {}).values())
        for name in names:  # plain file names inside their folder, nothing else
            if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
                raise EngineMismatchError(Path(engine_dir), [f"{METADATA_NAME}: unsafe file path {name!r}"])
        for rel in metadata.files():
            safe_path(Path(engine_dir), rel)
        return metadata

    def files(self) -> list[str]:
        """Every file the metadata points at, relative to the engine directory."""
        files = [f"{ONNX_DIR}/{graph['file']}" for graph in self.graphs.values()]
        if self.tensorrt:
            files += [f"{TENSORRT_DIR}/{plan}" for plan in self.tensorrt.get("plans", {}).values()]
        return files

    def onnx_path(self, engine_dir: Path, graph: str) -> Path:
        return safe_path(engine_dir, f"{ONNX_DIR}/{self.graphs[graph]['file']}")

    def plan_path(self, engine_dir: Path, graph: str) -> Path:
        if not self.tensorrt:
            raise EngineMismatchError(engine_dir, ["tensorrt: no engines built in this directory"])
        return safe_path(engine_dir, f"{TENSORRT_DIR}/{self.tensorrt['plans'][graph]}")


def safe_path(root: Path, rel: str) -> Path:
    """root/rel, refusing anything that would leave root (absolute paths, .., symlinks out)."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise EngineMismatchError(root, [f"{METADATA_NAME}: unsafe file path {rel!r}"])
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise EngineMismatchError(root, [f"{METADATA_NAME}: {rel!r} resolves outside the engine directory"])
    return path


def check(
    metadata: EngineMetadata,
    engine_dir: Path,
    *,
    backend: str,
    precision: str | None,
    decoder_weights: str | None,
    profiles: ProfileConfig | None,
    source: dict[str, Any] | None,
    tensorrt: TensorRTEnvironment | None,
) -> tuple[list[str], list[str]]:
    """(export differences, TensorRT differences) between an engine directory and a request.

    None means "not asked": a precision, decoder weights or profile the caller does not care
    about, a source the caller cannot see (engines shipped without the model). Export differences
    invalidate everything; TensorRT differences only the plans.
    """
    from .onnx import export_code_version

    export: list[str] = []
    if metadata.format != METADATA_FORMAT:
        export.append(f"metadata format: directory has {metadata.format}, this code reads {METADATA_FORMAT}")
    if metadata.export_code != export_code_version():
        export.append(f"export code: graphs exported by {metadata.export_code}, this code is {export_code_version()}")
    if precision is not None and metadata.precision != precision:
        export.append(f"precision: exported as {metadata.precision}, asked for {precision}")
    if decoder_weights is not None and metadata.decoder_weights != decoder_weights:
        export.append(f"decoder_weights: exported as {metadata.decoder_weights}, asked for {decoder_weights}")
    if source is not None and metadata.source.get("sha256") != source["sha256"]:
        changed = sorted(
            rel for rel in set(source["files"]) | set(metadata.source.get("files", {}))
            if source["files"].get(rel, {}).get("sha256") != metadata.source.get("files", {}).get(rel, {}).get("sha256")
        )
        export.append(f"source weights: sha256 {metadata.source.get('sha256', '?')[:12]} at export, "
                      f"{source['sha256'][:12]} now (changed: {', '.join(changed)})")
    missing = [rel for rel in metadata.files() if not (engine_dir / rel).is_file()]
    export += [f"missing file: {rel}" for rel in missing if rel.startswith(ONNX_DIR)]

    engines: list[str] = []
    if backend == "tensorrt":
        built = metadata.tensorrt
        if not built:
            engines.append("tensorrt: no engines built in this directory (ONNX export only)")
        else:
            if tensorrt is not None:
                for key, label in (("version", "TensorRT version"), ("device_name", "GPU"),
                                   ("compute_capability", "compute capability")):
                    if built.get(key) != getattr(tensorrt, key):
                        engines.append(f"{label}: engines built for {built.get(key)}, this machine has "
                                       f"{getattr(tensorrt, key)}")
            if profiles is not None and metadata.profiles != dataclasses.asdict(profiles):
                engines.append(f"profiles: built for {metadata.profiles}, asked for {dataclasses.asdict(profiles)}")
            engines += [f"missing file: {rel}" for rel in missing if rel.startswith(TENSORRT_DIR)]
    return export, engines


# ------------------------------------------------------------------------------------------
# Building


def prepare(
    engine_dir: str | Path,
    *,
    backend: str,
    model_dir: str | Path | None = None,
    build: BuildConfig | None = None,
    rebuild_on_mismatch: bool = False,
    force: bool = False,
) -> EngineMetadata:
    """An up-to-date engine directory for `backend`, building what is missing when allowed.

    `build` None takes the directory as it is (precision, decoder weights and profiles not
    checked). A missing directory is always built (that is not a mismatch); a mismatching one only
    with `rebuild_on_mismatch`. `model_dir` defaults to the source recorded in the metadata.
    """
    if backend not in ENGINE_BACKENDS:
        raise ValueError(f"backend must be one of {ENGINE_BACKENDS}, got {backend!r}")
    engine_dir = Path(engine_dir)
    environment = TensorRTEnvironment.detect() if backend == "tensorrt" else None
    metadata = EngineMetadata.load(engine_dir) if (engine_dir / METADATA_NAME).exists() else None
    if model_dir is None and metadata is not None and Path(metadata.source_dir).is_dir():
        model_dir = metadata.source_dir
    source = None
    if model_dir is not None:
        source = source_fingerprint(Path(model_dir), metadata.source if metadata else None)

    if metadata is not None and not force:
        export_diff, engine_diff = check(
            metadata, engine_dir, backend=backend, precision=build.precision if build else None,
            decoder_weights=build.decoder_weights if build else None,
            profiles=build.profiles if build else None, source=source, tensorrt=environment,
        )
        if not export_diff and not engine_diff:
            return metadata
        if not rebuild_on_mismatch:
            raise EngineMismatchError(
                engine_dir, export_diff + engine_diff,
                "rebuild with `lion-build-engines`, or allow it at load time (rebuild_on_mismatch)",
            )
        log.warning("engines in %s are stale, rebuilding: %s", engine_dir, "; ".join(export_diff + engine_diff))
        if not export_diff:
            return _build_tensorrt_in_place(engine_dir, metadata, build or build_config_of(metadata), environment)
    if model_dir is None:
        if force and metadata is not None and backend == "tensorrt":
            return _build_tensorrt_in_place(engine_dir, metadata, build or build_config_of(metadata), environment)
        raise EngineMismatchError(engine_dir, ["no model directory to export from (pass model_dir)"])
    build = build or (build_config_of(metadata) if metadata else BuildConfig())
    return _build_all(Path(model_dir), engine_dir, build, backend, source, environment)


def build_config_of(metadata: EngineMetadata) -> BuildConfig:
    """The build settings an engine directory was made with (workspace size is not recorded)."""
    return BuildConfig(precision=metadata.precision, profiles=ProfileConfig(**metadata.profiles), opset=metadata.opset,
                       decoder_weights=metadata.decoder_weights)


def _build_all(
    model_dir: Path,
    engine_dir: Path,
    build: BuildConfig,
    backend: str,
    source: dict[str, Any],
    environment: TensorRTEnvironment | None,
) -> EngineMetadata:
    from lion_ros.model.lion import LionModel

    from .onnx import ExportConfig, export_code_version, export_onnx

    _check_replaceable(engine_dir)
    scratch = engine_dir.with_name(f".{engine_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        log.info("loading %s for export", model_dir)
        # fp32 source weights: each precision plan then casts from full precision.
        model = LionModel.from_pretrained(model_dir, dtype="fp32")
        specs = export_onnx(model, scratch / ONNX_DIR, ExportConfig(
            precision=build.precision, opset=build.opset, decoder_weights=build.decoder_weights))
        del model
        for name in MODEL_FILES:
            shutil.copy2(model_dir / name, scratch / name)
        for sub in TOKENIZER_DIRS:
            if (model_dir / sub).is_dir():
                shutil.copytree(model_dir / sub, scratch / sub)
        metadata = EngineMetadata(
            format=METADATA_FORMAT,
            export_code=export_code_version(),
            precision=build.precision,
            opset=build.opset,
            model_name=json.loads((model_dir / "config.json").read_text()).get("name", model_dir.name),
            source_dir=str(model_dir.resolve()),
            source=source,
            graphs={name: spec.to_dict() for name, spec in specs.items()},
            profiles=dataclasses.asdict(build.profiles),
            decoder_weights=build.decoder_weights,
        )
        if backend == "tensorrt":
            metadata.tensorrt = build_tensorrt(scratch, metadata, build, environment)
        _write_metadata(scratch, metadata)
        _swap_in(scratch, engine_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("engine directory ready: %s", engine_dir)
    return metadata


def _build_tensorrt_in_place(
    engine_dir: Path, metadata: EngineMetadata, build: BuildConfig, environment: TensorRTEnvironment
) -> EngineMetadata:
    metadata = dataclasses.replace(metadata, profiles=dataclasses.asdict(build.profiles), tensorrt=None)
    plans_dir = engine_dir / TENSORRT_DIR
    partial = engine_dir / f".{TENSORRT_DIR}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    if (plans_dir / TIMING_CACHE_NAME).is_file():
        shutil.copy2(plans_dir / TIMING_CACHE_NAME, partial / TIMING_CACHE_NAME)
    try:
        tensorrt = build_tensorrt(engine_dir, metadata, build, environment, out=partial)
        # A failed build above leaves the old plans and metadata untouched. Here the metadata
        # first drops the old plans, then the new ones move in: an interruption in between leaves
        # a valid ONNX-only directory, never plans that the metadata does not describe.
        _write_metadata(engine_dir, metadata)
        _swap_in(partial, plans_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    metadata.tensorrt = tensorrt
    _write_metadata(engine_dir, metadata)
    return metadata


def _check_replaceable(engine_dir: Path) -> None:
    if engine_dir.exists() and not (engine_dir / METADATA_NAME).is_file() and any(engine_dir.iterdir()):
        raise FileExistsError(
            f"refusing to replace {engine_dir}: it is not empty and holds no {METADATA_NAME} (not an engine directory)"
        )


def _swap_in(scratch: Path, engine_dir: Path) -> None:
    old = engine_dir.with_name(f".{engine_dir.name}.old-{os.getpid()}")
    if engine_dir.exists():
        engine_dir.rename(old)
    scratch.rename(engine_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_metadata(directory: Path, metadata: EngineMetadata) -> None:
    tmp = directory / f".{METADATA_NAME}.{os.getpid()}"
    tmp.write_text(metadata.to_json())
    os.replace(tmp, directory / METADATA_NAME)


# ------------------------------------------------------------------------------------------
# TensorRT (imported lazily: an optional, detected dependency)


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed for this Python. Desktop: NVIDIA's `tensorrt` wheels from "
            "pypi.nvidia.com or an NGC container; Jetson: JetPack's python3-libnvinfer, with the venv "
            "created with --system-site-packages (see docs/deployment.md)."
        ) from exc
    # device_memory_size_v2 and set_device_memory(memory, size), which the runtime uses, exist
    # from TensorRT 10.1 on.
    if tensorrt_version(trt.__version__) < MIN_TENSORRT:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} found; lion_ros needs TensorRT "
                                  f"{'.'.join(map(str, MIN_TENSORRT))} or newer")
    return trt


def tensorrt_version(text: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string such as "10.3.0.26"."""
    major, minor = [*text.split("."), "0"][:2]
    return int(major), int(minor)


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
        cuda_device()
    except (TensorRTUnavailable, RuntimeError):
        return False
    return True


def cuda_device() -> tuple[str, str]:
    """(name, "major.minor") of the current CUDA device, from torch or else pycuda."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            return props.name, f"{props.major}.{props.minor}"
    except ImportError:
        pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        device = cuda.Device(0)
        return device.name(), "{}.{}".format(*device.compute_capability())
    except ImportError:
        pass
    except Exception as exc:  # pycuda raises its own LogicError/RuntimeError family
        raise RuntimeError(f"no usable CUDA device: {exc}") from exc
    raise RuntimeError("no CUDA device visible (neither a CUDA build of torch nor pycuda found one)")


def tensorrt_profile(spec: dict[str, Any], ranges: dict[str, tuple[int, int, int]]) -> dict[str, list[list[int]]]:
    """min / opt / max shapes of each dynamic input of one graph spec."""
    profile = {}
    for name, tensor in spec["inputs"].items():
        shape = tensor["shape"]
        if any(isinstance(dim, str) for dim in shape):
            profile[name] = [[ranges[dim][k] if isinstance(dim, str) else dim for dim in shape] for k in range(3)]
    return profile


def build_tensorrt(
    engine_dir: Path,
    metadata: EngineMetadata,
    build: BuildConfig,
    environment: TensorRTEnvironment,
    out: Path | None = None,
) -> dict[str, Any]:
    """Build one plan per graph from engine_dir/onnx into `out` (default engine_dir/tensorrt);
    returns metadata.tensorrt.

    Strongly typed networks: the precision is the one written in the ONNX (Cast nodes), which is
    also the only way TensorRT 11 accepts mixed precision. A timing cache in the directory makes
    rebuilds on the same machine much faster.
    """
    from lion_ros.model.config import LionConfig

    trt = import_tensorrt()
    config = LionConfig.load(engine_dir / "config.json")
    ranges = build.profiles.axis_ranges(config)
    out = out or engine_dir / TENSORRT_DIR
    out.mkdir(exist_ok=True)
    cache_path = out / TIMING_CACHE_NAME
    logger = trt.Logger(trt.Logger.WARNING)
    plans = {}
    for name, spec in metadata.graphs.items():
        plan = out / f"{name}.plan"
        started = time.perf_counter()
        log.info("building TensorRT engine %s (%s, %s), this takes minutes", name, metadata.precision,
                 environment.device_name)
        serialized = _build_plan(trt, logger, metadata.onnx_path(engine_dir, name),
                                 tensorrt_profile(spec, ranges), build, cache_path, name)
        tmp = plan.with_suffix(f".plan.{os.getpid()}")
        tmp.write_bytes(serialized)
        os.replace(tmp, plan)
        plans[name] = plan.name
        log.info("built %s in %.0f s (%.1f MiB)", name, time.perf_counter() - started, plan.stat().st_size / 2**20)
    return {**dataclasses.asdict(environment), "plans": plans}


def _build_plan(trt: Any, logger: Any, onnx_path: Path, profile_shapes: dict[str, list[list[int]]],
                build: BuildConfig, cache_path: Path, name: str) -> bytes:
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external weights next to the file
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build.workspace_gib * 2**30))
    profile = builder.create_optimization_profile()
    for tensor, (smallest, typical, largest) in profile_shapes.items():
        profile.set_shape(tensor, smallest, typical, largest)
    builder_config.add_optimization_profile(profile)
    if build.precision == "fp32":
        # fp32 plans are the exact-ids reference: no TF32 (TensorRT's default for float math).
        builder_config.clear_flag(trt.BuilderFlag.TF32)
    cached = cache_path.read_bytes() if cache_path.is_file() else b""
    if not builder_config.set_timing_cache(builder_config.create_timing_cache(cached), ignore_mismatch=False):
        # A cache from another GPU or TensorRT version: start from an empty one instead of failing.
        log.warning("%s: the timing cache %s does not match this GPU/TensorRT; building with an empty one",
                    name, cache_path)
        builder_config.set_timing_cache(builder_config.create_timing_cache(b""), ignore_mismatch=False)
    monitor = _progress_monitor(trt, name)
    builder_config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {name} (see the TensorRT log above)")
    tmp = cache_path.with_suffix(f".cache.{os.getpid()}")
    tmp.write_bytes(memoryview(builder_config.get_timing_cache().serialize()))
    os.replace(tmp, cache_path)
    return bytes(memoryview(serialized))


def _progress_monitor(trt: Any, name: str) -> Any:
    """Logs the builder's top-level phases with step counts, at most every 10 s per phase."""

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            self.last = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            if parent_phase is None:
                log.info("%s: %s (%d steps)", name, phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            if now - self.last > 10.0:
                self.last = now
                log.info("%s: %s %d/%d", name, phase_name, step + 1, self.steps.get(phase_name, 0))
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            self.steps.pop(phase_name, None)

    return Progress()


# ------------------------------------------------------------------------------------------
# Where runtimes keep engines they build for a model directory


def default_engine_dir(model_dir: str | Path, backend: str, precision: str) -> Path:
    """$LION_ENGINE_CACHE (default ~/.cache/lion_ros/engines)/<model>-<backend>-<precision>-<path hash>."""
    model_dir = Path(model_dir).resolve()
    root = Path(os.environ.get("LION_ENGINE_CACHE", Path.home() / ".cache" / "lion_ros" / "engines"))
    tag = hashlib.sha256(str(model_dir).encode()).hexdigest()[:10]
    return root / f"{model_dir.name}-{backend}-{precision}-{tag}"


def is_engine_dir(path: str | Path) -> bool:
    return (Path(path) / METADATA_NAME).is_file()
