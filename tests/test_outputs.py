"""Nothing lost, nothing mislabelled (issue 21): a write that fails is one line and loses nothing, one process writes
an output, --resume logs each step once and refuses data that changed, seeds out of range, sim.py --extend of a file
it did not write, leftovers of a killed run, Ctrl-C, remedies naming only flags the script has, view cutoff with one
camera. Every bad input: one line, a non-zero exit."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import pytest
import torch

import sim
from data import write_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--batch-size", "4", "--eval-every", "100", "--eval-iters", "1", "--log-every", "1"]


def script(name, *args, prefix=(), env=None):
    return subprocess.run([*prefix, sys.executable, os.path.join(ROOT, name), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)


def lines(stderr):
    """stderr without the progress bar and notes."""
    return [l for l in stderr.replace("\r", "\n").splitlines() if "%|" not in l and l.strip() and not l.startswith("note:")]


def one_line(r, *words, start="error: "):
    """One clear line on stderr (the progress bar aside), a non-zero exit, no traceback."""
    err = lines(r.stderr)
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(err) == 1 and err[0].startswith(start), r.stderr
    for w in words:
        assert w in err[0], err[0]
    return err[0]


def steps(run):
    return [json.loads(l)["step"] for l in open(os.path.join(run, "log.jsonl")) if '"loss_fm"' in l and "val_" not in l]


@pytest.fixture(scope="module")
def run(synthetic, tmp_path_factory):
    """A finished 1-step run."""
    out = str(tmp_path_factory.mktemp("runs") / "run")
    r = script("train.py", "--data", synthetic, "--max-iters", "1", "--out", out, *FAST)
    assert r.returncode == 0, r.stderr
    return out


def until(condition, what, seconds=120):
    for _ in range(int(seconds / 0.2)):
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# A. a write that fails: one line, before any work where it can be known, nothing lost ------------------------------

def test_unwritable_outputs_are_one_line_before_any_work(run, synthetic, tmp_path):
    """A read-only folder (root: without CAP_DAC_OVERRIDE, as setpriv drops it) for every script's output."""
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("root without setpriv: a read-only folder cannot be made to refuse root")
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    ckpt = os.path.join(run, "ckpt.pt")
    no_gl = dict(os.environ, MUJOCO_GL="no-such-backend")   # evaluate.py must refuse before it needs the simulator
    cases = [("train.py", ["--data", synthetic, "--out", str(ro / "r"), *FAST], "--out", None),
             ("train.py", ["--data", synthetic, "--out", str(tmp_path / "r"), "--cache-features", "--cache-dir",
                           str(ro / "cache"), *FAST], "--cache-dir", None),
             ("evaluate.py", [ckpt, "--out", str(ro / "ev")], "--out", no_gl),
             ("cknna.py", [ckpt, "--data", synthetic, "--n", "20", "--out", str(ro / "ck")], "--out", None),
             ("data.py", ["--synthetic", str(ro / "s.hdf5")], "--synthetic", None)]
    try:
        for name, args, flag, env in cases:
            line = one_line(script(name, *args, prefix=prefix, env=env), "cannot write", str(ro), "Permission denied",
                            f"give {flag} a place you can write to")
            assert os.listdir(ro) == [] and sorted(os.listdir(tmp_path)) == ["ro"], (name, line)   # no run folder
    finally:
        ro.chmod(0o755)


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_whole(synthetic, tmp_path):
    """torch.save fails with ENOSPC at the second checkpoint: one line, the first checkpoint kept, no temp file."""
    out = str(tmp_path / "run")
    code = ("import errno, runpy, sys, torch\n"
            "calls, save = [], torch.save\n"
            "def full(obj, f, *a, **k):\n"
            "    calls.append(1)\n"
            "    if len(calls) == 2:\n"
            "        f.write(b'half a checkpoint') if hasattr(f, 'write') else open(f, 'wb').write(b'half')\n"
            "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "    return save(obj, f, *a, **k)\n"
            "torch.save = full\n"
            f"sys.argv = ['train.py', '--data', {synthetic!r}, '--max-iters', '3', '--ckpt-every', '1', '--out', {out!r},"
            f" *{FAST!r}]\n"
            "runpy.run_path('train.py', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    one_line(r, f"cannot write {out}", "No space left on device", "free disk space", "last good checkpoint (step 1)")
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["step"] == 1
    assert sorted(os.listdir(out)) == ["ckpt.pt", "config.json", "log.jsonl"] and os.listdir(tmp_path) == ["run"]


# B. one process per output --------------------------------------------------------------------------------------

def test_a_second_run_on_the_same_out_is_refused(synthetic, tmp_path):
    """The issue's race: a second run on one --out started before the first's first checkpoint. Unrefused, it took the
    name at its own checkpoint, and the first later swapped its folder in over it (or the other way round)."""
    out = str(tmp_path / "run")
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--data", synthetic, "--out", out, "--seed",
                              "1", "--max-iters", "100000", "--ckpt-every", "100000", *FAST], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: any(os.path.getsize(l) for l in glob.glob(str(tmp_path / "run.incomplete-*" / "log.jsonl"))),
              "the first run's first logged step")
        r = script("train.py", "--data", synthetic, "--out", out, "--seed", "2", "--max-iters", "2", *FAST)
        one_line(r, f"{out} is being written by another process (pid {first.pid}", "give another --out")
        assert not os.path.exists(out) and len(glob.glob(str(tmp_path / "run.incomplete-*"))) == 1   # the first's alone
    finally:
        first.terminate()
        assert first.wait(60) == 143
    assert os.listdir(tmp_path) == []   # the first had no checkpoint: it keeps nothing, and its lock is gone with it


