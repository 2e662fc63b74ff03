"""study.py on a tiny grid (2 variants x 1 seed, a few steps, 1 episode per look), and the interval math
its verdicts rest on (stats.py)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sim
from stats import mean_diff_interval, newcombe, t_quantile, verdict, wilson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_intervals_match_published_values():
    assert [round(t_quantile(df), 3) for df in (1, 2, 4, 10)] == [12.706, 4.303, 2.776, 2.228]
    lo, hi = wilson(2, 20)                               # 0.10: Wilson 0.028-0.301
    assert abs(lo - 0.0279) < 1e-3 and abs(hi - 0.3010) < 1e-3 and wilson(0, 10)[0] == 0 and abs(wilson(10, 10)[1] - 1) < 1e-12
    # Newcombe (1998), Table II, example (a): 56/70 vs 48/80 -> 0.2000, interval 0.0524 to 0.3339
    d, lo, hi = newcombe(56, 70, 48, 80)
    assert abs(d - 0.2) < 1e-9 and abs(lo - 0.0524) < 5e-4 and abs(hi - 0.3339) < 5e-4
    d, lo, hi = mean_diff_interval([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert d == 0 and lo < 0 < hi and verdict(lo, hi) == "inconclusive"
    d, lo, hi = mean_diff_interval([5.0, 5.1, 5.2], [1.0, 1.1, 1.2])    # df = 4, se = 0.0816: 4 +- 0.227
    assert abs(hi - lo - 2 * 2.776 * (0.02 / 3) ** 0.5) < 1e-3 and verdict(lo, hi) == "reproduced"
    assert verdict(-0.3, -0.1) == "contradicted"


@pytest.mark.skipif(sim.gl_error() is not None, reason=str(sim.gl_error()))
def test_study_runs_a_tiny_grid_and_resumes(synthetic, tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "study.py", "--preset", "core", "--variants", "baseline,rscl", "--seeds", "1", "--iters", "3",
           "--episodes", "1", "--unseen", "1", "--data", synthetic, "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
           "--train-args", "--backbone tiny --token-pool 1 --batch-size 4 --log-every 1 --eval-every 1 --eval-iters 1",
           "--eval-args", "--horizon 8 --workers 1 --videos 0"]
    # both runs stop after step 2 (as if killed); the study is re-run and resumes them
    r = subprocess.run(cmd[:-3] + [cmd[-3] + " --stop-after 2"] + cmd[-2:], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 2 and "stopped at step 2 of 3" in r.stdout and "2 run(s) failed" in r.stderr, r.stderr[-2000:]
    assert not (out / "rscl-s0" / "eval-lift-seen").exists()   # a partial checkpoint is never evaluated
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--resume" in r.stdout                        # the stopped runs continued from their checkpoints
    res = json.load(open(out / "results.json"))
    runs = {x["variant"]: x for x in res["runs"]}
    assert set(runs) == {"baseline", "rscl"}
    for x in runs.values():
        assert x["success"]["lift-seen"][1] == 1 and x["success"]["lift-unseen"][1] == 1
        assert set(x["cknna"]) == {"backbone", "h", "z"} and np.isfinite(x["cknna"]["h"])   # small N: may pass 1
    assert runs["rscl"]["curve"]["loss_rscl"] and not runs["baseline"]["curve"]["loss_rscl"]
    assert runs["rscl"]["final"]["val_n_pos"] is not None and runs["baseline"]["final"]["val_n_pos"] is None
    claims = {c["claim"]: c for c in res["claims"]}
    assert "RS-CL raises success" in claims and claims["RS-CL aligns h with q (CKNNA)"]["verdict"].startswith("inconclusive")
    table = open(out / "table.md").read()
    assert "| baseline |" in table and "| rscl | `--rscl` |" in table
    for fig in ("success.png", "cknna.png", "rscl_floor.png"):
        assert (out / fig).stat().st_size > 1000
    # a third run finds everything done: no command is run again
    stamp = os.path.getmtime(out / "rscl-s0" / "ckpt.pt")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "$ " not in r.stdout and os.path.getmtime(out / "rscl-s0" / "ckpt.pt") == stamp


def test_study_bad_input_is_one_line(tmp_path):
    for args, says in ((["--preset", "nope"], "unknown preset"), (["--variants", "baseline,magic"], "unknown variant"),
                       (["--data", str(tmp_path / "none.hdf5")], "does not exist"), (["--seeds", "0"], "at least 1")):
        r = subprocess.run([sys.executable, "study.py", *args], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
