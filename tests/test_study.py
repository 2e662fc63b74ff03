"""study.py on a tiny grid (2 variants x 1 seed, a few steps, 1 episode per look), and the interval math
its verdicts rest on (stats.py)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sim
from stats import mean_diff_interval, newcombe, newcombe_paired, t_quantile, verdict, wilson
from study_report import paired

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
    assert r.returncode == 2 and "stopped at step 2 of 3" in r.stdout and "2 run(s) stopped" in r.stderr, r.stderr[-2000:]
    assert "re-run to continue them" in r.stderr.splitlines()[-1]
    assert not (out / "rscl-s0" / "eval-lift-seen").exists()   # a partial checkpoint is never evaluated
    assert "baseline-s0 is left out of the report: not evaluated yet" in r.stdout   # nor counted in the report
    assert not [x for x in json.load(open(out / "results.json"))["runs"] if not x.get("reference")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--resume" in r.stdout                        # the stopped runs continued from their checkpoints
    asked = json.load(open(out / "rscl-s0" / "study.json"))   # what study.py asked for, recorded at the start
    assert asked["train"]["max_iters"] == "3" and asked["train"]["rscl"] is True and "stop_after" not in asked["train"]
    assert asked["data"]["size"] == os.path.getsize(synthetic)
    assert json.load(open(out / "rscl-s0" / "eval-lift-unseen" / "study.json"))["evaluate"]["horizon"] == "8"
    res = json.load(open(out / "results.json"))
    runs = {x["variant"]: x for x in res["runs"]}
    assert set(runs) == {"baseline", "rscl", "expert", "blind"}   # the references ran on the same episodes
    for ref in ("expert", "blind"):
        assert runs.pop(ref)["success"]["lift-seen"][1] == 1
        got = json.load(open(out / "references" / f"{ref}-lift-seen" / "results.json"))
        assert got["ckpt"] == ref and got["episodes"]["lift"][0]["seed"] == sim_seed()
    for x in runs.values():
        assert x["success"]["lift-seen"][1] == 1 and x["success"]["lift-unseen"][1] == 1
        assert set(x["cknna"]) == {"backbone", "h", "z"} and np.isfinite(x["cknna"]["h"])   # small N: may pass 1
    assert runs["rscl"]["curve"]["loss_rscl"] and not runs["baseline"]["curve"]["loss_rscl"]
    assert runs["rscl"]["final"]["val_n_pos"] is not None and runs["baseline"]["final"]["val_n_pos"] is None
    claims = {c["claim"]: c for c in res["claims"]}
    assert "RS-CL raises success" in claims and claims["RS-CL aligns h with q (CKNNA)"]["verdict"].startswith("inconclusive")
    assert claims["RS-CL raises success"]["interval"] == "paired, 1 episodes"   # the same seeded episode, paired
    assert all(len(x["outcomes"]["lift-seen"]) == 1 for x in runs.values())
    table = open(out / "table.md").read()
    assert "| baseline |" in table and "| rscl | `--rscl` |" in table and "| expert | (no training) | - |" in table
    for fig in ("success.png", "cknna.png", "rscl_floor.png"):
        assert (out / fig).stat().st_size > 1000
    # a third run finds everything done: no command is run again
    stamp = os.path.getmtime(out / "rscl-s0" / "ckpt.pt")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "$ " not in r.stdout and os.path.getmtime(out / "rscl-s0" / "ckpt.pt") == stamp


def test_paired_interval_is_newcombes_when_pairs_are_uncorrelated_and_narrower_when_they_agree():
    # a table of pairs with ad = bc (phi = 0): 4 both, 2 only x, 2 only y, 1 neither -> the unpaired interval
    x, y = [1] * 4 + [1] * 2 + [0] * 2 + [0], [1] * 4 + [0] * 2 + [1] * 2 + [0]
    assert np.allclose(newcombe_paired(x, y), newcombe(6, 9, 6, 9))
    rng = np.random.default_rng(0)
    x = rng.random(300) < 0.7
    y = x.copy()
    y[:20] = False                                  # y fails 20 episodes x succeeds at (or both failed): correlated
    d, lo, hi = newcombe_paired(x, y)
    assert abs(d - (x.sum() - y.sum()) / 300) < 1e-12 and lo <= d <= hi
    d2, lo2, hi2 = newcombe(x.sum(), 300, y.sum(), 300)
    assert hi - lo < 0.6 * (hi2 - lo2)              # pairing uses the agreement: a much narrower interval
    assert lo > 0 > lo2                              # ... which here tells a difference the unpaired one cannot
    d, lo, hi = newcombe_paired(x, x)                # the same outcomes: no difference, 0 inside a narrow interval
    assert d == 0 and lo < 0 < hi and hi - lo < 0.02


def test_wilson_interval_holds_the_rate_itself_at_every_count():
    """At k = n the interval ends at exactly 1 (50/50 gave 0.99999...: a negative error bar in success.png)."""
    for n in range(1, 61):
        for k in range(n + 1):
            lo, hi = wilson(k, n)
            assert 0 <= lo <= k / n <= hi <= 1, (k, n, lo, hi)


def sim_seed():
    import sim
    return sim.episode_seed("eval", "lift", 0)


def test_study_bad_input_is_one_line(tmp_path):
    for args, says in ((["--preset", "nope"], "unknown preset"), (["--variants", "baseline,magic"], "unknown variant"),
                       (["--data", str(tmp_path / "none.hdf5")], "does not exist"), (["--seeds", "0"], "at least 1"),
                       (["--variants", "rscl,baseline,rscl"], "--variants lists rscl twice"),
                       (["--references", "expert,oracle"], "name expert and/or blind")):
        r = subprocess.run([sys.executable, "study.py", *args], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


# -----------------------------------------------------------------------------
# the study keys each run by what ran (runkey.py): hand-written run folders, as train.py, evaluate.py and cknna.py
# write them, read back with --dry-run (the commands it would run) or --report-only (results.json)

def fake_run(out, variant, data, iters=3, **args):
    """A finished run of `study.py --variants <variant> --seeds 1 --iters 3 --episodes 1 --unseen 1`: config.json
    with train.py's typed values, a checkpoint, both evaluations, CKNNA scores, log.jsonl."""
    import torch
    folder = out / f"{variant}-s0"
    folder.mkdir(parents=True)
    saved = dict(backbone="dinov2-s", cameras="agentview,robot0_eye_in_hand", token_pool=2, adapter_dropout=0.0,
                 lr=0.001, ema=0.999, cache_features=True, rscl=variant != "baseline", data=str(data), max_iters=iters, seed=0,
                 out=str(folder), cache_dir="/elsewhere/cache", batch_size=32, resume=False, overwrite=False)
    (folder / "config.json").write_text(json.dumps(dict(args={**saved, **args}, model={}, stats={})))
    torch.save(dict(step=iters, model={}), folder / "ckpt.pt")
    for look, k in (("seen", 1), ("unseen", 0)):
        (folder / f"eval-lift-{look}").mkdir()
        (folder / f"eval-lift-{look}" / "results.json").write_text(json.dumps(dict(
            ckpt=str(folder / "ckpt.pt"), appearance=look, execute=8, init_noise=1.0, horizon=0, seconds=1.0,
            summary={"lift": dict(success=k, successes=k, episodes=1, wilson95=[0.0, 1.0])}, episodes=[])))
    (folder / "cknna").mkdir()
    (folder / "cknna" / "scores.json").write_text(json.dumps(dict(rows=[dict(representation="h", cknna=0.5),
                                                                        dict(representation="z", cknna=0.4)])))
    (folder / "log.jsonl").write_text(json.dumps(dict(step=1, loss_fm=1.0, loss_rscl=2.0, w_entropy=1.5)) + "\n" +
                                      json.dumps(dict(step=3, val_loss_fm=0.25)) + "\n")
    return folder


