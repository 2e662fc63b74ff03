"""The data sets people have: LIBERO, RoboCasa, MimicGen and our HDF5 files, and LeRobot datasets (v2.1, v3.0).

Each fixture is written with the keys, shapes and dtypes of the project's own writer (cited in layouts.py; images
are 32 px here instead of 84-256 to keep the runs fast); train.py runs 3 steps from each. q is checked against a
hand-computed value: one rotation, 90 degrees about z, given in every orientation format, gives the same 10-D q."""
import json
import os

os.environ.setdefault("SVT_LOG", "1")   # the AV1 encoder's start-up banner, once per video written
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from data import DemoDataset, open_dataset, write_synthetic
from layouts import make_q, minmax_stats
from lerobot_data import write_lerobot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--backbone", "tiny", "--max-iters", "3", "--batch-size", "4", "--eval-every", "100", "--eval-iters", "1",
        "--log-every", "1", "--ckpt-every", "100"]
S = np.sqrt(0.5)
# the rotation of 90 degrees about z in every format; R = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
ROT = dict(quat_xyzw=[0, 0, S, S], quat_wxyz=[S, 0, 0, S], axis_angle=[0, 0, np.pi / 2], rotmat=[0, -1, 0, 1, 0, 0, 0, 0, 1])
# by hand: q = [x, y, z, R[:, 0], R[:, 1], g] with R[:, 0] = (0, 1, 0), R[:, 1] = (-1, 0, 0), g = 0.03 - (-0.03)
Q_HAND = np.array([0.1, -0.2, 0.9, 0, 1, 0, -1, 0, 0, 0.06], np.float32)


def demo_arrays(rng, T, orientation="quat_xyzw"):
    """eef pos, orientation (the first step is the hand-computed pose, the rest random), gripper qpos, for T steps."""
    pos = rng.uniform(-0.3, 0.3, (T, 3)); pos[0] = Q_HAND[:3]
    quat = rng.normal(size=(T, 4)); quat /= np.linalg.norm(quat, axis=1, keepdims=True); quat[0] = ROT["quat_xyzw"]
    if orientation == "axis_angle":   # robosuite's quat2axisangle of each quaternion
        w = np.clip(quat[:, 3:], -1, 1)
        ori = quat[:, :3] * 2 * np.arccos(w) / np.maximum(np.sqrt(1 - w * w), 1e-12)
    else:
        ori = quat
    grip = np.stack([np.full(T, 0.03), np.full(T, -0.03)], 1) * rng.uniform(0.2, 1, (T, 1)); grip[0] = [0.03, -0.03]
    return pos, ori, grip


def images(rng, T, size=32):
    return rng.integers(0, 255, (T, size, size, 3), dtype=np.uint8)


