"""bench/bench_vs_transformers.py runs and its parity holds: the same weights in lion_ros and in
transformers' InstructBLIP give the same greedy token ids (a tiny size, one repeat: this checks
the benchmark, it times nothing)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_vs_transformers.py"


@pytest.mark.slow
def test_benchmark_runs_and_greedy_tokens_match_transformers() -> None:
    run = subprocess.run([sys.executable, str(BENCH), "--sizes", "tiny", "--repeats", "1", "--new-tokens", "4",
                          "--beams", "1", "3", "--batch-sizes", "1", "2"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| tiny |")]
    assert len(rows) == 2 * 2 * 4  # searches x batch sizes x stages
    assert {row.split("|")[4].strip() for row in rows} == {"encode", "prefill", "decode per token", "end to end"}
    assert run.stdout.count("token ids identical: True") == 2  # greedy, batch 1 and 2


def test_lion_4b_needs_a_gpu() -> None:
    run = subprocess.run([sys.executable, str(BENCH), "--sizes", "lion-4b"], capture_output=True, text=True)
    assert run.returncode == 2 and "GPU only" in run.stderr
