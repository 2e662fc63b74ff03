"""
Demonstrations in robomimic's HDF5 layout -> (images, instruction, q, action chunk) samples.

    data/demo_N/actions (T, a)             data/demo_N/obs/{camera}_image (T, H, W, 3) uint8
    data/demo_N/obs/robot0_eef_pos (T, 3)  robot0_eef_quat (T, 4) xyzw  robot0_gripper_qpos (T, 2)
    data/demo_N.attrs["instruction"]       (LIBERO: data.attrs["problem_info"], RoboCasa: demo.attrs["ep_meta"])

Cameras and proprio keys are named as in the file, with the orientation's format stated; LAYOUTS holds
the presets for the files people have (ours/robomimic, MimicGen, LIBERO, RoboCasa, and LeRobot datasets,
read by lerobot_data.py). A synthetic file for tests and quick runs:
    python data.py --synthetic data/synthetic.hdf5
"""
import functools
import hashlib
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

import samples
from layouts import (LAYOUTS, DataError, flip_images, make_q, minmax_stats, parse_key, layout_of,  # noqa: F401
                     proprio_10d, quat_to_rotmat, run_layout)

# -----------------------------------------------------------------------------
# the data set: one sample per timestep

def open_demos(path):
    """h5py.File of a robomimic-layout file, or DataError with one clear line."""
    import h5py
    if not os.path.isfile(path):
        raise DataError(f"data file {path} does not exist: collect demos with `python sim.py --out {path}` "
                        f"or write a synthetic one with `python data.py --synthetic {path}`")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"data file {path} cannot be read as HDF5 ({e}): re-collect or re-download it")
    if "data" not in f or not any(k.startswith("demo_") for k in f["data"]):
        keys = list(f.keys())
        f.close()
        raise DataError(f"data file {path} has no data/demo_N groups (top-level keys: {keys}): "
                        f"it is not in robomimic's layout")
    return f