def test_a_folder_made_meanwhile_is_never_replaced(tmp_path):
    """Someone else makes out while a new run is before its first checkpoint: the run is kept beside it, not swapped in."""
    from runfolder import RunFolder
    out = str(tmp_path / "run")
    folder = RunFolder(out, False)
    folder.start(dict(args={}))
    os.makedirs(out)
    open(os.path.join(out, "theirs.txt"), "w").write("another run's")
    with pytest.raises(Exception) as e:
        folder.save(dict(step=1), 1)
    assert "another process made it" in str(e.value) and "kept whole in" in str(e.value), str(e.value)
    assert os.listdir(out) == ["theirs.txt"]
    (kept,) = glob.glob(out + ".kept-*")
    assert torch.load(os.path.join(kept, "ckpt.pt"), weights_only=True)["step"] == 1 and kept in str(e.value)


# C. --resume logs each step once ----------------------------------------------------------------------------------

def test_resume_logs_the_steps_after_the_checkpoint_once(synthetic, tmp_path):
    out = str(tmp_path / "run")
    common = ["--data", synthetic, "--max-iters", "4", "--out", out, *FAST]
    assert script("train.py", *common, "--stop-after", "2").returncode == 0
    with open(os.path.join(out, "log.jsonl"), "a") as f:   # what a run killed after step 3 had logged, and a torn line
        f.write(json.dumps(dict(step=3, loss_fm=999.0)) + "\n" + '{"step": 4, "loss_f')
    r = script("train.py", *common, "--resume")
    assert r.returncode == 0, r.stderr
    assert steps(out) == [1, 2, 3, 4]
    assert all(json.loads(l).get("loss_fm") != 999.0 for l in open(os.path.join(out, "log.jsonl")))


# D. --resume refuses data whose content changed ---------------------------------------------------------------------

def test_resume_refuses_data_that_changed_since(synthetic, tmp_path):
    data, out = str(tmp_path / "demos.hdf5"), str(tmp_path / "run")
    shutil.copy(synthetic, data)
    common = ["--data", data, "--max-iters", "3", "--out", out, *FAST]
    assert script("train.py", *common, "--stop-after", "1").returncode == 0
    before = open(os.path.join(out, "ckpt.pt"), "rb").read()
    with h5py.File(data, "a") as f:   # what sim.py --extend does: one more demo
        f.copy(f["data/demo_0"], "data/demo_6")
    one_line(script("train.py", *common, "--resume"), "--resume", f"--data {data} is not the data this run was "
             "trained on", "another --out")
    os.remove(data)
    write_synthetic(data, n_demos=6, T=20, image_size=16)   # regenerated at another image size
    one_line(script("train.py", *common, "--resume"), "is not the data this run was trained on")
    assert open(os.path.join(out, "ckpt.pt"), "rb").read() == before and steps(out) == [1]


# F. seeds outside [0, 2**32 - 1] --------------------------------------------------------------------------------------

def test_seeds_out_of_range_are_one_line(run, synthetic, tmp_path):
    huge, out = "99999999999999999999", str(tmp_path / "out")
    for seed in (huge, str(2**32), "-1"):
        one_line(script("train.py", "--data", synthetic, "--out", out, "--seed", seed), "--seed must be in [0, 4294967295]")
        one_line(script("evaluate.py", os.path.join(run, "ckpt.pt"), "--out", out, "--seed", seed),
                 "--seed must be in [0, 4294967295]")
    one_line(script("sim.py", "--out", out, "--seed", huge), "--seed must be in")
    assert os.listdir(tmp_path) == []


# G. sim.py --extend only a file sim.py wrote -----------------------------------------------------------------------

def test_sim_extend_refuses_a_file_it_did_not_write(tmp_path, monkeypatch):
    from test_safety import fake_episode
    path = write_synthetic(str(tmp_path / "demos.hdf5"), n_demos=4, T=5, image_size=16)   # data.py's, cameras alike
    before = open(path, "rb").read()
    monkeypatch.setattr(sim, "check_gl", lambda: None)
    monkeypatch.setattr(sim, "_episode", fake_episode)
    monkeypatch.setattr(sys, "argv", ["sim.py", "--tasks", "lift", "--episodes", "2", "--out", path, "--extend",
                                      "--workers", "1", "--image-size", "16"])
    with pytest.raises(SystemExit) as e:
        sim.main()
    assert e.value.code == 2 and open(path, "rb").read() == before
    with h5py.File(path) as f:
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == "Synthetic" and len(f["data"]) == 4