def write_libero(path, n=4, T=12, size=32, seed=0):
    """LIBERO's create_dataset.py: obs/{agentview_rgb, eye_in_hand_rgb, gripper_states, joint_states, ee_states,
    ee_pos, ee_ori}, actions (T, 7), states, robot_states, rewards/dones uint8; problem_info JSON on data."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs.update(env_name="Libero_Tabletop_Manipulation", macros_image_convention="opengl", num_demos=n,
                          total=n * T, bddl_file_name="libero/bddl_files/libero_spatial/pick_up_the_bowl.bddl",
                          problem_info=json.dumps(dict(problem_name="libero_tabletop_manipulation",
                                                       domain_name="robosuite", language_instruction="pick up the black bowl")),
                          env_args=json.dumps(dict(type=1, env_name="Libero_Tabletop_Manipulation", env_kwargs={})))
        for i in range(n):
            pos, ori, grip = demo_arrays(rng, T, "axis_angle")
            g = data.create_group(f"demo_{i}")
            o = g.create_group("obs")
            o["gripper_states"], o["joint_states"] = grip, rng.normal(size=(T, 7))
            o["ee_states"], o["ee_pos"], o["ee_ori"] = np.hstack([pos, ori]), pos, ori
            o["agentview_rgb"], o["eye_in_hand_rgb"] = images(rng, T, size), images(rng, T, size)
            g["actions"] = rng.uniform(-1, 1, (T, 7))
            g["states"], g["robot_states"] = rng.normal(size=(T, 79)), rng.normal(size=(T, 9))
            g["rewards"], g["dones"] = np.eye(T, dtype=np.uint8)[-1], np.eye(T, dtype=np.uint8)[-1]
            g.attrs.update(num_samples=T, model_file="<mujoco/>", init_state=g["states"][0])
    return path


def write_robocasa(path, n=4, T=12, size=32, seed=0):
    """RoboCasa (robomimic layout via dataset_states_to_obs): three cameras, base-relative eef pose, 12-D actions,
    the instruction in demo.attrs['ep_meta']['lang']."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs.update(total=n * T, env_args=json.dumps(dict(env_name="PnPCounterToCab", type=1, env_kwargs={})))
        for i in range(n):
            pos, quat, grip = demo_arrays(rng, T)
            g = data.create_group(f"demo_{i}")
            g.attrs.update(num_samples=T, model_file="<mujoco/>",
                           ep_meta=json.dumps(dict(lang="pick the apple from the counter and place it in the cabinet",
                                                   layout_id=1, style_id=2)))
            o = g.create_group("obs")
            for cam in ("robot0_agentview_left", "robot0_agentview_right", "robot0_eye_in_hand"):
                o[f"{cam}_image"] = images(rng, T, size)
            o["robot0_base_to_eef_pos"], o["robot0_base_to_eef_quat"], o["robot0_gripper_qpos"] = pos, quat, grip
            o["robot0_eef_pos"], o["robot0_eef_quat"] = pos + 1, quat
            o["robot0_base_pos"], o["robot0_base_quat"] = rng.normal(size=(T, 3)), quat
            o["robot0_gripper_qvel"], o["robot0_joint_pos"] = rng.normal(size=(T, 2)), rng.normal(size=(T, 7))
            g["actions"], g["states"] = rng.uniform(-1, 1, (T, 12)), rng.normal(size=(T, 100))
            g["rewards"], g["dones"] = np.zeros(T), np.eye(T, dtype=np.int64)[-1]
    return path


