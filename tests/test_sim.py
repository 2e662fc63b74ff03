"""The simulator: proprio convention, exact seeding, the collector's layout, evaluate.py end to end,
and bad input. Tests that render skip, with the reason, where no offscreen GL backend works."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import sim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gl_works():
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import mujoco
        ctx = mujoco.GLContext(32, 32)
        ctx.make_current()
        ctx.free()
        return True
    except Exception:
        return False


needs_gl = pytest.mark.skipif(not gl_works(), reason="no offscreen GL backend (install libegl1 libgl1-mesa-dri or "
                                                      "libosmesa6 and set MUJOCO_GL): see README troubleshooting")


def test_observation_gives_the_documented_proprio():
    s = np.sin(np.pi / 4)
    obs = {"robot0_eef_pos": np.array([0.1, -0.2, 0.9]), "robot0_eef_quat": np.array([0.0, 0.0, s, s]),  # 90 deg about z, xyzw
           "robot0_gripper_qpos": np.array([0.03, -0.03]), "agentview_image": np.zeros((8, 8, 3), np.uint8)}
    q = sim.observation(obs, ["agentview"])["q"]
    R = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])             # the known rotation
    assert q.shape == (10,) and q.dtype == np.float32
    assert np.allclose(q[:3], [0.1, -0.2, 0.9])
    assert np.allclose(q[3:6], R[:, 0], atol=1e-6) and np.allclose(q[6:9], R[:, 1], atol=1e-6)   # columns, not rows
    assert np.isclose(q[9], 0.06)


def test_appearances_are_seeded_and_seen_unseen_disjoint():
    import colorsys
    assert sim.appearance("seen", 3) == sim.appearance("seen", 3) != sim.appearance("seen", 4)
    hue = lambda rgb: colorsys.rgb_to_hsv(*rgb)[0]
    seen = [hue(sim.appearance("seen", i)["table"]) for i in range(50)]
    unseen = [hue(sim.appearance("unseen", i)["table"]) for i in range(50)]
    assert max(seen) <= 0.5 <= min(unseen)
    assert sim.episode_seed("collect", "lift", 5) != sim.episode_seed("eval", "lift", 5)
    collect = {sim.episode_seed("collect", t, i) for t in sim.TASKS for i in range(1000)}
    assert not collect & {sim.episode_seed("eval", t, i) for t in sim.TASKS for i in range(1000)}


@needs_gl
def test_same_seed_same_episode():
    env = sim.make_env("lift", image_size=32)
    def run(seed):
        obs = sim.reset(env, seed, sim.appearance("seen", seed))
        expert = sim.Expert(env)
        for _ in range(5):
            obs, *_ = env.step(expert.act(obs))
        return sim.observation(obs)["images"], env.sim.get_state().flatten()
    (i1, s1), (i2, s2), (i3, s3) = run(7), run(7), run(8)
    assert np.array_equal(i1, i2) and np.array_equal(s1, s2)
    assert not np.array_equal(s1, s3) and not np.array_equal(i1, i3)
    env.close()


@needs_gl
def test_collection_writes_the_documented_layout_and_evaluate_runs(tmp_path):
    out = tmp_path / "demos.hdf5"
    r = subprocess.run([sys.executable, "sim.py", "--tasks", "lift", "--episodes", "2", "--out", str(out),
                        "--image-size", "32"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        assert sorted(f["data"]) == ["demo_0", "demo_1"] and json.loads(f["data"].attrs["env_args"])["type"] == 1
        g = f["data/demo_0"]
        T = g.attrs["num_samples"]
        assert g.attrs["instruction"] == sim.TASKS["lift"]["instruction"] and g.attrs["task"] == "lift"
        assert json.loads(g.attrs["appearance"])["split"] == "seen"
        assert {int(f[f"data/{d}"].attrs["seed"]) for d in f["data"]} == {sim.episode_seed("collect", "lift", i) for i in (0, 1)}
        assert g["actions"].shape == (T, 7) and g["actions"].dtype == np.float32 and np.abs(g["actions"][:]).max() <= 1
        assert g["rewards"].shape == (T,) and g["dones"][-1] == 1 and g["states"].shape[0] == T
        for cam in sim.CAMERAS:
            assert g[f"obs/{cam}_image"].shape == (T, 32, 32, 3) and g[f"obs/{cam}_image"].dtype == np.uint8
        assert g["obs/robot0_eef_pos"].shape == (T, 3) and g["obs/robot0_eef_quat"].shape == (T, 4)
        assert f["data"].attrs["total"] == sum(f[f"data/{d}"].attrs["num_samples"] for d in f["data"])
    # a tiny checkpoint trained on it, evaluated for one short episode in closed loop
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "train.py", "--data", str(out), "--max-iters", "2", "--batch-size", "4",
                        "--out", str(run), "--log-every", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "evaluate.py", str(run / "ckpt.pt"), "--tasks", "lift", "--episodes", "1",
                        "--horizon", "16", "--workers", "1", "--videos", "1", "--out", str(tmp_path / "ev")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.load(open(tmp_path / "ev" / "results.json"))
    assert res["summary"]["lift"]["episodes"] == 1 and res["episodes"]["lift"][0]["steps"] >= 16
    assert (tmp_path / "ev" / "lift_0.gif").stat().st_size > 0
    # an unknown task
    r = subprocess.run([sys.executable, "evaluate.py", str(run / "ckpt.pt"), "--tasks", "nope"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "lift, can, stack" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_refuses_a_checkpoint_the_simulator_cannot_feed(tmp_path):
    from data import write_synthetic
    data = write_synthetic(str(tmp_path / "s.hdf5"), n_demos=3, T=10, image_size=32, cameras=("left", "right"))
    r = subprocess.run([sys.executable, "train.py", "--data", data, "--cameras", "left,right", "--max-iters", "1",
                        "--batch-size", "2", "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "evaluate.py", str(tmp_path / "run" / "ckpt.pt")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "['left', 'right']" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "eval-seen").exists()


def test_collector_bad_input(tmp_path):
    def run(*a):
        return subprocess.run([sys.executable, "sim.py", *a], cwd=ROOT, capture_output=True, text=True, timeout=120)
    for args, words in ((["--tasks", "lift,pour"], ["pour", "lift, can, stack"]), (["--episodes", "0"], ["--episodes"]),
                        (["--cameras", "agentview,sideview"], ["sideview"])):
        r = run(*args, "--out", str(tmp_path / "x.hdf5"))
        assert r.returncode != 0 and "Traceback" not in r.stderr and all(w in r.stderr for w in words), r.stderr
    existing = tmp_path / "old.hdf5"
    existing.write_bytes(b"precious")
    r = run("--out", str(existing))
    assert r.returncode != 0 and "--extend" in r.stderr and "Traceback" not in r.stderr
    assert existing.read_bytes() == b"precious"
