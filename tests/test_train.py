"""Training pipeline on lion-tiny: loss goes down, exact resume, freeze policies, the stage-3
hand-over and a 2-process gloo DDP run. Each test runs a handful of steps on CPU."""
from __future__ import annotations

import csv
import dataclasses
import faulthandler
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import save_file

from lion_ros.api import TaskKind
from lion_ros.model import LionConfig, LionModel, parameter_group
from lion_ros.tokenization import LionTokenizers
from lion_ros.train import TRAINABLE_GROUPS, TrainConfig, apply_freeze_policy, handover, train
from lion_ros.train.config import OptimSection, TokenizerTraining
from lion_ros.train.stages import STAGE0_OVERLAY_GROUPS, load_matching, stage0_overlay
from lion_ros.train.trainer import LRSchedule

STAGE_MODES = {"stage1": "qformer", "stage2": "aggregator"}


def tiny_config(tokenizer_dir: Path, out: Path, **sections: dict) -> TrainConfig:
    data = {
        "stage": "stage0",
        "model": {"preset": "lion-tiny", "tokenizer_dir": str(tokenizer_dir)},
        "data": {"num_scenes": 64, "images_per_batch": 2, "questions_per_image": 2},
        "optim": {"lr": 3e-3, "warmup_steps": 1, "steps": 4},
        "run": {"output_dir": str(out), "log_every": 1, "checkpoint_every": 1000, "threads": 1},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
    return TrainConfig.from_dict(data)


def logged_column(out: Path, name: str) -> dict[int, float]:
    with (out / "log.csv").open() as f:
        return {int(row["step"]): float(row[name]) for row in csv.DictReader(f)}


def logged_losses(out: Path) -> dict[int, float]:
    return logged_column(out, "loss")


def tensors(model: LionModel) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.checkpoint_tensors().items()}


def test_a_few_steps_reduce_the_loss(tokenizer_dir: Path, tmp_path: Path) -> None:
    train(tiny_config(tokenizer_dir, tmp_path, optim={"steps": 12}))
    losses = list(logged_losses(tmp_path).values())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert LionTokenizers.load(tmp_path / "model").tag_token_id == LionModel.from_pretrained(
        tmp_path / "model").config.language.soft_prompt_token_id


def test_resume_reproduces_the_next_step_loss(tokenizer_dir: Path, tmp_path: Path) -> None:
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run = {"checkpoint_every": 2, "keep_checkpoints": 5}
    train(tiny_config(tokenizer_dir, full, run=run))
    checkpoint = full / "checkpoints" / "step-0000002"
    assert (checkpoint / "DONE").exists()
    train(tiny_config(tokenizer_dir, resumed, run={**run, "resume": str(checkpoint)}))
    expected, got = logged_losses(full), logged_losses(resumed)
    assert sorted(got) == [3, 4]
    for step in (3, 4):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-6)
    # The stage's wall time travels too: run.max_minutes and optim.schedule time count it.
    before = torch.load(checkpoint / "trainer_state.pt", weights_only=True)["seconds"]
    assert before > 0
    assert logged_column(resumed, "elapsed_s")[3] > before


