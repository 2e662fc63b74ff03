"""The simulator: proprio convention, exact seeding, appearances, two envs in one process, the
collector's layout and resumption, evaluate.py end to end, and bad input. Tests that render skip,
with the reason, where no offscreen GL backend works."""
import colorsys
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import sim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GL_ERROR = sim.gl_error()   # None, or the one line saying what to install
needs_gl = pytest.mark.skipif(GL_ERROR is not None, reason=str(GL_ERROR))


def collector(*args, timeout=300):
    return subprocess.run([sys.executable, "sim.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_observation_gives_the_documented_proprio():
    s = np.sin(np.pi / 4)
    obs = {"robot0_eef_pos": np.array([0.1, -0.2, 0.9]), "robot0_eef_quat": np.array([0.0, 0.0, s, s]),  # 90 deg about z, xyzw
           "robot0_gripper_qpos": np.array([0.03, -0.03]), "agentview_image": np.zeros((8, 8, 3), np.uint8)}
    o = sim.observation(obs, ["agentview"])
    q = o["q"]
    R = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])             # the known rotation
    assert q.shape == (10,) and q.dtype == np.float32
    assert np.allclose(q[:3], [0.1, -0.2, 0.9])
    assert np.allclose(q[3:6], R[:, 0], atol=1e-6) and np.allclose(q[6:9], R[:, 1], atol=1e-6)   # columns, not rows
    assert np.isclose(q[9], 0.06)
    assert o["images"].shape == (1, 8, 8, 3) and set(o["raw"]) == set(sim.PROPRIO_KEYS)


def test_appearances_are_seeded_and_seen_unseen_disjoint():
    assert sim.appearance("seen", 3) == sim.appearance("seen", 3) != sim.appearance("seen", 4)
    json.dumps(sim.appearance("unseen", 3))   # stored as a JSON attribute
    assert sim.appearance("none", 3) is None   # the stock look (evaluate.py --appearance none)
    hue = lambda rgb: colorsys.rgb_to_hsv(*rgb)[0]
    for key in ("table", "floor", "walls", "object"):
        seen = [hue(sim.appearance("seen", i)[key]) for i in range(200)]
        unseen = [hue(sim.appearance("unseen", i)[key]) for i in range(200)]
        assert max(seen) <= 0.5 <= min(unseen), key
    assert sim.episode_seed("collect", "lift", 5) != sim.episode_seed("eval", "lift", 5)
    collect = {sim.episode_seed("collect", t, i) for t in sim.TASKS for i in range(1000)}
    assert len(collect) == 3000
    assert not collect & {sim.episode_seed("eval", t, i) for t in sim.TASKS for i in range(1000)}