def study(out, data, *extra, variants="rscl"):
    return subprocess.run([sys.executable, "study.py", "--variants", variants, "--seeds", "1", "--iters", "3",
                           "--episodes", "1", "--unseen", "1", "--data", str(data), "--out", str(out),
                           "--cache-dir", str(out / "cache"), "--references", "", *extra], cwd=ROOT, capture_output=True,
                          text=True)


def test_study_refuses_a_run_trained_with_other_flags(tmp_path):
    data, out = tmp_path / "demos.hdf5", tmp_path / "study"
    data.write_bytes(b"demos")
    folder = fake_run(out, "rscl", data)
    r = study(out, data, "--dry-run")
    assert r.returncode == 0 and "$ " not in r.stdout, r.stdout + r.stderr   # all there: nothing to run
    r = study(out, data, "--dry-run", "--train-args", "--lr 5e-4")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: rscl-s0: --lr 5e-4 now, 0.001 in its config.json") and "--retrain" in lines[0]
    assert "$ " not in r.stdout
    r = study(out, data, "--report-only", "--train-args", "--lr 5e-4")   # the report leaves it out, by name
    assert r.returncode == 0 and "rscl-s0 is left out of the report: --lr 5e-4 now" in r.stdout, r.stderr
    assert json.load(open(out / "results.json"))["runs"] == []
    r = study(out, data, "--dry-run", "--retrain", "--train-args", "--lr 5e-4")   # trained anew, then evaluated anew
    train = [x for x in r.stdout.splitlines() if x.startswith("$ ") and " train.py " in x]
    assert r.returncode == 0 and len(train) == 1 and train[0].endswith("--lr 5e-4 --overwrite"), r.stdout
    assert r.stdout.count(" evaluate.py ") == 2 and r.stdout.count(" cknna.py ") == 1
    # a flag dropped from --train-args: config.json cannot tell (the default is train.py's), study.json can
    (folder / "study.json").write_text(json.dumps(dict(train={"batch_size": "16"})))
    r = study(out, data, "--dry-run")
    assert r.returncode == 2 and "rscl-s0: --batch-size not given now, 16 when it was trained" in r.stderr, r.stderr


