"""bench/gpu_acceptance.sh stays runnable: its --tiny mode runs every step at lion-tiny size on
the CPU, records the CUDA-only steps as skipped with their reason, and writes the report. This
checks the script and its report, it times nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_acceptance.sh"
# Written out, not imported: a step dropped from the script must fail this test.
STEPS = ["environment", "precision_agreement", "stage_latency", "cuda_graph_tests", "tensorrt_engine_tests",
         "onnx_export", "vs_transformers"]
CUDA_ONLY = {"cuda_graph_tests", "tensorrt_engine_tests"}


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU run; on a GPU run the script without --tiny")
def test_tiny_run_passes_every_cpu_step_and_records_the_skips(tmp_path: Path) -> None:
    run = subprocess.run(["bash", str(SCRIPT), "--tiny", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "acceptance.json").read_text())
    steps = {step["step"]: step for step in report["steps"]}
    assert list(steps) == STEPS
    for name, step in steps.items():
        assert step["seconds"] >= 0
        if name in CUDA_ONLY:
            assert step["status"] == "skipped" and "no CUDA device" in step["reason"], step
            assert (tmp_path / f"{name}.log").is_file()
        else:
            assert step["status"] == "passed", step
    assert report["failed"] == [] and report["environment"]["torch"] == torch.__version__
    assert report["environment"]["tensorrt"] is None or isinstance(report["environment"]["tensorrt"], str)

    agreement = steps["precision_agreement"]["details"]["prompts"]
    assert len(agreement) == 3 and all(p["finite"] and p["logits_cosine"] >= 0.99 for p in agreement)
    latency = steps["stage_latency"]["details"]
    assert [row["batch"] for row in latency["batches"]] == [1, 4]
    for row in latency["batches"]:
        assert row["decode_ms_per_token"] > 0 and row["end_to_end_ms"] > row["prefill_ms"], row
    assert latency["answers"]["rec_new_frame_ms"] > 0
    assert {"encode", "prefill", "decode per token", "end to end"} <= {
        row.split("|")[4].strip() for row in steps["vs_transformers"]["details"]["table"][2:]}
    assert set(steps["onnx_export"]["details"]["graphs"]) == {"vision", "qformer", "t5_encoder", "t5_decoder_step"}
    markdown = (tmp_path / "acceptance.md").read_text()
    assert all(f"| {name} |" in markdown for name in STEPS)


def test_the_full_run_needs_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full run would start")
    run = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2 and "needs a GPU" in run.stderr