def test_lr_schedule_warms_up_then_decays_by_steps_or_by_time() -> None:
    optim = OptimSection(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, steps=110)
    by_steps = LRSchedule(optim, max_minutes=1.0)
    assert [by_steps.lr(s, 0.0) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert by_steps.lr(60, 0.0) == pytest.approx(0.55)  # half way: min + (1 - min) / 2
    assert by_steps.lr(110, 0.0) == pytest.approx(0.1)
    assert by_steps.lr(60, 1e6) == by_steps.lr(60, 0.0)  # a step schedule ignores the clock
    by_time = LRSchedule(dataclasses.replace(optim, schedule="time"), max_minutes=1.0)
    assert by_time.lr(5, 59.0) == pytest.approx(0.6)  # warm-up is in steps
    assert by_time.lr(20, 30.0) == pytest.approx(0.55)  # time is ahead of steps (10 %): time rules
    assert by_time.lr(100, 6.0) == pytest.approx(by_steps.lr(100, 0.0))  # steps ahead: steps rule
    assert by_time.lr(20, 60.0) == pytest.approx(0.1)


def test_overrides_read_exponent_numbers_as_numbers(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-3 as a string; the optimizer then failed deep inside torch.
    path = tmp_path / "stage.yaml"
    path.write_text("stage: stage0\noptim: {lr: 5e-4}\n")
    config = TrainConfig.load(path, ["optim.lr=1e-3", "run.max_minutes=2e1", "optim.min_lr_ratio=0.1"])
    assert config.optim.lr == 1e-3 and isinstance(config.optim.lr, float)
    assert config.run.max_minutes == 20.0 and config.optim.min_lr_ratio == 0.1
    assert TrainConfig.load(path).optim.lr == 5e-4
    with pytest.raises(ValueError, match="OptimSection.lr must be a number, got 'fast'"):
        TrainConfig.load(path, ["optim.lr=fast"])


def test_an_optional_section_is_built_as_its_dataclass() -> None:
    # `model.train_tokenizer` is annotated "TokenizerTraining | None": the reader must see the
    # section through the "| None" (the shipped nano-stage0.yaml sets it).
    config = TrainConfig.from_dict({"model": {"train_tokenizer": {"t5_vocab_size": 300}}})
    assert config.model.train_tokenizer == TokenizerTraining(t5_vocab_size=300)
    assert TrainConfig.from_dict({}).model.train_tokenizer is None
    with pytest.raises(ValueError, match="unknown TokenizerTraining keys"):
        TrainConfig.from_dict({"model": {"train_tokenizer": {"vocab_size": 300}}})


def test_a_config_extends_its_base_section_by_section(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "stage: stage0\n"
        "data:\n  synthetic: {tasks: {caption: 1, spatial: 4, rec: 4}}\n  images_per_batch: 16\n"
        "optim: {lr: 1e-4, steps: 100}\nrun: {seed: 0, output_dir: runs/base}\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "next.yaml").write_text(
        "extends: ../base.yaml\ndata: {synthetic: {tasks: {rec: 6, caption: 0}}}\nrun: {seed: 3}\n")
    config = TrainConfig.load(tmp_path / "runs" / "next.yaml", ["optim.steps=7"])
    assert config.data.synthetic.tasks.rec == 6 and config.data.synthetic.tasks.spatial == 4
    assert config.data.synthetic.tasks.caption == 0  # a 0 drops a task the base trains
    assert config.data.images_per_batch == 16 and config.optim.lr == 1e-4 and config.optim.steps == 7
    assert (config.run.seed, config.run.output_dir) == (3, "runs/base")

    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="makes a cycle: a.yaml -> b.yaml -> a.yaml"):
        TrainConfig.load(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match="gone.yaml does not exist \\(extended by .*orphan.yaml\\)"):
        TrainConfig.load(tmp_path / "orphan.yaml")
    (tmp_path / "listed.yaml").write_text("extends: [base.yaml]\n")
    with pytest.raises(ValueError, match="extends must be a file name"):
        TrainConfig.load(tmp_path / "listed.yaml")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA training path needs a GPU")
def test_stage0_trains_on_cuda_with_bf16_and_dense_supervision(tokenizer_dir: Path, tmp_path: Path) -> None:
    # The dense probe is made after the model moves to the device; it once stayed on the CPU.
    train(tiny_config(tokenizer_dir, tmp_path, optim={"steps": 12}, data={"dense_supervision": 1.0},
                      run={"device": "cuda", "bf16": True}))
    losses = list(logged_losses(tmp_path).values())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    assert min(logged_column(tmp_path, "loss_dense").values()) > 0


def test_question_average_weighs_every_question_the_same() -> None:
    from lion_ros.train.trainer import answer_loss

    token_loss = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])  # "yes" (1 token) vs a 4-token box
    mask = torch.tensor([[True, False, False, False], [True, True, True, True]])
    assert float(answer_loss(token_loss, mask, "token")) == pytest.approx(9 / 5)
    assert float(answer_loss(token_loss, mask, "question")) == pytest.approx((1 + 2) / 2)
    with pytest.raises(ValueError, match="loss_average"):
        TrainConfig.from_dict({"stage": "stage0", "model": {"preset": "lion-tiny", "tokenizer_dir": "t"},
                               "optim": {"loss_average": "sample"}})