def test_study_refuses_a_run_trained_on_other_data(tmp_path):
    data, out = tmp_path / "demos.hdf5", tmp_path / "study"
    data.write_bytes(b"demos")
    other = tmp_path / "other.hdf5"
    other.write_bytes(b"demos")
    folder = fake_run(out, "rscl", data)
    r = study(out, other, "--dry-run")
    assert r.returncode == 2 and f"rscl-s0: --data {other} now, {data} in its config.json" in r.stderr, r.stderr
    st = os.stat(data)   # the same path, collected again since: its size and mtime as study.py recorded them
    (folder / "study.json").write_text(json.dumps(dict(train={}, data=dict(size=st.st_size, mtime_ns=st.st_mtime_ns))))
    assert study(out, data, "--dry-run").returncode == 0
    data.write_bytes(b"demos, collected again")
    r = study(out, data, "--dry-run")
    assert r.returncode == 2 and "has changed since the run was trained (size 5 bytes" in r.stderr, r.stderr
    # a content hash in config.json decides: the same content anywhere is the same data, other content is not
    import hashlib
    cfg = json.load(open(folder / "config.json"))
    cfg["data_fingerprint"] = hashlib.sha1(data.read_bytes()).hexdigest()   # where train.py writes it
    (folder / "config.json").write_text(json.dumps(cfg))
    assert study(out, data, "--dry-run").returncode == 0
    r = study(out, other, "--dry-run")
    assert r.returncode == 2 and "holds other content than the run was trained on" in r.stderr, r.stderr


def test_study_evaluates_again_when_the_evaluation_flags_differ(tmp_path):
    data, out = tmp_path / "demos.hdf5", tmp_path / "study"
    data.write_bytes(b"demos")
    folder = fake_run(out, "rscl", data)
    r = study(out, data, "--dry-run", "--eval-args", "--execute 4")
    evals = [x for x in r.stdout.splitlines() if " evaluate.py " in x]
    assert r.returncode == 0 and len(evals) == 2 and all(x.endswith("--execute 4") for x in evals), r.stdout + r.stderr
    assert "rscl-s0: evaluating lift on seen looks again: --execute 4 now, 8 in its results.json" in r.stdout
    assert " train.py " not in r.stdout and " cknna.py " not in r.stdout
    r = study(out, data, "--report-only", "--eval-args", "--execute 4")
    assert r.returncode == 0 and "rscl-s0 is left out of the report: eval-lift-seen: --execute 4 now, 8" in r.stdout
    assert json.load(open(out / "results.json"))["runs"] == []
    r = study(out, data, "--dry-run", "--episodes", "2")
    assert "--episodes 2 now, 1 in its results.json" in r.stdout and r.stdout.count(" evaluate.py ") == 1, r.stdout
    # a flag dropped from --eval-args (or one results.json does not record): study.json in the evaluation's folder
    (folder / "eval-lift-unseen" / "study.json").write_text(json.dumps(dict(evaluate={
        "tasks": "lift", "episodes": "1", "appearance": "unseen", "seed": "3"})))
    r = study(out, data, "--dry-run")
    assert "on unseen looks again: --seed not given now, 3 when it was run" in r.stdout, r.stdout
    assert r.stdout.count(" evaluate.py ") == 1