def write_mimicgen(path, n=4, T=12, size=32, seed=0):
    """MimicGen's released files: robomimic obs (agentview_image, robot0_eye_in_hand_image, robot0_eef_*), 7-D actions,
    datagen_info, no instruction (the env name is used)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs.update(total=n * T, env_args=json.dumps(dict(env_name="Coffee_D0", type=1, env_kwargs={})))
        for i in range(n):
            pos, quat, grip = demo_arrays(rng, T)
            g = data.create_group(f"demo_{i}")
            g.attrs.update(num_samples=T, model_file="<mujoco/>")
            o = g.create_group("obs")
            o["agentview_image"], o["robot0_eye_in_hand_image"] = images(rng, T, size), images(rng, T, size)
            o["robot0_eef_pos"], o["robot0_eef_quat"], o["robot0_gripper_qpos"] = pos, quat, grip
            o["object"] = rng.normal(size=(T, 57))
            g["actions"], g["states"] = rng.uniform(-1, 1, (T, 7)), rng.normal(size=(T, 70))
            g["datagen_info/eef_pose"] = np.tile(np.eye(4), (T, 1, 1))
    return path


def lerobot_episodes(kind, n=4, T=12, size=32, seed=0):
    """Episodes for write_lerobot, with each release's feature names: 'robocasa' (RoboCasa's 16-D state, 12-D action,
    3 cameras), 'libero' (LeRobot's lerobot/libero: observation.images.image/image2, 8-D state, 7-D action) or
    'libero-openpi' (physical-intelligence/libero: image/wrist_image, state, actions)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pos, ori, grip = demo_arrays(rng, T, "quat_xyzw" if kind == "robocasa" else "axis_angle")
        if kind == "robocasa":
            cams = ("robot0_agentview_left", "robot0_agentview_right", "robot0_eye_in_hand")
            state = np.hstack([rng.normal(size=(T, 3)), ori, pos, ori, grip])   # base pos, base quat, eef pos, quat, grip
            out.append({"task": ["open the drawer", "close the drawer"][i % 2], "observation.state": state,
                        "action": rng.uniform(-1, 1, (T, 12)),
                        "frames": {f"observation.images.{c}": images(rng, T, size) for c in cams}})
        elif kind == "libero":
            out.append({"task": "put the bowl on the plate", "observation.state": np.hstack([pos, ori, grip]),
                        "action": rng.uniform(-1, 1, (T, 7)), "frames": {"observation.images.image": images(rng, T, size),
                                                                         "observation.images.image2": images(rng, T, size)}})
        else:
            out.append({"task": "put the bowl on the plate", "state": np.hstack([pos, ori, grip]),  # pos, axis-angle, grip
                        "actions": rng.uniform(-1, 1, (T, 7)),
                        "frames": {"image": images(rng, T, size), "wrist_image": images(rng, T, size)}})
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file per layout; the LeRobot ones as each release stores them: RoboCasa v2.1 with H.264 videos, lerobot/libero
    v3.0 with AV1 videos (LeRobot's default codec), physical-intelligence/libero v2.0 with PNG frames in parquet."""
    d = tmp_path_factory.mktemp("layouts")
    return dict(libero=write_libero(str(d / "libero.hdf5")), robocasa=write_robocasa(str(d / "robocasa.hdf5")),
                mimicgen=write_mimicgen(str(d / "mimicgen.hdf5")),
                robomimic=write_synthetic(str(d / "ours.hdf5"), n_demos=4, T=12, image_size=32),
                lerobot_robocasa=write_lerobot(str(d / "robocasa_lerobot"), lerobot_episodes("robocasa"), version="v2.1",
                                               codec="libx264", robot_type="PandaOmron"),
                lerobot_libero=write_lerobot(str(d / "libero_lerobot"), lerobot_episodes("libero"), fps=10, version="v3.0"),
                lerobot_openpi=write_lerobot(str(d / "libero_openpi"), lerobot_episodes("libero-openpi"), fps=10,
                                             version="v2.0", image_dtype="image"))


PRESET = {"lerobot_robocasa": "lerobot-robocasa", "lerobot_libero": "lerobot-libero", "lerobot_openpi": "lerobot-libero-openpi"}


def train(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def one_line(r, *words):
    """One clear line on stderr, a non-zero exit, no traceback."""
    err = [l for l in r.stderr.strip().splitlines() if l.strip() and "%|" not in l]
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(err) == 1 and err[0].startswith("error: "), r.stderr
    for w in words:
        assert w in err[0], err[0]


# --- q: one rotation in every format gives the hand-computed q ---

@pytest.mark.parametrize("orientation", list(ROT))
def test_one_rotation_in_every_format_gives_the_hand_computed_q(orientation):
    keys = dict(p=[Q_HAND[:3]], o=[ROT[orientation]], g=[[0.03, -0.03]])
    q = make_q(lambda k: np.array(keys[k]), ["p", "o", "g"], orientation, "test")
    np.testing.assert_allclose(q[0], Q_HAND, atol=1e-6)


@pytest.mark.parametrize("layout", ["libero", "robocasa", "mimicgen", "lerobot_robocasa", "lerobot_libero", "lerobot_openpi"])
def test_each_layout_reads_the_hand_computed_q_and_its_instruction(files, layout):
    ds = open_dataset(files[layout], PRESET.get(layout, layout), split="all", horizon=4)
    np.testing.assert_allclose(ds.q[0][0], Q_HAND, atol=1e-5)       # step 0 of demo 0 is the known pose
    assert ds.q[0].shape[1] == 10 and np.isfinite(np.concatenate(ds.q)).all()
    want = {"libero": "pick up the black bowl", "robocasa": "pick the apple from the counter and place it in the cabinet",
            "mimicgen": "Coffee_D0", "lerobot_robocasa": "open the drawer"}.get(layout, "put the bowl on the plate")
    assert ds.instructions[0] == want
    s = ds[0]
    assert s["images"].dtype == np.uint8 and s["images"].shape == (len(ds.cameras), 32, 32, 3)
    assert s["A"].shape == (4, ds.action_dim) and ds.action_dim == {"robocasa": 12, "lerobot_robocasa": 12}.get(layout, 7)


def test_libero_frames_are_made_upright_alike_from_its_hdf5_and_its_lerobot_releases(tmp_path):
    """LIBERO's HDF5 stores MuJoCo's bottom-up frames; LeRobot's and openpi's releases store them rotated 180 degrees.
    Read with their presets, both give the same upright frame: a vertical flip of the stored HDF5 frame (not a
    rotation, which would mirror left and right), and --image-flip rot180 gives OpenVLA's convention instead."""
    raw = images(np.random.default_rng(1), 12)                                    # (T, H, W, 3) as LIBERO stores them
    path = write_libero(str(tmp_path / "libero.hdf5"), n=2)
    with h5py.File(path, "a") as f:
        for d in ("demo_0", "demo_1"):
            f[f"data/{d}/obs/agentview_rgb"][...] = raw
    ep = lerobot_episodes("libero", n=2)
    for e in ep:
        e["frames"]["observation.images.image"] = raw[:, ::-1, ::-1]              # rotated 180 degrees, as released
    lerobot = write_lerobot(str(tmp_path / "lerobot"), ep, fps=10, version="v3.0", image_dtype="image")
    upright = raw[5, ::-1]
    np.testing.assert_array_equal(DemoDataset(path, layout="libero", split="all")[5]["images"][0], upright)
    np.testing.assert_array_equal(open_dataset(lerobot, "lerobot-libero", split="all")[5]["images"][0], upright)
    np.testing.assert_array_equal(DemoDataset(path, layout="libero", split="all", flip="rot180")[5]["images"][0],
                                  raw[5, ::-1, ::-1])
    assert np.array_equal(DemoDataset(path, layout="libero", split="all", flip="none")[5]["images"][0], raw[5])
    openpi = write_lerobot(str(tmp_path / "openpi"), lerobot_episodes("libero-openpi", n=2), version="v2.0",
                           image_dtype="image")
    ds = open_dataset(openpi, "lerobot-libero-openpi", split="all", flip="none")   # PNG in parquet: exact
    assert np.array_equal(ds[5]["images"][1], lerobot_episodes("libero-openpi", n=2)[0]["frames"]["wrist_image"][5])


def test_video_frames_are_found_by_timestamp(tmp_path):
    """Frames of constant grey 8 t + e: every sample, in random order, decodes to its own frame (AV1 is lossy: +-2)."""
    T = 20
    eps = [{"task": "t", "observation.state": np.zeros((T, 3)), "action": np.zeros((T, 2)),
            "frames": {"cam": np.zeros((T, 32, 32, 3), np.uint8) + (8 * np.arange(T) + e)[:, None, None, None].astype(np.uint8)}}
           for e in range(3)]
    for version in ("v3.0", "v2.1"):
        ds = open_dataset(write_lerobot(str(tmp_path / version), eps, version=version), "lerobot", split="all")
        order = np.random.default_rng(0).permutation(len(ds))
        got = np.array([int(ds[i]["images"][0, 16, 16, 0]) for i in order])
        want = np.array([8 * ds.index[i][1] + int(ds.demos[ds.index[i][0]][-1]) for i in order])
        assert np.abs(got - want).max() <= 2, (version, got - want)


# --- norm statistics: a dimension that never changes ---

def test_constant_dimensions_normalise_to_zero_without_dividing_by_zero():
    from model import Policy
    q = np.random.default_rng(0).normal(size=(50, 10)).astype(np.float32)
    q[:, 3:9] = [1, 0, 0, 0, 1, 0]          # a robot that never turns: the 6D rotation is constant
    st = minmax_stats(q, np.zeros((50, 2), np.float32))
    assert st["q_min"][3] == 1 and st["q_max"][3] == 1 and st["a_min"] == [0, 0] and st["a_max"] == [0, 0]
    buf = type("Stats", (), {k: torch.tensor(v) for k, v in st.items()})()
    x = Policy.normalize(buf, torch.tensor(q), "q")
    assert torch.isfinite(x).all() and torch.all(x[:, 3:9] == 0)
    assert torch.allclose(x[:, :3].amin(0), torch.tensor(-1.0)) and torch.allclose(x[:, :3].amax(0), torch.tensor(1.0))
    off = torch.tensor(q[:1]).clone()
    off[0, 3] = 1.25                         # a test-time value off the constant moves by its raw difference
    assert abs(float(Policy.normalize(buf, off, "q")[0, 3]) - 0.25) < 1e-6


# --- train.py a few steps from each layout ---

@pytest.mark.parametrize("layout,extra", [("robomimic", []), ("libero", []), ("robocasa", []), ("mimicgen", []),
                                          ("lerobot_robocasa", ["--layout", "lerobot-robocasa", "--cache-features"]),
                                          ("lerobot_libero", ["--layout", "lerobot-libero", "--rscl"]),
                                          ("lerobot_openpi", ["--layout", "lerobot-libero-openpi"]),
                                          ("lerobot_openpi", ["--proprio-keys", "state", "--action-key", "actions"])])
def test_train_runs_a_few_steps_from_each_layout(files, tmp_path, layout, extra):
    flags = extra if extra else ["--layout", layout]
    r = train("--data", files[layout], *flags, *FAST, "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr[-3000:]
    log = [json.loads(l) for l in open(tmp_path / "run" / "log.jsonl") if '"loss_fm"' in l and "val" not in l]
    assert [row["step"] for row in log] == [1, 2, 3] and all(np.isfinite(row["loss_fm"]) for row in log)
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    want_dim = 8 if "--action-key" in extra else 10        # the generic LeRobot layout: q is the 8-D state as given
    assert cfg["model"]["state_dim"] == want_dim and len(cfg["stats"]["q_min"]) == want_dim
    assert cfg["args"]["layout"] == (PRESET.get(layout, layout) if "--action-key" not in extra else "lerobot")


def test_cknna_reads_the_data_as_the_run_did(files, tmp_path):
    """cknna.py on a LIBERO run (axis-angle, flipped frames) and a generic LeRobot run (q as given): the checkpoint's
    layout, keys and flip are used; evaluate.py refuses both (the simulator's frames and q are another convention)."""
    for name, flags in (("libero", ["--layout", "libero"]), ("lerobot_openpi", ["--proprio-keys", "state",
                                                                                   "--action-key", "actions"])):
        run = str(tmp_path / name)
        assert train("--data", files[name], *flags, *FAST[:3], "2", *FAST[4:], "--out", run).returncode == 0
        r = subprocess.run([sys.executable, os.path.join(ROOT, "cknna.py"), os.path.join(run, "ckpt.pt"), "--data",
                            files[name], "--split", "all", "--n", "30", "--topk", "3", "--out", str(tmp_path / f"{name}-ck")],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        rows = json.load(open(tmp_path / f"{name}-ck" / "scores.json"))["rows"]
        assert len(rows) == 3 and all(np.isfinite(row["cknna"]) for row in rows)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), os.path.join(run, "ckpt.pt"), "--out",
                        str(tmp_path / "ev")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    one_line(r, "does not match the simulator")


# --- bad input: one line, a non-zero exit, nothing written ---

def test_bad_layout_inputs_are_one_line_and_write_nothing(files, tmp_path):
    out = str(tmp_path / "run")
    one_line(train("--data", files["libero"], "--layout", "libero", "--cameras", "agentview", "--out", out),
             "lacks ['agentview']", "agentview_rgb", "eye_in_hand_rgb")          # the keys that are there
    one_line(train("--data", files["libero"], "--layout", "libero", "--orientation", "quat_xyzw", "--out", out),
             "ee_ori", "3 numbers", "needs 4", "--orientation axis_angle")
    one_line(train("--data", files["robocasa"], "--layout", "robocasa", "--orientation", "axis_angle", "--out", out),
             "needs 3", "quat_xyzw or quat_wxyz")
    one_line(train("--data", files["libero"], "--proprio-keys", "ee_pos[0:x],ee_ori,gripper_states", "--out", out),
             "ee_pos[0:x]", "name[a:b]")
    one_line(train("--data", files["libero"], "--layout", "lerobot-libero", "--out", out), "LeRobot dataset folders")
    os.makedirs(tmp_path / "empty" / "data")
    one_line(train("--data", str(tmp_path / "empty"), "--out", out), "without meta/info.json")
    one_line(train("--data", files["lerobot_robocasa"], "--layout", "lerobot-libero", "--out", out),
             "observation.images.image", "observation.images.robot0_eye_in_hand")   # the features that are there
    assert not os.path.exists(out) and sorted(os.listdir(tmp_path)) == ["empty"]


def damaged(src, dst, damage):
    shutil.copytree(src, dst)
    damage(dst)
    return dst


def rewrite(path, change):
    """A parquet file rewritten with change(table) -> table."""
    import pyarrow.parquet as pq
    pq.write_table(change(pq.read_table(path)), path)


def set_info(root, **fields):
    info = json.load(open(os.path.join(root, "meta", "info.json")))
    info.update(fields)
    json.dump({k: v for k, v in info.items() if v is not None}, open(os.path.join(root, "meta", "info.json"), "w"))


def test_every_damaged_lerobot_dataset_is_one_line(files, tmp_path):
    """Each way a LeRobot dataset can be damaged -> one DataError line naming what is wrong (every episode is checked
    when the dataset is opened, not when a batch reaches it); through train.py, one line and no run folder."""
    import pyarrow as pa
    from data import DataError
    from lerobot_data import encode_video
    ep2 = os.path.join("data", "chunk-000", "episode_000002.parquet")
    video = lambda cam, i: os.path.join("videos", "chunk-000", f"observation.images.{cam}", f"episode_{i:06d}.mp4")
    cases = {   # episode 3 is a validation one (the last of its task), episode 2 a training one
        "info.json is not JSON": (lambda d: open(os.path.join(d, "meta", "info.json"), "w").write("{"), "meta/"),
        "info.json without fps": (lambda d: set_info(d, fps=None), "'fps'"),
        "an unknown codebase_version": (lambda d: set_info(d, codebase_version="v1.6"), "v1.6"),
        "no episodes.jsonl": (lambda d: os.remove(os.path.join(d, "meta", "episodes.jsonl")), "episodes.jsonl"),
        "a column missing": (lambda d: rewrite(os.path.join(d, ep2), lambda t: t.drop(["timestamp"])), "['timestamp']"),
        "an episode without rows": (lambda d: rewrite(os.path.join(d, ep2), lambda t: t.slice(0, 0)), "no rows"),
        "an action width unlike info.json": (lambda d: rewrite(os.path.join(d, ep2), lambda t: t.set_column(
            t.column_names.index("action"), "action", pa.array([r[:5] for r in t.column("action").to_pylist()]))),
            "meta/info.json says 12"),
        "a video shorter than its episode": (lambda d: (os.remove(os.path.join(d, video("robot0_eye_in_hand", 3))),
                                                        encode_video(os.path.join(d, video("robot0_eye_in_hand", 3)),
                                                                     np.zeros((4, 32, 32, 3), np.uint8), 20)), "lasts"),
        "a video that is not one": (lambda d: open(os.path.join(d, video("robot0_agentview_left", 3)), "wb").write(
            b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000)), "cannot be decoded"),
        "a missing video": (lambda d: os.remove(os.path.join(d, video("robot0_agentview_right", 1))), "is missing"),
    }
    for name, (damage, words) in cases.items():
        root = damaged(files["lerobot_robocasa"], str(tmp_path / name.replace(" ", "_")), damage)
        for split in ("train", "val"):
            try:
                open_dataset(root, "lerobot-robocasa", split=split)
            except DataError as e:
                assert words in str(e) and "\n" not in str(e), (name, str(e))
                break
        else:
            raise AssertionError(f"{name}: accepted")
    sizes = lerobot_episodes("libero")
    for e in sizes:
        e["frames"]["observation.images.image2"] = images(np.random.default_rng(0), 12, 48)
    with pytest.raises(DataError, match="differ in size"):
        open_dataset(write_lerobot(str(tmp_path / "sizes"), sizes, version="v3.0", image_dtype="image"), "lerobot-libero")
    out = str(tmp_path / "run")
    one_line(train("--data", str(tmp_path / "a_video_shorter_than_its_episode"), "--layout", "lerobot-robocasa",
                   "--out", out), "lasts", "episode_000003")
    assert not os.path.exists(out)


def test_raw_proprio_keys_of_other_widths_in_a_later_demo_are_one_line(tmp_path):
    from data import DataError
    path = write_mimicgen(str(tmp_path / "m.hdf5"))
    with h5py.File(path, "a") as f:
        del f["data/demo_3/obs/robot0_gripper_qpos"]
        f["data/demo_3/obs/robot0_gripper_qpos"] = np.zeros((12, 1))
    with pytest.raises(DataError, match="one shape per key"):
        DemoDataset(path, layout="mimicgen", orientation="raw")