@needs_gl
def test_same_seed_same_episode_and_stock_look_restored():
    env = sim.make_env("lift", image_size=32)

    def run(seed, look):
        obs = sim.reset(env, seed, look)
        first = sim.observation(obs)["images"]
        expert = sim.Expert(env, sim.TASKS["lift"]["expert"])
        for _ in range(5):
            obs, *_ = env.step(expert.act(obs))
        return first, sim.observation(obs)["images"], env.sim.get_state().flatten()

    a, b = run(7, sim.appearance("seen", 7)), run(7, sim.appearance("seen", 7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = run(8, sim.appearance("seen", 8))
    assert not np.array_equal(a[2], c[2]) and not np.array_equal(a[1], c[1])
    d = run(7, sim.appearance("unseen", 7))   # another look: other pixels, the same motion
    assert not np.array_equal(a[0], d[0]) and np.array_equal(a[2], d[2])
    stock = run(7, None)
    run(8, sim.appearance("unseen", 3))
    assert all(np.array_equal(x, y) for x, y in zip(stock, run(7, None)))   # a look leaves nothing behind
    env.close()


@needs_gl
def test_two_envs_in_one_process_render_their_own_scene():
    """robosuite does not make an env's GL context current before rendering: without sim's fix the first
    env renders garbage once a second one exists (as in a worker serving several tasks)."""
    env = sim.make_env("lift", image_size=32)
    alone = sim.observation(sim.reset(env, 5, None))["images"]
    other = sim.make_env("stack", image_size=32)
    sim.reset(other, 5, None)
    assert np.array_equal(sim.observation(sim.reset(env, 5, None))["images"], alone)
    env.close(), other.close()


@needs_gl
def test_collection_writes_the_documented_layout_and_evaluate_runs(tmp_path):
    out = tmp_path / "demos.hdf5"
    r = collector("--tasks", "lift", "--episodes", "2", "--out", str(out), "--image-size", "64")
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        assert sorted(f["data"]) == ["demo_0", "demo_1"]
        env_args = json.loads(f["data"].attrs["env_args"])
        assert env_args["type"] == 1 and env_args["env_name"] == "Lift"
        assert env_args["env_kwargs"]["camera_names"] == list(sim.CAMERAS) and env_args["env_kwargs"]["camera_heights"] == 64
        for k in (0, 1):
            g = f[f"data/demo_{k}"]
            T = g.attrs["num_samples"]
            assert g.attrs["instruction"] == sim.TASKS["lift"]["instruction"] and g.attrs["task"] == "lift"
            assert g.attrs["seed"] == sim.episode_seed("collect", "lift", k)
            assert json.loads(g.attrs["appearance"]) == sim.appearance("seen", int(g.attrs["seed"]))
            assert g["actions"].shape == (T, 7) and g["actions"].dtype == np.float32 and np.abs(g["actions"][:]).max() <= 1
            assert g["rewards"].shape == (T,) and g["rewards"].dtype == np.float32 and g["rewards"][-1] == 1
            assert g["dones"].dtype == np.int64 and g["dones"][-1] == 1 and g["dones"][:].sum() == 1
            assert g["states"].shape[0] == T and g["states"].dtype == np.float64
            for cam in sim.CAMERAS:
                assert g[f"obs/{cam}_image"].shape == (T, 64, 64, 3) and g[f"obs/{cam}_image"].dtype == np.uint8
            assert g["obs/robot0_eef_pos"].shape == (T, 3) and g["obs/robot0_eef_quat"].shape == (T, 4)
            assert g["obs/robot0_gripper_qpos"].shape == (T, 2)
        assert f["data"].attrs["total"] == sum(f[f"data/{d}"].attrs["num_samples"] for d in f["data"])
        # states[t] is the sim state when obs t was acted on: states[0] is the state right after the seeded reset
        # (later observations come from the kinematics before the last 2 ms substep: compare at t = 0 only)
        env = sim.make_env("lift", image_size=64)
        g = f["data/demo_1"]
        sim.reset(env, int(g.attrs["seed"]), json.loads(g.attrs["appearance"]))
        assert np.array_equal(env.sim.get_state().flatten(), g["states"][0])
        eef = lambda state: (env.sim.set_state_from_flattened(state), env.sim.forward(),
                             env.sim.data.site_xpos[env.robots[0].eef_site_id["right"]].copy())[-1]
        assert np.allclose(eef(g["states"][3]), g["obs/robot0_eef_pos"][3], atol=1e-3)       # aligned with obs t ...
        assert not np.allclose(eef(g["states"][4]), g["obs/robot0_eef_pos"][3], atol=1e-3)   # ... not with obs t - 1
        env.close()
    # --extend continues: skips the seeds already there, keeps numbering contiguous
    r = collector("--tasks", "lift", "--episodes", "3", "--out", str(out), "--image-size", "64", "--extend")
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        assert sorted(f["data"]) == ["demo_0", "demo_1", "demo_2"]
        assert [f[f"data/demo_{k}"].attrs["seed"] for k in range(3)] == [sim.episode_seed("collect", "lift", k) for k in range(3)]
    # --extend with nothing to add leaves the file as it was (its runs' data fingerprint still fits: main.sh re-runs)
    before = (out.stat().st_size, out.stat().st_mtime_ns)
    r = collector("--tasks", "lift", "--episodes", "3", "--out", str(out), "--image-size", "64", "--extend")
    assert r.returncode == 0 and "nothing to add" in r.stdout and (out.stat().st_size, out.stat().st_mtime_ns) == before
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
    existing = tmp_path / "old.hdf5"
    existing.write_bytes(b"precious")
    cases = ((["--tasks", "lift,pour"], ["pour", "lift, can, stack"]),
             (["--episodes", "0"], ["--episodes"]),
             (["--cameras", "agentview,sideview"], ["sideview", "frontview"]),
             (["--out", str(existing)], [str(existing), "--extend", "--overwrite"]),
             (["--out", str(existing), "--extend", "--overwrite"], ["not both"]))
    for args, words in cases:
        r = collector(*args, *([] if "--out" in args else ["--out", str(tmp_path / "x.hdf5")]), timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert all(w in lines[0] for w in words), (args, lines)
    assert existing.read_bytes() == b"precious" and not (tmp_path / "x.hdf5").exists()


def test_dart_noise_perturbs_the_executed_actions_and_records_the_experts():
    """rollout(noise > 0): the path leaves the expert's (other states), every recorded action is what the
    expert says in the state it saw (the label is clean), and the noise is seeded by the episode."""
    env = sim.make_env("lift", render=False)
    clean = sim.rollout(env, 3, record=True)[2]
    noisy = sim.rollout(env, 3, record=True, noise=0.3)[2]
    again = sim.rollout(env, 3, record=True, noise=0.3)[2]
    assert not np.allclose(clean[5]["state"], noisy[5]["state"])
    assert all(np.array_equal(a["state"], b["state"]) for a, b in zip(noisy, again))
    # the recorded action is the expert's P-control on the recorded state: within [-1, 1], and no noise in it
    eef, cube = noisy[3]["obs"]["raw"]["robot0_eef_pos"], noisy[3]["object"][:3]
    expected = np.clip((cube + [0, 0, 0.10] - eef) / 0.05 * 1.5, -1, 1)     # phase 0: above the cube
    assert np.allclose(noisy[3]["action"][:3], expected, atol=1e-6)
    env.close()


# --- the references and the privileged policy (the ladder: blind floor, privileged policy, expert ceiling) ---

PRIVILEGED = ["--orientation", "raw", "--proprio-keys", "robot0_eef_pos,robot0_eef_quat,robot0_gripper_qpos,object"]


@needs_gl
def test_privileged_q_is_the_same_in_training_and_in_evaluation(tmp_path):
    """The q evaluate.py builds from a live observation (sim.state_q) is the q data.py reads from the stored demo."""
    from data import DemoDataset
    from layouts import state_q
    out = tmp_path / "demos.hdf5"
    assert collector("--tasks", "lift", "--episodes", "1", "--out", str(out), "--image-size", "32").returncode == 0
    ds = DemoDataset(str(out), ["agentview"], horizon=4, split="all", orientation="raw", proprio_keys=PRIVILEGED[-1].split(","))
    env = sim.make_env("lift", image_size=32, cameras=())
    with h5py.File(out) as f:
        g = f["data/demo_0"]
        obs = sim.reset(env, int(g.attrs["seed"]), json.loads(g.attrs["appearance"]))
    env.close()
    raw = sim.observation(obs, [])["raw"]
    q = state_q(raw, PRIVILEGED[-1].split(","), "raw")
    assert q.shape == (3 + 4 + 2 + 10,)   # eef xyz, eef quat, fingers, then the cube: pos, quat, gripper-to-cube
    assert np.allclose(q, ds.q[0][0], atol=1e-6)
    assert np.allclose(q[9:12], obs["cube_pos"]) and np.allclose(q[-3:], obs["gripper_to_cube_pos"])
    assert np.allclose(state_q(raw, list(sim.PROPRIO_KEYS), "quat_xyzw"), sim.observation(obs, [])["q"])


def evaluate(*args, timeout=300):
    return subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@needs_gl
def test_references_run_on_the_evaluation_episodes(tmp_path):
    """expert: the ceiling, every episode; blind: the expert's script at the mean cube pose, never looking."""
    for ref in ("expert", "blind"):
        r = evaluate(ref, "--episodes", "2", "--videos", "0", "--workers", "1", "--out", str(tmp_path / ref))
        assert r.returncode == 0, r.stderr
        res = json.load(open(tmp_path / ref / "results.json"))
        assert res["ckpt"] == ref and res["summary"]["lift"]["episodes"] == 2
        assert [e["seed"] for e in res["episodes"]["lift"]] == [sim.episode_seed("eval", "lift", i) for i in range(2)]
    assert json.load(open(tmp_path / "expert" / "results.json"))["summary"]["lift"]["successes"] == 2
    blind = json.load(open(tmp_path / "blind" / "results.json"))["episodes"]["lift"]
    expert = json.load(open(tmp_path / "expert" / "results.json"))["episodes"]["lift"]
    assert any(b["steps"] != e["steps"] for b, e in zip(blind, expert))   # it is not the expert


@needs_gl
def test_a_privileged_checkpoint_is_evaluated_with_its_q_and_refused_where_the_q_differs(tmp_path):
    out = tmp_path / "demos.hdf5"
    assert collector("--tasks", "lift", "--episodes", "2", "--out", str(out), "--image-size", "32").returncode == 0
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "train.py", "--data", str(out), "--max-iters", "2", "--batch-size", "4",
                        "--out", str(run), *PRIVILEGED], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = evaluate(str(run / "ckpt.pt"), "--episodes", "1", "--horizon", "8", "--workers", "1", "--videos", "0",
                 "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "ev" / "results.json"))["episodes"]["lift"][0]["steps"] >= 8
    # PickPlaceCan's object state is not Lift's: the checkpoint's q cannot be built there
    r = evaluate(str(run / "ckpt.pt"), "--tasks", "can", "--episodes", "1", "--horizon", "8", "--workers", "1",
                 "--videos", "0", "--out", str(tmp_path / "ev-can"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr and "privileged" in lines[-1] and "19-D" in lines[-1], r.stderr
    assert not (tmp_path / "ev-can").exists()