def test_study_names_damaged_files_and_goes_on(tmp_path):
    data, out = tmp_path / "demos.hdf5", tmp_path / "study"
    data.write_bytes(b"demos")
    rscl, base = fake_run(out, "rscl", data), fake_run(out, "baseline", data)
    with open(rscl / "log.jsonl", "a") as f:
        f.write('{"step": 4, "val_loss_f')                         # the last line, cut off by a kill
    (base / "eval-lift-seen" / "results.json").write_text('{"summary": {"lift": {"succ')
    r = study(out, data, "--report-only", variants="rscl,baseline")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "rscl-s0: log.jsonl's last line is cut off (line 3, a write was interrupted): ignored" in r.stdout
    assert "baseline-s0 is left out of the report: eval-lift-seen: results.json is damaged" in r.stdout
    res = json.load(open(out / "results.json"))
    assert [x["variant"] for x in res["runs"]] == ["rscl"] and res["runs"][0]["final"]["val_loss_fm"] == 0.25
    r = study(out, data, "--dry-run", variants="rscl,baseline")   # a damaged evaluation is run again
    assert r.returncode == 0 and [x.split(" --appearance ")[1][:4] for x in r.stdout.splitlines()
                                  if " evaluate.py " in x] == ["seen"], r.stdout + r.stderr
    (rscl / "cknna" / "scores.json").write_text("{")
    (rscl / "log.jsonl").write_text('{"step": 1, "loss_f\n{"step": 3, "val_loss_fm": 0.25}\n')
    r = study(out, data, "--report-only", variants="rscl")
    assert r.returncode == 0 and "rscl-s0 is left out of the report: cknna: scores.json is damaged" in r.stdout
    assert "log.jsonl is damaged (line 1 of 2 is not a log row)" in r.stdout and json.load(open(out / "results.json"))["runs"] == []
    (rscl / "ckpt.pt").write_bytes(b"not a checkpoint")
    r = study(out, data, "--dry-run", variants="rscl")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "$ " not in r.stdout, r.stderr
    assert r.stderr.startswith("error: rscl-s0: ckpt.pt is damaged") and "--retrain" in r.stderr


# study.py with its child processes replaced: each `python train.py ...` is interrupted (Ctrl-C) or fails at once
FAKE_CHILD = """import runpy, subprocess, sys
mode = sys.argv[1]
class Child:
    def __init__(self, *a, **k):
        self.returncode = 2
    def wait(self):
        if mode == "interrupt":
            raise KeyboardInterrupt
        return 2
subprocess.Popen = Child
subprocess.run = lambda *a, **k: Child().wait() if mode == "interrupt" else Child()
sys.argv = ["study.py"] + sys.argv[2:]
runpy.run_path("study.py", run_name="__main__")
"""


@pytest.mark.parametrize("child", ["interrupt", "fail"])
def test_study_ctrl_c_and_a_failed_training_say_what_is_true(tmp_path, child):
    data, out = tmp_path / "demos.hdf5", tmp_path / "study"
    data.write_bytes(b"demos")
    r = subprocess.run([sys.executable, "-c", FAKE_CHILD, child, "--variants", "rscl", "--seeds", "1", "--data", str(data),
                        "--out", str(out), "--references", ""], cwd=ROOT, capture_output=True, text=True)
    assert "Traceback" not in r.stderr and "re-run to retry" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    if child == "interrupt":
        assert r.returncode == 130 and last.startswith("study: interrupted: finished trainings") and "again" in last
    else:
        assert r.returncode == 2 and last.startswith("error: 1 run(s) failed: rscl-s0 (training): the error is printed "
                                                     "above under its command"), last


