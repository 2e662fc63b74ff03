"""Smoke runs of bench.py's step benchmark (one case, in-process) and FLOP count on the tiny backbone.
The CKNNA benchmark's smoke run is in test_cknna.py.  python -m pytest -q tests/test_bench.py"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone", "tiny", "--views", "2", "--image-size", "32", "--batch-size", "2", "--warmup", "1", "--iters", "3", "--paired-iters", "3"]


def run(*flags):
    r = subprocess.run([sys.executable, "bench.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def test_paired_case_times_both_steps():
    # baseline and RS-CL steps alternate in one process (the ratio bench.py's summary reports)
    (r,) = run(*TINY, "--case", "paired-cached")
    assert r["case"] == "paired-cached" and r["steps_each"] == 3
    assert r["baseline_step_ms"] > 0 and r["rscl_step_ms"] > 0
    assert abs(r["rscl_over_baseline"] - r["rscl_step_ms"] / r["baseline_step_ms"]) < 1e-9


def test_flop_count_and_bad_flags():
    out = run("--flops-only", *TINY[:6])[-1]
    assert out["views"] == 2 and out["rscl_policy_tflop_per_sample"] > out["baseline_policy_tflop_per_sample"] > 0
    assert out["rscl_over_baseline_cached"] == out["rscl_policy_tflop_per_sample"] / out["baseline_policy_tflop_per_sample"]
    r = subprocess.run([sys.executable, "bench.py", "--token-pool", "0"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().startswith("error: --token-pool") and "Traceback" not in r.stderr


def test_trainable_encoder_cases_time_a_step():
    for case in ("vision-train", "vision-dual"):   # a trainable copy of the encoder, trained live (vision.py)
        (r,) = run(*TINY, "--case", case)
        assert r["case"] == case and r["step_ms"] > 0 and r["tflop_per_sample"] > 0


def test_attention_case_pairs_the_written_out_attention_with_sdpa():
    (r,) = run(*TINY, "--case", "attention-cached")
    assert r["math_step_ms"] > 0 and r["sdpa_step_ms"] > 0
    assert abs(r["sdpa_over_math"] - r["sdpa_step_ms"] / r["math_step_ms"]) < 1e-9


def test_align_case_pairs_align_with_the_baseline():
    (r,) = run(*TINY, "--case", "align-cached")
    assert r["baseline_step_ms"] > 0 and r["align_step_ms"] > 0 and r["align_over_baseline"] > 0