def test_time_schedule_stops_at_the_cap_with_a_decaying_rate(tokenizer_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tokenizer_dir, tmp_path, optim={"steps": 100_000, "schedule": "time"},
                         run={"max_minutes": 0.1})
    result = train(config)
    lrs = logged_column(tmp_path, "lr")
    assert 2 <= result.step < 100_000
    assert list(lrs.values()) == sorted(lrs.values(), reverse=True)  # warm-up is 1 step
    assert lrs[result.step] < 0.9 * config.optim.lr
    with pytest.raises(ValueError, match="max_minutes"):
        tiny_config(tokenizer_dir, tmp_path, optim={"schedule": "time"})
    with pytest.raises(ValueError, match="optim.schedule"):
        tiny_config(tokenizer_dir, tmp_path, optim={"schedule": "linear"})


def test_dense_supervision_learns_and_resumes_exactly(tokenizer_dir: Path, tmp_path: Path) -> None:
    """The per-patch probe loss falls, and its weights travel with checkpoints (exact resume)."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    data = {"dense_supervision": 1.0, "dense_targets": ["object", "box", "depth", "count"]}
    run = {"checkpoint_every": 4, "keep_checkpoints": 5}
    train(tiny_config(tokenizer_dir, full, data=data, run=run, optim={"steps": 8}))
    with (full / "log.csv").open() as f:
        dense = [float(row["loss_dense"]) for row in csv.DictReader(f)]
    assert dense[0] > 0 and sum(dense[-2:]) / 2 < sum(dense[:2]) / 2
    checkpoint = full / "checkpoints" / "step-0000004"
    train(tiny_config(tokenizer_dir, resumed, data=data, run={**run, "resume": str(checkpoint)}, optim={"steps": 8}))
    expected, got = logged_losses(full), logged_losses(resumed)
    for step in (5, 8):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-6)
    with pytest.raises(ValueError, match="dense_supervision"):
        train(tiny_config(tokenizer_dir, tmp_path / "mismatch", run={**run, "resume": str(checkpoint)}))
    with pytest.raises(ValueError, match="dense_targets"):
        train(tiny_config(tokenizer_dir, tmp_path / "mismatch", data={**data, "dense_targets": ["object"]},
                          run={**run, "resume": str(checkpoint)}))
    with pytest.raises(ValueError, match="stage0"):
        tiny_config(tokenizer_dir, tmp_path, stage="stage1", data=data)
    with pytest.raises(ValueError, match="dense targets"):
        tiny_config(tokenizer_dir, tmp_path, data={**data, "dense_targets": ["object", "shape"]})


@pytest.fixture(scope="module")
def stage0_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stage0")
    train(tiny_config(tokenizer_dir, out, optim={"steps": 1}))
    return out / "model"


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_stage_trains_exactly_its_parameter_groups(stage: str, tokenizer_dir: Path, stage0_dir: Path,
                                                   tmp_path: Path) -> None:
    before = LionModel(
        dataclasses.replace(LionConfig.load(stage0_dir / "config.json"), visual_input=STAGE_MODES[stage])
    )
    load_matching(before, stage0_dir, skip_groups=["adapters", "router"])
    initial = tensors(before)
    init = {"kind": "pretrained", "path": str(stage0_dir), "skip_groups": ["adapters", "router"]}
    result = train(tiny_config(tokenizer_dir, tmp_path, stage=stage, optim={"steps": 3}, init=init))
    assert result.model.config.visual_input == STAGE_MODES[stage]
    changed: set[str] = set()
    for name, tensor in tensors(result.model).items():
        group = parameter_group(name)
        same = torch.equal(tensor, initial[name])
        if group in TRAINABLE_GROUPS[stage]:
            if not same:
                changed.add(group)
        else:
            # Frozen: bit-identical to the stage-0 weights (ViT, T5, soft prompt).
            assert same, f"{stage} changed frozen {name}"
    present = {parameter_group(n) for n in initial}
    assert changed == TRAINABLE_GROUPS[stage] & present


def test_freeze_policy_groups() -> None:
    model = LionModel(LionConfig.preset("lion-tiny"))
    for stage, groups in TRAINABLE_GROUPS.items():
        apply_freeze_policy(model, stage)
        trainable = {parameter_group(n) for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == groups
    assert "vit" not in TRAINABLE_GROUPS["stage3"] and "t5" not in TRAINABLE_GROUPS["stage3"]


def _stage_models(tmp_path: Path) -> tuple[LionModel, LionModel, Path, Path]:
    """Stage-1 and stage-2 tiny models sharing ViT/T5/soft prompt, with non-zero adapters."""
    base = LionConfig.preset("lion-tiny")
    torch.manual_seed(0)
    image = LionModel(dataclasses.replace(base, visual_input="qformer"))
    region = LionModel(dataclasses.replace(base, visual_input="aggregator"))
    shared = {n: t for n, t in image.checkpoint_tensors().items() if parameter_group(n) in ("vit", "t5", "soft_prompt")}
    with torch.no_grad():
        for name, tensor in region.checkpoint_tensors().items():
            if name in shared:
                tensor.copy_(shared[name])
        for model in (image, region):
            for name, tensor in model.checkpoint_tensors().items():
                if parameter_group(name) == "adapters":
                    tensor.normal_(std=0.1)
    image_dir, region_dir = tmp_path / "stage1", tmp_path / "stage2"
    image.save_pretrained(image_dir)
    region.save_pretrained(region_dir)
    return image, region, image_dir, region_dir


def test_handover_places_adapters_gates_and_branches(tmp_path: Path) -> None:
    image, region, image_dir, region_dir = _stage_models(tmp_path)
    model = handover(image_dir, region_dir)
    assert model.config.visual_input == "all" and model.config.num_adapters == 2
    got, img, reg = model.checkpoint_tensors(), image.checkpoint_tensors(), region.checkpoint_tensors()
    for name, tensor in got.items():
        group = parameter_group(name)
        if ".adapter.adapters.0." in name:
            assert torch.equal(tensor, reg[name]), name  # region adapter (router row 0) from stage 2
        elif ".adapter.adapters.1." in name:
            assert torch.equal(tensor, img[name.replace(".adapters.1.", ".adapters.0.")]), name
        elif group == "router":
            row = 0 if name.endswith("router_ratio1") else 1  # gate k is one-hot on task row k
            expected = torch.zeros_like(tensor)
            expected[row] = 1
            assert torch.equal(tensor, expected), name
        elif group == "aggregator":
            assert torch.equal(tensor, reg[name]), name
        else:  # ViT, ln_vision, Q-Former branch, T5, soft prompt
            assert torch.equal(tensor, img[name]), name

    # Region routing uses only the stage-2 adapter, image routing only the stage-1 adapter.
    hidden = torch.randn(3, 5, model.config.language.d_model)
    for kind, source in ((TaskKind.REGION, region), (TaskKind.IMAGE, image)):
        for (name, mixture), (_, single) in zip(_mixtures(model), _mixtures(source)):
            with model.route(torch.full((3,), int(kind))):
                assert torch.allclose(mixture(hidden), single(hidden), atol=1e-6), name
    # Per sample: a batch mixing both kinds routes each row on its own.
    (_, mixture), (_, reg_single), (_, img_single) = _mixtures(model)[0], _mixtures(region)[0], _mixtures(image)[0]
    with model.route(torch.tensor([0, 1, 0])):
        out = mixture(hidden)
    assert torch.allclose(out[0], reg_single(hidden)[0], atol=1e-6)
    assert torch.allclose(out[1], img_single(hidden)[1], atol=1e-6)


def _mixtures(model: LionModel) -> list[tuple[str, torch.nn.Module]]:
    from lion_ros.model.adapters import MixtureOfAdapters

    return [(n, m) for n, m in model.named_modules() if isinstance(m, MixtureOfAdapters)]


def test_handover_rejects_different_frozen_weights(tmp_path: Path) -> None:
    _image, region, image_dir, region_dir = _stage_models(tmp_path)
    with torch.no_grad():
        region.language_model.shared.weight.add_(1.0)
    region.save_pretrained(region_dir)
    with pytest.raises(ValueError, match="identical"):
        handover(image_dir, region_dir)


DDP_DEADLINE_S = 300


def _ddp_worker(rank: int, world_size: int, port: int, config: TrainConfig, out: str) -> None:
    # gloo otherwise binds to whatever the hostname resolves to; in a sandbox that address may
    # accept the bind but drop connections, and both ranks wait on each other until the timeout.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks a hung rank where it is
    result = train(config)
    torch.save(tensors(result.model), Path(out) / f"params-rank{rank}.pt")


def test_two_process_gloo_ddp_ends_with_identical_parameters(tokenizer_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tiny_config(tokenizer_dir, tmp_path, optim={"steps": 2}, data={"num_scenes": 32},
                         run={"dist_timeout_minutes": 2.0})
    ranks = mp.start_processes(_ddp_worker, args=(2, port, config, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + DDP_DEADLINE_S
    while not ranks.join(timeout=max(0.0, deadline - time.monotonic())):  # raises if a rank failed
        if time.monotonic() >= deadline:
            alive = [p for p in ranks.processes if p.is_alive()]
            for p in alive:
                os.kill(p.pid, signal.SIGUSR1)
            time.sleep(2)
            for p in alive:
                p.kill()
            pytest.fail(f"{len(alive)} of 2 gloo ranks still running after {DDP_DEADLINE_S} s "
                        "(their stacks are in the captured stderr)")
    rank0 = torch.load(tmp_path / "params-rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "params-rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert (tmp_path / "model" / "model.safetensors").exists() and (tmp_path / "log.csv").exists()


def test_stage1_2_3_chain_keeps_vit_and_t5_frozen(tokenizer_dir: Path, stage0_dir: Path, tmp_path: Path) -> None:
    pretrained = {"kind": "pretrained", "path": str(stage0_dir), "skip_groups": ["adapters", "router"]}
    for stage in ("stage1", "stage2"):
        train(tiny_config(tokenizer_dir, tmp_path / stage, stage=stage, optim={"steps": 2}, init=pretrained))
    image_dir, region_dir = tmp_path / "stage1" / "model", tmp_path / "stage2" / "model"
    initial = tensors(handover(image_dir, region_dir))
    result = train(tiny_config(
        tokenizer_dir, tmp_path / "stage3", stage="stage3", optim={"steps": 3},
        init={"kind": "handover", "image_stage": str(image_dir), "region_stage": str(region_dir)},
    ))
    changed = {parameter_group(n) for n, t in tensors(result.model).items() if not torch.equal(t, initial[n])}
    assert changed == TRAINABLE_GROUPS["stage3"]
    stage0 = LionModel.from_pretrained(stage0_dir).checkpoint_tensors()
    for name, tensor in result.model.checkpoint_tensors().items():
        if parameter_group(name) in ("vit", "t5"):
            assert torch.equal(tensor, stage0[name]), name


def tiny_model_and_batch(config: TrainConfig, tokenizers: LionTokenizers):
    """lion-tiny built for `config`, in eval mode (no dropout: passes compare exactly), and the first
    synthetic batch of its stage."""
    from lion_ros.train.data import STAGE_TASKS, Collator, SyntheticBatches
    from lion_ros.train.stages import build_model

    torch.manual_seed(0)
    lion = build_model(config, tokenizers).eval()
    collator = Collator.for_model(tokenizers, config.data, lion.config)
    return lion, SyntheticBatches(config.data, collator, STAGE_TASKS[config.stage], seed=0)[0]


def test_length_groups_give_the_same_loss_and_gradients(tokenizer_dir: Path, tmp_path: Path) -> None:
    """Running T5 per answer-length group only trims padding: per-token losses and gradients
    equal those of one padded pass (to float rounding)."""
    from lion_ros.train.trainer import TrainingModule

    config = tiny_config(tokenizer_dir, tmp_path, data={"images_per_batch": 4, "questions_per_image": 3})
    lion, batch = tiny_model_and_batch(config, LionTokenizers.load(tokenizer_dir))
    lengths = (batch.labels != -100).sum(1)
    assert lengths.min() < lengths.max()  # the batch really mixes answer lengths

    results = []
    for groups in (1, 3):
        lion.zero_grad(set_to_none=True)
        token_loss = TrainingModule(lion, length_groups=groups)(batch)[0]
        token_loss.sum().backward()
        grads = {n: p.grad.clone() for n, p in lion.named_parameters() if p.grad is not None}
        results.append((token_loss.detach(), grads))
    (loss_one, grads_one), (loss_grouped, grads_grouped) = results
    assert loss_grouped.shape == batch.labels.shape
    torch.testing.assert_close(loss_grouped, loss_one, atol=1e-5, rtol=1e-4)
    assert (loss_grouped[batch.labels == -100] == 0).all()
    assert grads_one.keys() == grads_grouped.keys()
    for name in grads_one:
        torch.testing.assert_close(grads_grouped[name], grads_one[name], atol=1e-5, rtol=1e-3, msg=name)


def test_length_groups_refuse_gradient_checkpointing(tokenizer_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        tiny_config(tokenizer_dir, tmp_path, data={"length_groups": 2}, model={"gradient_checkpointing": True})


def test_scratch_vit_starts_with_a_readable_2d_position_table(tokenizer_dir: Path, tmp_path: Path) -> None:
    from lion_ros.train.stages import build_model

    config = tiny_config(tokenizer_dir, tmp_path)
    model = build_model(config, LionTokenizers.load(tokenizer_dir))
    vision = model.config.vision
    grid = vision.patch_grid
    table = model.vision_model.embeddings.position_embedding.detach()[0].clone()
    assert torch.equal(table[0], torch.zeros_like(table[0]))  # CLS has no position
    patches = table[1:].reshape(grid, grid, -1)
    # Every patch has its own code, and along a row or a column the code drifts away smoothly.
    distances = torch.cdist(table[1:], table[1:])
    assert distances.masked_fill(torch.eye(grid * grid, dtype=torch.bool), float("inf")).min() > 0.1
    for step in range(1, grid - 1):
        assert (patches[0, 0] - patches[0, step]).norm() < (patches[0, 0] - patches[0, step + 1]).norm() + 1e-6
        assert (patches[0, 0] - patches[step, 0]).norm() < (patches[0, 0] - patches[step + 1, 0]).norm() + 1e-6
    # Columns and rows live in separate channel halves: moving right leaves the row half alone.
    half = table.shape[1] // 2
    assert torch.allclose(patches[0, 0, half:], patches[0, grid - 1, half:])
    assert torch.allclose(patches[0, 0, :half], patches[grid - 1, 0, :half])
    # A pretrained start keeps the checkpoint's table.
    with torch.no_grad():
        model.vision_model.embeddings.position_embedding.mul_(2)
    model.save_pretrained(tmp_path / "doubled")
    again = build_model(dataclasses.replace(config, init=dataclasses.replace(config.init, kind="pretrained",
                                                                                path=str(tmp_path / "doubled"))),
                        LionTokenizers.load(tokenizer_dir))
    assert torch.allclose(again.vision_model.embeddings.position_embedding.detach()[0], 2 * table)


def test_stages_rerun_bit_for_bit_from_the_trained_model_and_its_stage0_overlay(
        tokenizer_dir: Path, stage0_dir: Path, tmp_path: Path) -> None:
    """What `scripts/train_nano.sh --from-stage0` relies on: the stage-3 model plus the overlay of
    `stage0_overlay` starts stage 1 where stage 0 did, so the stage reruns to the same bits."""
    pretrained = {"kind": "pretrained", "path": str(stage0_dir), "skip_groups": ["adapters", "router"]}
    for stage in ("stage1", "stage2"):
        train(tiny_config(tokenizer_dir, tmp_path / stage, stage=stage, optim={"steps": 2}, init=pretrained))
    stage3 = tmp_path / "stage3"
    train(tiny_config(tokenizer_dir, stage3, stage="stage3", optim={"steps": 2}, init={
        "kind": "handover", "image_stage": str(tmp_path / "stage1" / "model"),
        "region_stage": str(tmp_path / "stage2" / "model")}))

    overlay = stage0_overlay(stage0_dir, stage3 / "model")
    assert {parameter_group(name) for name in overlay} == STAGE0_OVERLAY_GROUPS
    save_file(overlay, tmp_path / "stage0.safetensors")
    rerun = tmp_path / "rerun"
    train(tiny_config(tokenizer_dir, rerun, stage="stage1", optim={"steps": 2}, init={
        **pretrained, "path": str(stage3 / "model"), "overlay": str(tmp_path / "stage0.safetensors")}))
    first = (tmp_path / "stage1" / "model" / "model.safetensors").read_bytes()
    assert (rerun / "model" / "model.safetensors").read_bytes() == first

    # Without the overlay the stage starts from stage 3's branches, and ends elsewhere.
    train(tiny_config(tokenizer_dir, tmp_path / "no-overlay", stage="stage1", optim={"steps": 2},
                      init={**pretrained, "path": str(stage3 / "model")}))
    assert (tmp_path / "no-overlay" / "model" / "model.safetensors").read_bytes() != first


def test_stage0_overlay_refuses_a_model_not_trained_from_that_stage0(tokenizer_dir: Path, stage0_dir: Path,
                                                                    tmp_path: Path) -> None:
    other = tmp_path / "other"
    train(tiny_config(tokenizer_dir, other, optim={"steps": 1}, run={"seed": 5}))
    with pytest.raises(ValueError, match=r"\((vit|t5)\) differs .* stages 1-3 keep it frozen"):
        stage0_overlay(stage0_dir, other / "model")


def test_an_overlay_must_name_tensors_of_the_checkpoint_with_their_shapes(stage0_dir: Path, tmp_path: Path) -> None:
    model = LionModel(LionConfig.load(stage0_dir / "config.json"))
    name, tensor = next(iter(model.checkpoint_tensors().items()))
    for bad, match in (({"no.such.tensor": torch.zeros(1)}, "not a tensor of the checkpoint"),
                       ({name: torch.zeros(*tensor.shape, 2)}, "has shape")):
        save_file(bad, tmp_path / "overlay.safetensors")
        with pytest.raises(ValueError, match=match):
            load_matching(model, stage0_dir, overlay=tmp_path / "overlay.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_matching(model, stage0_dir, overlay=tmp_path / "corrupt.safetensors")
    with pytest.raises(ValueError, match="needs init.kind pretrained"):
        TrainConfig.from_dict({"init": {"kind": "scratch", "overlay": str(tmp_path / "overlay.safetensors")}})


def _loss_and_grads(lion: LionModel, batch, **module_options: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from lion_ros.train.trainer import TrainingModule

    lion.zero_grad(set_to_none=True)
    with lion.route(batch.task_index):
        token_loss = TrainingModule(lion, **module_options)(batch)[0]
        token_loss.sum().backward()
    grads = {n: p.grad.clone() for n, p in lion.named_parameters() if p.grad is not None}
    return token_loss.detach(), grads


def test_stage0_skips_its_zero_adapters_without_changing_a_bit(tokenizer_dir: Path, tmp_path: Path) -> None:
    """Stage 0's adapters are frozen at zero: skipping them gives the same losses and gradients
    bit for bit. Adapters that train, or hold weights, keep running."""
    from lion_ros.model.adapters import MixtureOfAdapters
    from lion_ros.train.stages import skip_idle_adapters

    config = tiny_config(tokenizer_dir, tmp_path, data={"images_per_batch": 3})
    lion, batch = tiny_model_and_batch(config, LionTokenizers.load(tokenizer_dir))
    apply_freeze_policy(lion, "stage0")
    mixtures = [m for m in lion.modules() if isinstance(m, MixtureOfAdapters)]
    running = _loss_and_grads(lion, batch)
    assert skip_idle_adapters(lion) == len(mixtures) > 0
    skipped = _loss_and_grads(lion, batch)
    assert torch.equal(skipped[0], running[0])
    assert skipped[1].keys() == running[1].keys()
    for name, grad in running[1].items():
        assert torch.equal(skipped[1][name], grad), name

    apply_freeze_policy(lion, "stage3")  # trainable adapters run
    assert skip_idle_adapters(lion) == 0 and all(m.enabled for m in mixtures)
    apply_freeze_policy(lion, "stage0")
    with torch.no_grad():
        mixtures[0].adapters[0].up_proj.weight[0, 0] = 0.5  # frozen, but not zero: it runs
    assert skip_idle_adapters(lion) == len(mixtures) - 1 and mixtures[0].enabled


def test_compiled_stacks_give_the_eager_loss_and_gradients(tokenizer_dir: Path, tmp_path: Path) -> None:
    """run.compile: the compiled stacks compute what the eager ones do (to float rounding), and
    keep their parameter names, so checkpoints and saved models do not change."""
    from lion_ros.train.trainer import compile_stacks

    config = tiny_config(tokenizer_dir, tmp_path, data={"images_per_batch": 3})
    lion, batch = tiny_model_and_batch(config, LionTokenizers.load(tokenizer_dir))
    names = list(lion.state_dict())
    eager_loss, eager_grads = _loss_and_grads(lion, batch)
    compile_stacks(lion)
    compiled_loss, compiled_grads = _loss_and_grads(lion, batch)
    assert list(lion.state_dict()) == names
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-4)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)


def test_photometric_lookup_equals_the_per_pixel_formula(tokenizer_dir: Path, tmp_path: Path) -> None:
    """Brightness/contrast jitter is looked up per pixel value; it must give the bytes of computing
    it on every pixel (the training data, and with it the shipped stages' bits, depend on them)."""
    import numpy as np

    from lion_ros.data.synthetic import render_scene
    from lion_ros.preprocess import PreprocessConfig
    from lion_ros.train.data import Collator

    config = tiny_config(tokenizer_dir, tmp_path, data={"photometric": 0.5})
    collator = Collator(LionTokenizers.load(tokenizer_dir), config.data, PreprocessConfig(image_size=32),
                        qformer_max_tokens=32)
    for seed in range(4):
        image = render_scene(seed).rgb
        gain, contrast = 1 + np.random.default_rng(seed).uniform(-0.5, 0.5, 2)
        expected = np.clip((image.astype(np.float32) - image.mean()) * contrast + image.mean() * gain, 0, 255)
        got = collator._photometric(image, np.random.default_rng(seed))
        assert got.dtype == np.uint8 and got.shape == image.shape
        assert np.array_equal(got, expected.astype(np.uint8))
        assert not np.array_equal(got, image)