def test_study_results_hold_no_absolute_paths_of_the_repository(tmp_path):
    import shutil
    import tempfile
    inside = tempfile.mkdtemp(prefix=".test-study-", dir=ROOT)
    try:
        out, data = os.path.join(inside, "study"), os.path.join(inside, "demos.hdf5")
        open(data, "wb").write(b"demos")
        fake_run(tmp_path / "x", "rscl", data)   # a run made outside, moved in: config.json says the absolute --data
        shutil.move(str(tmp_path / "x" / "rscl-s0"), os.path.join(out, "rscl-s0"))
        r = subprocess.run([sys.executable, "study.py", "--variants", "rscl", "--seeds", "1", "--iters", "3",
                            "--episodes", "1", "--unseen", "1", "--data", os.path.relpath(data, ROOT), "--out", out,
                            "--report-only", "--references", ""], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        res = json.load(open(os.path.join(out, "results.json")))
        name = os.path.basename(inside)
        assert (res["config"]["data"], res["config"]["out"], res["config"]["cache_dir"]) == (
            f"{name}/demos.hdf5", f"{name}/study", os.path.join("data", "cache"))
        assert [x["folder"] for x in res["runs"]] == [f"{name}/study/rscl-s0"]
    finally:
        shutil.rmtree(inside)
    data, out = tmp_path / "demos.hdf5", tmp_path / "study"   # outside the repository: as given
    data.write_bytes(b"demos")
    fake_run(out, "rscl", data)
    assert study(out, data, "--report-only").returncode == 0
    res = json.load(open(out / "results.json"))
    assert res["config"]["data"] == str(data) and res["runs"][0]["folder"] == str(out / "rscl-s0")


def test_a_study_cut_short_is_paired_on_the_seeds_both_variants_finished():
    run = lambda seed, o: dict(seed=seed, success={"lift-seen": [o.count("1"), len(o)]}, outcomes={"lift-seen": o})
    a = [run(0, "110"), run(1, "111")]
    b = [run(0, "100"), dict(seed=1, success={}, outcomes={})]   # b's seed 1: trained, not yet evaluated
    assert paired(a, b, "lift-seen") == ([True, True, False], [True, False, False])
    assert paired(a, b[1:], "lift-seen") is None                  # no seed evaluated in both: compared unpaired
    assert paired(a, [run(0, "10")], "lift-seen") is None         # episode counts differ: cannot be paired


def test_a_verdict_from_one_training_seed_says_so(tmp_path):
    """Episodes paired within one pair of runs give an interval for those two runs only: a decided verdict says so."""
    from study_report import report

    def run(variant, seed, o):
        return dict(variant=variant, seed=seed, success={"lift-seen": [o.count("1"), len(o)]}, outcomes={"lift-seen": o},
                    cknna={}, final={}, curve={"loss_rscl": [], "w_entropy": []})
    claims = [("RS-CL raises success", "rscl", "baseline", "seen")]
    one = [run("rscl", 0, "1" * 90 + "0" * 10), run("baseline", 0, "1" * 50 + "0" * 50)]
    report(str(tmp_path / "a"), {}, one, claims, str, "lift")
    (c,) = json.load(open(tmp_path / "a" / "results.json"))["claims"]
    assert c["interval"] == "paired, 100 episodes" and c["verdict"].startswith("reproduced (one training seed")
    two = one + [run("rscl", 1, "1" * 90 + "0" * 10), run("baseline", 1, "1" * 50 + "0" * 50)]
    report(str(tmp_path / "b"), {}, two, claims, str, "lift")
    (c,) = json.load(open(tmp_path / "b" / "results.json"))["claims"]
    assert c["interval"] == "paired, 200 episodes" and c["verdict"] == "reproduced"


def test_results_json_is_strict_json_when_one_seed_gives_no_interval(tmp_path):
    """A CKNNA claim over one seed per variant has no Welch interval: results.json writes null, never NaN (which
    Python reads but strict JSON readers refuse)."""
    from study_report import report

    def run(variant, h):
        return dict(variant=variant, seed=0, success={"lift-seen": [1, 2]}, outcomes={"lift-seen": "10"},
                    cknna={"h": h}, final={}, curve={"loss_rscl": [], "w_entropy": []})
    report(str(tmp_path), {}, [run("rscl", 0.4), run("baseline", 0.3)],
           [("RS-CL aligns h with q (CKNNA)", "rscl", "baseline", "cknna_h")], str, "lift")

    def refuse(name):
        raise ValueError(f"{name} in results.json")
    (c,) = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)["claims"]
    assert c["low"] is None and c["high"] is None and c["verdict"] == "inconclusive (one seed)"
    assert abs(c["difference"] - 0.1) < 1e-9
    table = (tmp_path / "table.md").read_text()
    assert "no interval: one seed" in table and "nan" not in table   # the table says it in words too


