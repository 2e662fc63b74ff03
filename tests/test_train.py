"""train.py end to end in subprocesses: a short run, exact resume, and every bad input."""
import json
import os
import subprocess
import sys

import h5py
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--batch-size", "4", "--eval-every", "100", "--eval-iters", "1", "--log-every", "1", "--ckpt-every", "100"]


def train(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def rows(run):
    return [json.loads(l) for l in open(os.path.join(run, "log.jsonl")) if "loss_fm" in l and "val" not in l]


def bad(result, *words):
    """One clear line on stderr, a non-zero exit, no traceback."""
    assert result.returncode != 0
    err = [l for l in result.stderr.strip().splitlines() if "%|" not in l and l.strip()]   # minus the bar
    assert "Traceback" not in result.stderr and len(err) == 1 and err[0].startswith("error: "), result.stderr
    for w in words:
        assert w in err[0], err[0]


def test_short_rscl_run_logs_every_value_and_checkpoints(synthetic, tmp_path):
    run = str(tmp_path / "run")
    r = train("--data", synthetic, "--rscl", "--max-iters", "4", "--out", run, *FAST, "--cknna-every", "4")
    assert r.returncode == 0, r.stderr
    log = rows(run)
    assert [row["step"] for row in log] == [1, 2, 3, 4]
    for key in ("loss_fm", "loss_rscl", "lam", "lr", "samples_per_s", "w_entropy", "cos_z", "grad_norm"):
        assert all(key in row for row in log), key
    assert log[0]["lam"] == 1.0 and log[-1]["lam"] < log[0]["lam"]
    evals = [json.loads(l) for l in open(os.path.join(run, "log.jsonl")) if "val_loss_fm" in l]
    assert len(evals) == 1 and "val_cknna_h_q" in evals[0]
    ckpt = torch.load(os.path.join(run, "ckpt.pt"), weights_only=True)   # plain types only
    assert ckpt["step"] == 4 and ckpt["config"]["rscl"] is True
    assert not any(k.startswith("backbone.") for k in ckpt["model"])


def test_resume_reproduces_the_uninterrupted_run(synthetic, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = ["--data", synthetic, "--rscl", "--max-iters", "6", *FAST]
    assert train(*common, "--out", a).returncode == 0
    assert train(*common, "--out", b, "--stop-after", "3").returncode == 0
    assert [r["step"] for r in rows(b)] == [1, 2, 3]
    r = train(*common, "--out", b, "--resume")
    assert r.returncode == 0, r.stderr
    for ra, rb in zip(rows(a), rows(b)):
        assert ra["step"] == rb["step"]
        assert ra["loss_fm"] == rb["loss_fm"] and ra["loss_rscl"] == rb["loss_rscl"]
    assert len(rows(b)) == 6


def test_a_new_run_never_overwrites_an_existing_folder(synthetic, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep")
    bad(train("--data", synthetic, "--out", str(run), "--max-iters", "2", *FAST), "already exists", "--resume")
    assert (run / "precious.txt").read_text() == "keep" and len(os.listdir(run)) == 1


def test_bad_data_files(synthetic, tmp_path):
    bad(train("--data", str(tmp_path / "none.hdf5")), "does not exist", "sim.py")
    (tmp_path / "junk.hdf5").write_text("not hdf5")
    bad(train("--data", str(tmp_path / "junk.hdf5")), "cannot be read")
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f["images"] = [1, 2]
        f["labels"] = [0, 1]
    bad(train("--data", str(tmp_path / "other.hdf5")), "['images', 'labels']")
    bad(train("--data", synthetic, "--cameras", "agentview,birdview"), "birdview", "agentview_image")
    bad(train("--data", synthetic, "--proprio-keys", "ee_pos,ee_quat,gripper"), "ee_pos", "--proprio-keys")


def test_bad_flags(synthetic, tmp_path):
    bad(train("--data", synthetic, "--rscl", "--batch-size", "1"), "--batch-size >= 2")
    bad(train("--data", synthetic, "--backbone", "llava"), "llava", "qwen2.5-vl-3b", "siglip2")
    bad(train("--data", synthetic, "--size", "huge"), "huge", "tiny", "paper")
    bad(train("--data", synthetic, "--backbone", "qwen2.5-vl-3b", "--backbone-path", str(tmp_path / "w"),
              "--out", str(tmp_path / "r")), "--backbone-path")
    assert not (tmp_path / "r").exists()


def test_bad_checkpoints_and_nan_keep_the_last_good_checkpoint(synthetic, tmp_path):
    run = str(tmp_path / "run")
    ckpt = os.path.join(run, "ckpt.pt")
    common = ["--data", synthetic, "--max-iters", "6", "--out", run, *FAST]
    assert train(*common, "--stop-after", "2").returncode == 0
    good = open(ckpt, "rb").read()
    bad(train(*common, "--resume", "--horizon", "8"), "does not fit")           # another configuration
    assert open(ckpt, "rb").read() == good
    r = train(*common, "--resume", "--lr", "1e30")                                # the loss blows up
    bad(r, "loss is", "last good checkpoint")
    assert r.returncode == 3 and open(ckpt, "rb").read() == good
    open(ckpt, "wb").write(good[: len(good) // 2])                              # a truncated file
    bad(train(*common, "--resume"), "truncated")
    bad(train("--data", synthetic, "--out", str(tmp_path / "none"), "--resume"), "no ", "ckpt.pt")


def test_training_from_the_feature_cache_matches_live_training(synthetic, tmp_path):
    live, cached = str(tmp_path / "live"), str(tmp_path / "cached")
    common = ["--data", synthetic, "--rscl", "--max-iters", "4", *FAST, "--cache-dir", str(tmp_path / "cache")]
    assert train(*common, "--out", live).returncode == 0
    r = train(*common, "--out", cached, "--cache-features", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert len(os.listdir(tmp_path / "cache")) == 2                        # train and val, keyed
    for a, b in zip(rows(live), rows(cached)):
        # the same batches and noise; only the 16-bit storage of the features differs
        assert abs(a["loss_fm"] - b["loss_fm"]) < 1e-2 * a["loss_fm"]
        assert abs(a["loss_rscl"] - b["loss_rscl"]) < 1e-2 * a["loss_rscl"]
    assert any(a["loss_rscl"] != b["loss_rscl"] for a, b in zip(rows(live), rows(cached)))   # really from the cache
    bad(train(*common, "--out", str(tmp_path / "x"), "--cache-features", "--augment"), "--augment")


def test_ema_weights_are_saved_and_chosen_at_load(synthetic, tmp_path):
    from model import Policy
    run = str(tmp_path / "run")
    r = train("--data", synthetic, "--max-iters", "3", "--out", run, "--ema", "0.5", "--lr", "1e-2", *FAST)
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(os.path.join(run, "ckpt.pt"), weights_only=True)
    n = "dit.head.weight"   # zero at init, so after 3 steps with decay 0.5: e = 0.5 p1 / 4 + 0.5 p2 / 2 + 0.5 p3
    assert not torch.equal(ckpt["ema"][n], ckpt["model"][n]) and ckpt["ema"][n].abs().sum() > 0
    ema = Policy.from_checkpoint(os.path.join(run, "ckpt.pt"), weights="auto")
    raw = Policy.from_checkpoint(os.path.join(run, "ckpt.pt"), weights="raw")
    assert ema.weights == "ema" and raw.weights == "raw"
    assert torch.equal(dict(ema.named_parameters())[n], ckpt["ema"][n])
    assert torch.equal(dict(raw.named_parameters())[n], ckpt["model"][n])
    assert set(ckpt["ema"]) == {k for k, p in raw.named_parameters() if p.requires_grad}
    r = train("--data", synthetic, "--max-iters", "2", "--out", str(tmp_path / "plain"), *FAST)
    assert r.returncode == 0 and torch.load(str(tmp_path / "plain" / "ckpt.pt"), weights_only=True)["ema"] is None
    try:
        Policy.from_checkpoint(str(tmp_path / "plain" / "ckpt.pt"), weights="ema")
        assert False, "a checkpoint without EMA weights must be refused for --weights ema"
    except ValueError as e:
        assert "--ema" in str(e)