def fingerprint(ds):
    """What a data set's content is, for the feature cache's key and --resume: a LeRobot folder's own fingerprint, or the
    sha1 of the HDF5 file (computed once per file version: a --resume and two cache keys read it once)."""
    if hasattr(ds, "fingerprint"):
        return ds.fingerprint()
    st = os.stat(ds.path)
    return file_sha1(os.path.realpath(ds.path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def file_sha1(path, size=None, mtime_ns=None, block=1 << 24):
    """sha1 of the file's bytes; size and mtime_ns only key the cache (a file changed since is read again)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def demo_names(f):
    """data/demo_N names sorted by N; DataError naming any other key (demo_a, demo_1.5, ...)."""
    odd = [k for k in f["data"].keys() if not (k.startswith("demo_") and k[5:].isdigit())]
    if odd:
        raise DataError(f"{f.filename}: data/ holds keys that are not demo_<integer>: {odd[:5]}: rename or remove them")
    return sorted(f["data"].keys(), key=lambda k: int(k[5:]))


def instruction_of(f, demo):
    """The language instruction of a demo: its `instruction` attribute (ours), RoboCasa's ep_meta["lang"], LIBERO's
    problem_info["language_instruction"], else the env name (MimicGen, robomimic), else ''."""
    g, data = f["data"][demo], f["data"]
    if "instruction" in g.attrs:
        return str(g.attrs["instruction"])
    if "ep_meta" in g.attrs:
        return str(json.loads(g.attrs["ep_meta"]).get("lang", ""))
    if "problem_info" in data.attrs:
        return str(json.loads(data.attrs["problem_info"]).get("language_instruction", ""))
    if "env_args" in data.attrs:
        return str(json.loads(data.attrs["env_args"]).get("env_name", ""))
    return ""


def task_of(f, demo):
    """The task a demo belongs to: its `task` attribute (sim.py writes it), else its instruction."""
    g = f["data"][demo]
    return str(g.attrs["task"]) if "task" in g.attrs else instruction_of(f, demo)


def split_demos(f, split, val_frac=0.1, max_demos=0):
    """Demo names of a split of a robomimic-layout file (see samples.split_by_task)."""
    names = demo_names(f)
    return samples.split_by_task(names, [task_of(f, n) for n in names], split, val_frac, max_demos, f.filename)


def open_dataset(path, layout="robomimic", cameras=None, horizon=16, split="train", val_frac=0.1, proprio_keys=None,
                 orientation=None, flip=None, max_demos=0, action=None):
    """A robomimic-layout HDF5 file -> DemoDataset; a LeRobot dataset folder -> lerobot_data.LeRobotDemos.
    Both give the same samples; a layout from LAYOUTS names the keys, the flags override it."""
    kw = dict(horizon=horizon, split=split, val_frac=val_frac, proprio_keys=proprio_keys, max_demos=max_demos,
              layout=layout, orientation=orientation, flip=flip)
    if os.path.isdir(path):
        from lerobot_data import LeRobotDemos   # pyarrow and PyAV only when a LeRobot dataset is read
        return LeRobotDemos(path, cameras, action=action, **kw)
    if action and action != LAYOUTS.get(layout, {}).get("action"):   # the layout's own: DemoDataset names the layout
        raise DataError(f"--action-key {action} is for LeRobot dataset folders and {path} is a file (its actions are "
                        f"data/demo_N/actions)", "drop --action-key")
    return DemoDataset(path, cameras, **kw)


def open_like(path, config, cameras=None, horizon=16, split="train", **kw):
    """Open `path` the way the run of train.py config `config` (vars(args), or a checkpoint's 'config') read its data:
    the same layout, proprio keys, orientation, image flip and action key (layouts.run_layout). kw: open_dataset's."""
    r = run_layout(config)
    return open_dataset(path, r["layout"], cameras, horizon, split, proprio_keys=r["proprio_keys"].split(","),
                        orientation=r["orientation"], flip=r["image_flip"], action=r["action_key"], **kw)


def check_demo(path, name, g, image_keys, proprio_keys, like):
    """One line (DataError) for the first thing wrong in demo g: a missing key, a length, an image that is
    not (T, H, W, 3) uint8 or not the size of the others, an action width unlike the others, NaN or inf.
    like: dict(image=(H, W, 3), action=a, proprio={key: shape}) of the first demo, filled in here from it."""
    missing = [k for k in image_keys + proprio_keys if k not in g.get("obs", {})] + \
              ([] if "actions" in g else ["actions"])
    if missing:
        obs = sorted(g["obs"].keys()) if "obs" in g else []
        raise DataError(f"{path}: {name} lacks {missing} (its obs keys: {obs})", "pick the file's --layout, or "
                        f"cameras with --cameras and proprio keys with --proprio-keys, or drop the demo")
    T, acts = len(g["actions"]), g["actions"]
    if T == 0 or acts.ndim != 2 or any(len(g["obs"][k]) != T for k in image_keys + proprio_keys):
        raise DataError(f"{path}: {name} has {T} actions of shape {acts.shape} and obs of lengths "
                        f"{[len(g['obs'][k]) for k in image_keys + proprio_keys]}: every key needs one row per step")
    like.setdefault("image", g["obs"][image_keys[0]].shape[1:])
    like.setdefault("action", acts.shape[1])
    for k in image_keys:
        im = g["obs"][k]
        if im.dtype != np.uint8 or im.shape[1:] != like["image"] or len(like["image"]) != 3 or like["image"][2] != 3:
            raise DataError(f"{path}: {name}/obs/{k} holds {im.dtype} images of {im.shape[1:]}, the first demo "
                            f"{like['image']}: images must be (H, W, 3) uint8 (0-255), one size for every view and demo")
    if acts.shape[1] != like["action"]:
        raise DataError(f"{path}: {name} has {acts.shape[1]}-D actions, the first demo {like['action']}-D: "
                        f"one action width per file")
    shapes = {k: g["obs"][k].shape[1:] for k in proprio_keys}
    if like.setdefault("proprio", shapes) != shapes:
        raise DataError(f"{path}: {name}'s proprio keys have shapes {shapes}, the first demo {like['proprio']}: "
                        f"one shape per key per file")
    nonfinite = [k for k in ["actions"] + [f"obs/{k}" for k in proprio_keys] if not np.isfinite(g[k][:]).all()]
    if nonfinite:
        raise DataError(f"{path}: {name} has NaN or inf in {nonfinite}: drop or repair that demo")


class DemoDataset:
    """Samples (images (V, H, W, 3) uint8, instruction, q (10,), A (H, a)) from a robomimic-layout HDF5.

    layout: a key of LAYOUTS; cameras, proprio_keys (eef position, eef orientation, gripper; 'key[a:b]' slices),
    orientation (a key of layouts.ORIENTATIONS) and flip (layouts.FLIPS) override its fields. A camera is an obs key
    as in the file, or a robosuite camera name whose key is f"{cam}_image".
    split: 'train' | 'val' | 'all' (per task, the last `val_frac` of its demos are validation; see samples.split_by_task);
    max_demos: training demos per task (0 = all).
    q and A are raw here; the policy min-max normalises them with `stats()` (computed on train)."""

    def __init__(self, path, cameras=None, horizon=16, split="train", val_frac=0.1, proprio_keys=None, max_demos=0,
                 layout="robomimic", orientation=None, flip=None):
        L = layout_of(layout, cameras, proprio_keys, orientation, flip)
        if "action" in L:
            raise DataError(f"layout '{layout}' is for LeRobot dataset folders and {path} is a file", f"for an HDF5 file "
                            f"use --layout {', '.join(k for k, v in LAYOUTS.items() if 'action' not in v)}")
        self.path, self.cameras, self.H = path, list(L["cameras"]), horizon
        self.proprio_keys, self.orientation, self.flip = L["proprio"], L["orientation"], L["flip"]
        f = open_demos(path)
        try:
            self._read(f, split, val_frac, max_demos)
        finally:
            f.close()
        self.file = None   # opened lazily, once per worker process

    def _read(self, f, split, val_frac, max_demos):
        """Check every demo of the file (not only this split's), then read this split's q and actions."""
        names, like = split_demos(f, split, val_frac, max_demos), {}
        obs0 = f["data"][demo_names(f)[0]].get("obs", {})
        self.image_keys = [f"{c}_image" if c not in obs0 and f"{c}_image" in obs0 else c   # as named, or robosuite's
                           for c in self.cameras]
        proprio_names = list(dict.fromkeys(parse_key(k)[0] for k in self.proprio_keys))
        for name in demo_names(f):
            check_demo(self.path, name, f["data"][name], self.image_keys, proprio_names, like)
        self.demos, self.q, self.actions, self.instructions, self.index = names, [], [], [], []
        self.tasks = [task_of(f, name) for name in names]   # per demo
        for d, name in enumerate(names):
            g = f["data"][name]
            self.q.append(make_q(lambda k: g["obs"][k][:], self.proprio_keys, self.orientation, self.path))  # (T, 10)
            self.actions.append(g["actions"][:].astype(np.float32))                                         # (T, a)
            if not (np.isfinite(self.q[-1]).all() and np.isfinite(self.actions[-1]).all()):
                raise DataError(f"{self.path}: {name} has a zero quaternion in {self.proprio_keys[1]}",
                                "drop or repair that demo, or check --proprio-keys and --orientation")
            self.instructions.append(instruction_of(f, name))
            self.index += [(d, t) for t in range(len(self.actions[-1]))]
        self.image_shape, self.action_dim = like["image"], like["action"]

    def __len__(self):
        return len(self.index)

    # the sample index's methods, shared with lerobot_data.LeRobotDemos (samples.py)
    task_groups, stats, chunk = samples.task_groups, samples.stats, samples.chunk

    def __getitem__(self, i):
        import h5py
        if self.file is None:
            self.file = h5py.File(self.path, "r")
        d, t = self.index[i]
        obs = self.file["data"][self.demos[d]]["obs"]
        images = flip_images(np.stack([obs[k][t] for k in self.image_keys]), self.flip)   # (V, H, W, 3) uint8
        return dict(images=images, instruction=self.instructions[d], q=self.q[d][t], A=self.chunk(d, t))


def collate(samples):
    """list of samples -> batch: arrays stacked into tensors (images (B, V, H, W, 3) uint8, q (B, 10),
    A (B, H, a), or cached feats (B, N, D) ...), strings into the list `instructions`."""
    batch = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]
             if isinstance(samples[0][k], np.ndarray)}
    batch["instructions"] = [s["instruction"] for s in samples]
    return batch


class Batches(torch.utils.data.Dataset):
    """Batch k of a run: B samples drawn at random from `source`, by a generator seeded with
    (seed, k). Any process can make batch k, so loader workers prefetch freely and a resumed
    run draws exactly the batches the uninterrupted one would have.
    groups (DemoDataset.task_groups()): each sample's task is drawn uniformly first, then a timestep of
    that task, so a task with short demos is not starved; None draws timesteps uniformly."""

    def __init__(self, source, B, seed, n_batches, augment_images=False, groups=None):
        self.source, self.B, self.seed, self.n, self.augment = source, B, seed, n_batches, augment_images
        self.groups = [torch.as_tensor(g) for g in groups.values() if len(g)] if groups else None

    def __len__(self):
        return self.n

    def __getitem__(self, k):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        if self.groups:
            task = torch.randint(len(self.groups), (self.B,), generator=g).tolist()
            pick = torch.rand(self.B, generator=g).tolist()
            idx = [int(self.groups[t][int(r * len(self.groups[t]))]) for t, r in zip(task, pick)]
        else:
            idx = torch.randint(len(self.source), (self.B,), generator=g).tolist()
        batch = collate([self.source[i] for i in idx])
        if self.augment:
            batch["images"] = augment(batch["images"], g)
        return batch


def augment(images, generator=None):
    """Training-only image augmentation (GR00T's): random crop of 95% of the side, resized back,
    and brightness/contrast jitter. images (B, V, H, W, 3) uint8 tensor -> the same shape and dtype."""
    B, V, H, W, _ = images.shape
    x = images.permute(0, 1, 4, 2, 3).reshape(B * V, 3, H, W).float()        # (B*V, 3, H, W)
    c = int(round(0.95 * H))
    i, j = torch.randint(H - c + 1, (2,), generator=generator).tolist()
    x = F.interpolate(x[:, :, i:i + c, j:j + c], size=(H, W), mode="bilinear", align_corners=False)
    gain = 1 + 0.2 * (torch.rand(B * V, 1, 1, 1, generator=generator) - 0.5)  # contrast
    bias = 25 * (torch.rand(B * V, 1, 1, 1, generator=generator) - 0.5)       # brightness
    x = (x - x.mean((1, 2, 3), keepdim=True)) * gain + x.mean((1, 2, 3), keepdim=True) + bias
    return x.clamp(0, 255).round().to(torch.uint8).view(B, V, 3, H, W).permute(0, 1, 3, 4, 2)


# -----------------------------------------------------------------------------
# a small synthetic file in the same layout, for tests and quick runs

def write_synthetic(path, n_demos=8, T=40, image_size=64, cameras=("agentview", "frontview", "robot0_eye_in_hand"),
                    seed=0, tasks=("synthetic",)):
    """Demos of a point 'gripper' moving to a target, drawn as coloured squares in every view.
    Actions are the (clipped) direction to the target, so the chunk is predictable from q and images.
    With several `tasks` the demos are written task by task, as sim.py's collector does."""
    import h5py
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Synthetic", "type": 1, "env_kwargs": {}})
        total = 0
        for i in range(n_demos):
            pos, goal = rng.uniform(-0.3, 0.3, 3), rng.uniform(-0.3, 0.3, 3)
            background = rng.integers(0, 255, 3)                               # per-demo "appearance"
            P, Q, G, A, imgs = [], [], [], [], {c: [] for c in cameras}
            for t in range(T):
                a = np.clip((goal - pos) * 5, -1, 1)
                grip = 1.0 if np.linalg.norm(goal - pos) < 0.05 else -1.0
                yaw = 0.3 * np.sin(t / 5)
                P.append(pos.copy()); Q.append([0, 0, np.sin(yaw / 2), np.cos(yaw / 2)])
                G.append([0.04, -0.04] if grip < 0 else [0.01, -0.01])
                A.append(np.concatenate([a, [0, 0, 0.1 * np.cos(t / 5), grip]]))
                for v, cam in enumerate(cameras):
                    im = np.empty((image_size, image_size, 3), np.uint8)
                    im[:] = background
                    for p, colour in ((pos, (255, 0, 0)), (goal, (0, 255, 0))):
                        u = int((p[v % 3] + 0.5) * (image_size - 8)); w = int((p[(v + 1) % 3] + 0.5) * (image_size - 8))
                        im[w:w + 8, u:u + 8] = colour
                    imgs[cam].append(im)
                pos = pos + 0.05 * a[:3]
            g = data.create_group(f"demo_{i}")
            g.attrs.update(num_samples=T, instruction="move to the green square", task=tasks[i * len(tasks) // n_demos], seed=i,
                           appearance=json.dumps({"background": background.tolist()}))
            g["actions"] = np.asarray(A, np.float32)
            g["rewards"] = np.zeros(T, np.float32)
            g["dones"] = np.eye(T, dtype=np.int64)[-1]
            g["obs/robot0_eef_pos"] = np.asarray(P)
            g["obs/robot0_eef_quat"] = np.asarray(Q)
            g["obs/robot0_gripper_qpos"] = np.asarray(G)
            for cam in cameras:
                g[f"obs/{cam}_image"] = np.asarray(imgs[cam])
            total += T
        data.attrs["total"] = total
    return path


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="write a small synthetic demo file in robomimic's layout")
    ap.add_argument("--synthetic", required=True, metavar="PATH")
    ap.add_argument("--demos", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=64)
    fail = lambda msg: ap.exit(2, f"error: {msg}\n")   # one line, the house form
    ap.error = lambda msg: fail(f"{msg}: see python data.py --help")
    args = ap.parse_args()
    if args.demos < 2 or args.steps < 1 or args.image_size < 16:
        fail(f"--demos must be at least 2 (one for validation), --steps 1, --image-size 16 (got {args.demos}, "
                 f"{args.steps}, {args.image_size})")
    from output import OutputError, atomic, claim
    try:   # one writer; written under a name of our own, then renamed: whole or not at all
        claim(args.synthetic, "--synthetic")
        if os.path.exists(args.synthetic):
            fail(f"{args.synthetic} exists: remove it or choose another path")
        atomic(args.synthetic, lambda tmp: write_synthetic(tmp, args.demos, args.steps, args.image_size), "--synthetic")
    except OutputError as e:
        fail(str(e))
    print(args.synthetic)