# smaller: leftovers of a killed run, Ctrl-C, remedies, view cutoff with one camera -------------------------------------

def test_a_killed_runs_incomplete_folder_is_removed_at_the_next_start(synthetic, tmp_path):
    out = str(tmp_path / "run")
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--data", synthetic, "--out", out,
                          "--max-iters", "100000", "--ckpt-every", "100000", *FAST], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    until(lambda: any(os.path.getsize(l) for l in glob.glob(str(tmp_path / "run.incomplete-*" / "log.jsonl"))),
          "its first logged step")
    p.kill()   # SIGKILL: no atexit, no handler
    p.wait(60)
    assert len(glob.glob(str(tmp_path / "run.incomplete-*"))) == 1
    assert script("train.py", "--data", synthetic, "--out", out, "--max-iters", "1", *FAST).returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_ctrl_c_that_lands_in_a_destructor_still_stops_the_run_with_one_line(tmp_path):
    """Python swallows an exit raised inside __del__ or a weakref callback (it printed "Exception ignored" and training
    went on, which hung CI once): the run must still end, at its next step, with the one line and 130."""
    code = f"""
import os, signal
from runfolder import RunFolder
folder = RunFolder({str(tmp_path / "run")!r}, resume=False, claim=True)
class Lands:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)   # the handler runs here, inside the destructor
Lands()
print("went on")
folder.check_stop()
print("not stopped")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["went", "on"], r.stdout   # the exit was swallowed where it landed...
    one_line(r, "interrupted: no checkpoint had been written", start="interrupted")   # ...not its line, and no trace
    assert r.returncode == 130 and "Exception ignored" not in r.stderr


def test_ctrl_c_is_one_line_saying_what_is_kept(run, synthetic, tmp_path):
    out = str(tmp_path / "run")
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--data", synthetic, "--out", out,
                          "--max-iters", "100000", "--ckpt-every", "2", *FAST], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    until(lambda: os.path.isfile(os.path.join(out, "ckpt.pt")), "its first checkpoint")
    os.killpg(p.pid, signal.SIGINT)   # as a terminal's Ctrl-C: the whole process group
    r = subprocess.CompletedProcess(p.args, 0, *p.communicate(timeout=60))   # reads stderr while it ends
    r.returncode = p.returncode
    line = one_line(r, "interrupted: the last good checkpoint (step ", "continue it with --resume", start="interrupted")
    assert r.returncode == 130 and int(line.split("(step ")[1].split(")")[0]) >= 2
    assert sorted(os.listdir(tmp_path)) == ["run"]
    # evaluate.py: Ctrl-C during the episodes, its workers (which import robosuite) included
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "evaluate.py"), os.path.join(run, "ckpt.pt"), "--out",
                          str(tmp_path / "ev"), "--episodes", "50"], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True, env=dict(os.environ, MUJOCO_GL="egl"))
    until(lambda: glob.glob(str(tmp_path / "ev.incomplete-*")), "evaluate.py to start")
    time.sleep(3)
    os.killpg(p.pid, signal.SIGINT)
    r = subprocess.CompletedProcess(p.args, 0, *p.communicate(timeout=60))   # reads stderr while it ends
    r.returncode = p.returncode
    one_line(r, "interrupted: nothing was written", start="interrupted")
    assert r.returncode == 130 and sorted(os.listdir(tmp_path)) == ["run"]


def test_remedies_name_only_flags_the_script_has(run, synthetic, tmp_path):
    out = str(tmp_path / "out")
    line = one_line(script("train.py", "--data", synthetic, "--layout", "lerobot", "--out", out), "--layout robomimic")
    assert "--action-key" not in line, line   # none was passed
    two = write_synthetic(str(tmp_path / "two.hdf5"), n_demos=4, T=20, image_size=32,
                          cameras=("agentview", "robot0_eye_in_hand"))   # the run read frontview too
    line = one_line(script("cknna.py", os.path.join(run, "ckpt.pt"), "--data", two, "--n", "20", "--out", out),
                    "lacks ['frontview']", "--proprio-keys")
    assert "--layout" not in line and "--cameras" not in line, line   # cknna.py has neither
    one_line(script("train.py", "--data", two, "--cameras", "frontview", "--out", out), "--cameras")   # train.py has it
    assert sorted(os.listdir(tmp_path)) == ["two.hdf5"]


def test_view_cutoff_with_one_camera_is_refused(synthetic, tmp_path):
    out = str(tmp_path / "run")
    one_line(script("train.py", "--data", synthetic, "--cameras", "agentview", "--rscl", "--max-iters", "1", "--out", out,
                    *FAST), "--cutoff view with one camera (agentview)", "--cutoff token or span")
    assert os.listdir(tmp_path) == []