def test_a_study_continued_on_another_machine_keeps_its_reported_runs(tmp_path):
    """Run folders (checkpoints) are never committed: on a new machine the study keeps the rows its results.json
    reported, marked, instead of training them again; not when the study's flags or the data's content differ."""
    import shutil
    data, out = tmp_path / "demos.hdf5", tmp_path / "study"
    data.write_bytes(b"demos")
    fake_run(out, "rscl", data)
    assert study(out, data, "--report-only").returncode == 0
    row = json.load(open(out / "results.json"))["runs"][0]
    assert row["train"]["rscl"] is True and "carried" not in row
    shutil.rmtree(out / "rscl-s0")                       # the machine that trained it is gone
    r = study(out, data, "--dry-run")
    assert r.returncode == 0 and "rscl-s0: kept from " in r.stdout and " train.py " not in r.stdout, r.stdout
    r = study(out, data)                                 # nothing to run; the report keeps the row, marked
    assert r.returncode == 0, r.stderr
    (kept,) = json.load(open(out / "results.json"))["runs"]
    assert kept["carried"] and kept["success"] == row["success"] and kept["cknna"] == row["cknna"]
    assert "Kept from an earlier report" in open(out / "table.md").read()
    r = study(out, data, "--dry-run", "--train-args", "--lr 5e-4")   # another study: trained again
    assert " train.py " in r.stdout and "kept from" not in r.stdout
    res = json.load(open(out / "results.json"))
    res["runs"][0]["data_sha1"] = "0" * 40               # trained on other content than the file holds now
    (out / "results.json").write_text(json.dumps(res))
    r = study(out, data, "--dry-run")
    assert "reports it with other flags or data: trained again" in r.stdout and " train.py " in r.stdout


def test_an_ablation_study_keeps_the_runs_another_study_of_the_same_flags_reported(tmp_path):
    """--carry-from: an ablation study at one regime reuses that regime's reported baseline instead of training it
    again, only when the other study ran with the same flags; a folder with no report is one clear error."""
    data, regime, ablations = tmp_path / "demos.hdf5", tmp_path / "regime", tmp_path / "ablations"
    data.write_bytes(b"demos")
    fake_run(regime, "baseline", data)
    assert study(regime, data, "--report-only", variants="baseline").returncode == 0
    (row,) = json.load(open(regime / "results.json"))["runs"]
    r = study(ablations, data, "--dry-run", "--carry-from", str(regime), variants="baseline,rscl")
    assert r.returncode == 0 and "baseline-s0: kept from " in r.stdout, r.stdout + r.stderr
    train = [x for x in r.stdout.splitlines() if x.startswith("$ ") and " train.py " in x]
    assert len(train) == 1 and " --rscl " in train[0]            # only the variant nobody reported is trained
    fake_run(ablations, "rscl", data)
    assert study(ablations, data, "--carry-from", str(regime), variants="baseline,rscl").returncode == 0
    res = json.load(open(ablations / "results.json"))
    kept = next(x for x in res["runs"] if x["variant"] == "baseline")
    assert kept["carried"] and kept["carried_from"].endswith("results.json") and kept["success"] == row["success"]
    assert sorted(x["variant"] for x in res["runs"]) == ["baseline", "rscl"]
    assert "carried" not in next(x for x in res["runs"] if x["variant"] == "rscl")
    r = study(ablations, data, "--dry-run", "--carry-from", str(regime), "--episodes", "2", variants="baseline")
    assert "none of its runs is kept" in r.stdout and " train.py " in r.stdout   # another study: trained
    r = study(ablations, data, "--dry-run", "--carry-from", str(tmp_path / "nowhere"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "holds no results.json" in lines[0], r.stderr
