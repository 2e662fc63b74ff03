"""Nothing lost, nothing silent: one test per class of failure (issue 13). Results are never overwritten or
mixed, the NaN guard keeps a checkpoint that resumes, every flag and every demo is checked, a damaged feature
cache is rebuilt, and a failed start leaves nothing behind. Every bad input: one line, a non-zero exit."""
import json
import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import sim
from data import DataError, DemoDataset, write_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--batch-size", "4", "--eval-every", "100", "--eval-iters", "1", "--log-every", "1"]
CAMS = ["agentview", "frontview", "robot0_eye_in_hand"]


def script(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def one_line(r, *words):
    """One clear line on stderr (the progress bar aside), a non-zero exit, no traceback."""
    err = [l for l in r.stderr.strip().splitlines() if "%|" not in l and l.strip() and not l.startswith("note:")]
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(err) == 1 and err[0].startswith("error: "), r.stderr
    for w in words:
        assert w in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def run(synthetic, tmp_path_factory):
    """A finished 2-step RS-CL run with a checkpoint after every step."""
    out = str(tmp_path_factory.mktemp("runs") / "rscl")
    r = script("train.py", "--data", synthetic, "--rscl", "--max-iters", "2", "--ckpt-every", "1", "--out", out, *FAST)
    assert r.returncode == 0, r.stderr
    return out


# 1. results are never overwritten, nor mixed with an earlier run's ------------------------------------------------

def test_outputs_are_refused_or_replaced_whole_never_mixed(run, synthetic, tmp_path):
    from cknna import run_names
    ckpt = os.path.join(run, "ckpt.pt")
    out = tmp_path / "fig"
    out.mkdir()
    (out / "stale.png").write_text("an earlier analysis")
    (out / "scores.json").write_text("{}")
    for name in ("fig.old", "fig.new"):   # the user's own folders beside it, named as people name them
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text("the user's")
    one_line(script("cknna.py", ckpt, "--data", synthetic, "--n", "20", "--out", str(out)), "--overwrite")
    one_line(script("evaluate.py", ckpt, "--out", str(out)), "--overwrite")
    # --overwrite replaces only a folder of its own script's: not an analysis (no scores.json) nor a run folder
    one_line(script("evaluate.py", ckpt, "--out", str(out), "--overwrite"), "no results.json")
    one_line(script("cknna.py", ckpt, "--data", synthetic, "--n", "20", "--out", str(tmp_path / "fig.old"),
                    "--overwrite"), "no scores.json")
    assert sorted(os.listdir(out)) == ["scores.json", "stale.png"]
    r = script("cknna.py", ckpt, "--data", synthetic, "--n", "20", "--out", str(out), "--overwrite", "--split", "all")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["alignment.png", "projection_rscl.png", "scores.json"]   # replaced, not mixed
    assert sorted(os.listdir(tmp_path)) == ["fig", "fig.new", "fig.old"]                       # no temp folder left
    assert all(os.listdir(tmp_path / n) == ["mine.txt"] for n in ("fig.old", "fig.new"))       # nothing of theirs touched
    # two checkpoints of one folder, one folder name in two places: every bar of the plot gets its own name
    assert run_names(["runs/a/ckpt.pt", "runs/a/ckpt_500.pt", "runs/b/ckpt.pt"]) == ["a/ckpt", "a/ckpt_500", "b/ckpt"]
    assert run_names(["x/run/ckpt.pt", "y/run/ckpt.pt"]) == ["x/run/ckpt", "y/run/ckpt"]
    assert run_names(["runs/a/ckpt.pt", "runs/b/ckpt.pt"]) == ["a", "b"]
    with pytest.raises(ValueError, match="twice"):
        run_names(["runs/a/ckpt.pt", "runs/./a/ckpt.pt"])


# 2. an overwrite writes elsewhere and renames only on success ------------------------------------------------------

def fake_episode(job):
    """sim._episode without robosuite: a successful 3-step episode of zeros."""
    task, seed, look, image_size, cameras, noise = job
    raw = dict(robot0_eef_pos=np.zeros(3), robot0_eef_quat=np.array([0, 0, 0, 1.0]), robot0_gripper_qpos=np.zeros(2))
    frame = dict(action=np.zeros(7), state=np.zeros(5), reward=1.0, object=np.zeros(3),
                 obs=dict(raw=raw, images=np.zeros((len(cameras), image_size, image_size, 3), np.uint8)))
    return task, seed, look, True, [frame] * 3


def test_sim_overwrite_replaces_the_file_only_when_complete(tmp_path, monkeypatch):
    old = write_synthetic(str(tmp_path / "demos.hdf5"), n_demos=8, T=5, image_size=16)
    before = open(old, "rb").read()
    (tmp_path / "demos.hdf5.new").write_text("the user's")   # a name people give files: never sim.py's to delete
    one_line(script("sim.py", "--tasks", "lift", "--episodes", "1", "--out", old, "--overwrite", "--workers", "0"),
             "--workers")
    monkeypatch.setattr(sim, "check_gl", lambda: None)
    argv = ["sim.py", "--tasks", "lift", "--episodes", "2", "--out", old, "--overwrite", "--workers", "1",
            "--image-size", "16"]
    monkeypatch.setattr(sys, "argv", argv)
    calls = []

    def crash_on_second(job):
        calls.append(job)
        if len(calls) == 2:
            raise RuntimeError("the simulator died")
        return fake_episode(job)
    monkeypatch.setattr(sim, "_episode", crash_on_second)
    with pytest.raises(RuntimeError):
        sim.main()
    assert open(old, "rb").read() == before and sorted(os.listdir(tmp_path)) == ["demos.hdf5", "demos.hdf5.new"]
    monkeypatch.setattr(sim, "_episode", fake_episode)
    sim.main()
    with h5py.File(old) as f:
        assert sorted(f["data"]) == ["demo_0", "demo_1"] and f["data/demo_0"].attrs["task"] == "lift"
    assert sorted(os.listdir(tmp_path)) == ["demos.hdf5", "demos.hdf5.new"]
    assert (tmp_path / "demos.hdf5.new").read_text() == "the user's"
    # --extend checks the demos there before writing anything: another project's file, or other cameras or sizes
    libero = str(tmp_path / "libero.hdf5")
    with h5py.File(libero, "w") as f:
        f["data/demo_0/obs/agentview_rgb"] = np.zeros((3, 16, 16, 3), np.uint8)
        f["data/demo_0"].attrs["num_samples"] = 3
    for path, size, words in ((libero, "16", "did not collect"), (old, "32", "('agentview', 16)")):
        before = open(path, "rb").read()
        monkeypatch.setattr(sys, "argv", ["sim.py", "--tasks", "lift", "--episodes", "3", "--out", path, "--extend",
                                          "--workers", "1", "--image-size", size])
        with pytest.raises(SystemExit):
            sim.main()
        assert open(path, "rb").read() == before, path
    one_line(script("sim.py", "--out", str(tmp_path)), "a folder")
    one_line(script("sim.py", "--out", os.path.join(ROOT, "README.md"), "--overwrite"), "not HDF5")


# 3. the NaN guard: names the step, keeps a checkpoint that resumes, tells the truth when there is none ------------

def test_nan_guard_keeps_a_resumable_checkpoint_and_names_the_step(run, synthetic, tmp_path):
    resumed = str(tmp_path / "resumed")
    shutil.copytree(run, resumed)
    common = ["--data", synthetic, "--rscl", "--max-iters", "2", "--out", resumed, *FAST]
    r = script("train.py", *common[:4], "6", *common[5:], "--resume")
    one_line(r, "--max-iters 6 (checkpoint: 2)")            # a longer schedule is another experiment
    # a run whose lr explodes: every step checkpoints, yet no checkpoint holds weights from a bad step
    fresh = str(tmp_path / "fresh")
    args = ["--data", synthetic, "--max-iters", "8", "--out", fresh, *FAST]
    assert script("train.py", *args, "--ckpt-every", "1", "--stop-after", "2").returncode == 0
    good = open(os.path.join(fresh, "ckpt.pt"), "rb").read()
    r = script("train.py", *args, "--ckpt-every", "1", "--resume", "--lr", "1e30")
    line = one_line(r, "last good checkpoint (step 2)")
    assert r.returncode == 3 and open(os.path.join(fresh, "ckpt.pt"), "rb").read() == good, line
    r = script("train.py", *args, "--ckpt-every", "1", "--resume")   # the kept checkpoint resumes to the end
    assert r.returncode == 0, r.stderr
    log = [json.loads(l) for l in open(os.path.join(fresh, "log.jsonl")) if '"loss_fm"' in l and "val_" not in l]
    assert log[-1]["step"] == 8 and all(np.isfinite(row["loss_fm"]) for row in log)
    # no checkpoint yet: the message says so, names the step the NaN appeared (not the checked one), keeps no folder
    r = script("train.py", "--data", synthetic, "--max-iters", "8", "--out", str(tmp_path / "none"), *FAST[:4],
               "--log-every", "5", "--lr", "1e30")
    line = one_line(r, "no checkpoint had been written")
    step = int(line.split("at step ")[1].split(":")[0])
    assert r.returncode == 3 and step < 5 and not (tmp_path / "none").exists(), line


# 4 and 7. every flag's range, at parse time, in every script ---------------------------------------------------------

def test_flags_out_of_range_are_one_line_and_write_nothing(run, synthetic, tmp_path):
    ckpt, out = os.path.join(run, "ckpt.pt"), str(tmp_path / "out")
    (tmp_path / "file").write_text("")
    for args, words in ((["--max-iters", "0"], ["--max-iters"]), (["--horizon", "-1"], ["--horizon"]),
                        (["--ckpt-every", "0"], ["--ckpt-every"]), (["--lr", "nan"], ["--lr"]), (["--out", str(tmp_path / "file")], ["is a file"]),
                        (["--device", "cuda:7" if not torch_cuda() else "tpu"], ["--device"]),
                        (["--max-iters", "ten"], ["--max-iters", "--help"])):
        one_line(script("train.py", "--data", synthetic, *(["--out", out] if "--out" not in args else []), *args), *words)
    for args, words in ((["--execute", "0"], ["--execute"]), (["--execute", "-2"], ["--execute"]),
                        (["--execute", "17"], ["chunk of 16"]), (["--horizon", "-5"], ["--horizon"]),
                        (["--workers", "0"], ["--workers"])):
        one_line(script("evaluate.py", ckpt, "--out", out, *args), *words)
    one_line(script("cknna.py", ckpt, "--data", synthetic, "--topk", "0", "--out", out), "--topk")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def torch_cuda():
    import torch
    return torch.cuda.is_available()


# 5. --resume refuses what changes the experiment, by name, and accepts the rest ------------------------------------

def test_resume_refuses_flags_that_change_the_experiment(run, synthetic, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(run, copy)
    before = open(os.path.join(copy, "ckpt.pt"), "rb").read()
    base = ["--data", synthetic, "--max-iters", "2", "--ckpt-every", "1", "--out", copy, "--resume", *FAST]
    one_line(script("train.py", *base, "--cameras", "agentview"), "--rscl off (checkpoint: on)", "--cameras agentview")
    one_line(script("train.py", *base, "--rscl", "--beta", "0.1", "--sampling", "uniform"), "--beta 0.1", "--sampling")
    one_line(script("train.py", *base, "--rscl", "--image-flip", "vflip"), "--image-flip vflip (checkpoint: none)")
    assert open(os.path.join(copy, "ckpt.pt"), "rb").read() == before
    r = script("train.py", *base, "--rscl", "--workers", "1", "--log-every", "2", "--eval-every", "5", "--device", "cpu",
               "--layout", "robomimic", "--image-flip", "none", "--orientation", "quat_xyzw")   # the defaults, named
    assert r.returncode == 0, r.stderr


def test_evaluate_refuses_a_checkpoint_whose_data_the_simulator_does_not_give(synthetic, tmp_path):
    """A run trained on flipped frames (or another q) would be fed the simulator's upright frames and 10-D q: refused."""
    out = str(tmp_path / "flipped")
    assert script("train.py", "--data", synthetic, "--image-flip", "vflip", "--max-iters", "1", "--out", out,
                  *FAST).returncode == 0
    one_line(script("evaluate.py", os.path.join(out, "ckpt.pt"), "--out", str(tmp_path / "ev")), "--image-flip vflip",
             "upright")
    assert sorted(os.listdir(tmp_path)) == ["flipped"]


# 6. every demo is checked when a data set is opened -----------------------------------------------------------------

def test_every_demo_is_checked_when_the_data_is_opened(synthetic, tmp_path):
    def broken(name, change, n_demos=4):
        path = write_synthetic(str(tmp_path / f"{name}.hdf5"), n_demos=n_demos, T=10, image_size=16)
        with h5py.File(path, "a") as f:
            change(f["data"])
        return path

    def replace(d, key, value):
        del d[key]
        d[key] = value
    cases = {   # the last demo is the validation one: a check of the first demo alone misses all of these
        "nan in validation": (lambda d: d["demo_3/actions"].__setitem__((2, 1), np.nan), "NaN"),
        "missing key": (lambda d: d["demo_2/obs"].__delitem__("robot0_eef_quat"), "robot0_eef_quat"),
        "action width": (lambda d: replace(d, "demo_3/actions", np.zeros((10, 6), np.float32)), "6-D actions"),
        "image size": (lambda d: replace(d, "demo_2/obs/frontview_image", np.zeros((10, 20, 20, 3), np.uint8)), "(20, 20, 3)"),
        "image dtype": (lambda d: replace(d, "demo_3/obs/agentview_image", np.zeros((10, 16, 16, 3), np.float32)), "float32"),
        "length": (lambda d: replace(d, "demo_1/actions", np.zeros((4, 7), np.float32)), "one row per step"),
        "demo key": (lambda d: d.move("demo_2", "demo_two"), "demo_two"),
    }
    for name, (change, words) in cases.items():
        with pytest.raises(DataError, match=None) as e:
            DemoDataset(broken(name.replace(" ", "_"), change), CAMS, split="train")
        assert words in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    single = broken("single", lambda d: None, n_demos=1)
    with pytest.raises(DataError, match="split is empty"):
        DemoDataset(single, CAMS, split="val")
    # through train.py: one line, and no run folder
    out = str(tmp_path / "run")
    one_line(script("train.py", "--data", str(tmp_path / "nan_in_validation.hdf5"), "--out", out, *FAST), "NaN", "demo_3")
    one_line(script("train.py", "--data", single, "--out", out, *FAST), "split is empty")
    assert not os.path.exists(out)


# 7. a damaged feature cache is never taken for a whole one ----------------------------------------------------------

def test_a_damaged_feature_cache_is_rebuilt(synthetic, tmp_path, capsys):
    from backbone import Backbone
    from features import build_cache
    ds = DemoDataset(synthetic, CAMS, split="val")
    bb = Backbone("tiny")
    root = str(tmp_path / "cache")
    whole = build_cache(bb, ds, root, "val", 8)
    reference = np.asarray(whole.feats[len(ds) - 1]).copy()
    (folder,) = [os.path.join(root, k) for k in os.listdir(root)]
    for damage in (lambda: open(os.path.join(folder, "feats.f16"), "r+b").truncate(1000),
                   lambda: os.remove(os.path.join(folder, "mask.npy")),
                   lambda: open(os.path.join(folder, "meta.json"), "w").write("{")):
        damage()
        again = build_cache(bb, ds, root, "val", 8)
        assert "rebuilding" in capsys.readouterr().err
        assert np.array_equal(np.asarray(again.feats[len(ds) - 1]), reference)
        assert os.listdir(root) == [os.path.basename(folder)]   # no temp folder left beside it


# 8. a failed start leaves nothing; --overwrite starts a fresh log -------------------------------------------------------

def test_failed_starts_leave_nothing_and_overwrite_never_appends(run, synthetic, tmp_path):
    out = str(tmp_path / "run")
    for name in ("run.old", "run.new"):   # the user's own folders beside it, named as people name them
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text("the user's")
    r = script("train.py", "--data", synthetic, "--out", out, "--max-iters", "3", "--lr", "1e30", *FAST)
    one_line(r, "no checkpoint")
    assert not os.path.exists(out)                                       # the next attempt is not told "exists"
    # killed (`kill`, SIGTERM) before its first checkpoint: nothing is left either
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--data", synthetic, "--out", out,
                          "--max-iters", "100000", "--ckpt-every", "100000", *FAST], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):   # until its first logged step
        logs = [os.path.join(tmp_path, d, "log.jsonl") for d in os.listdir(tmp_path) if d.startswith("run.incomplete")]
        if logs and os.path.isfile(logs[0]) and os.path.getsize(logs[0]):
            break
        time.sleep(0.5)
    p.terminate()
    assert p.wait(60) == 143 and logs and sorted(os.listdir(tmp_path)) == ["run.new", "run.old"]
    assert script("train.py", "--data", synthetic, "--out", out, "--max-iters", "2", *FAST).returncode == 0
    first = open(os.path.join(out, "log.jsonl")).read()
    (tmp_path / "run" / "notes.txt").write_text("from the first run")
    # a failed --overwrite keeps the old run whole
    one_line(script("train.py", "--data", synthetic, "--out", out, "--max-iters", "3", "--lr", "1e30", "--overwrite", *FAST),
             "no checkpoint")
    assert open(os.path.join(out, "log.jsonl")).read() == first and os.path.exists(os.path.join(out, "notes.txt"))
    # a successful one replaces it: a fresh log, no file of the old run
    assert script("train.py", "--data", synthetic, "--out", out, "--max-iters", "3", "--overwrite", *FAST).returncode == 0
    steps = [json.loads(l)["step"] for l in open(os.path.join(out, "log.jsonl")) if '"loss_fm"' in l and "val_" not in l]
    assert steps == [1, 2, 3] and sorted(os.listdir(out)) == ["ckpt.pt", "config.json", "log.jsonl"]
    assert sorted(os.listdir(tmp_path)) == ["run", "run.new", "run.old"]
    assert all(os.listdir(tmp_path / n) == ["mine.txt"] for n in ("run.old", "run.new"))   # nothing of theirs touched
    # --overwrite replaces a run folder, never a folder of other things (e.g. the folder holding every run)
    one_line(script("train.py", "--data", synthetic, "--out", str(tmp_path), "--overwrite", *FAST), "not a run folder")
    assert sorted(os.listdir(tmp_path)) == ["run", "run.new", "run.old"]
