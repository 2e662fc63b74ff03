"""
Everything robosuite: the env (Panda, OSC pose, two exterior cameras + the wrist camera), the
observation the policy reads, exact episode seeding, appearance variation, scripted experts, and
the demo collector:

    python sim.py --tasks lift,can,stack --episodes 20 --out data/demos.hdf5
    python sim.py --tasks lift,can,stack --episodes 20 --measure-experts     # success of the experts

Demos are written in robomimic's HDF5 layout (what data.py reads), successful ones only, each with
its seed and appearance. Collection and evaluation (evaluate.py) make envs and observations here,
so they cannot drift apart. Appearance: table, floor and wall colours and the light are drawn per
episode; "seen" colours (collection) and "unseen" colours (an OOD evaluation) come from disjoint
hue ranges, so a held-out look is truly new.
"""
import argparse
import colorsys
import json
import os
import sys
import types

import numpy as np

from data import proprio_10d

CAMERAS = ("agentview", "frontview", "robot0_eye_in_hand")   # two exterior views + the wrist, as in RoboCasa
ALL_CAMERAS = ("agentview", "frontview", "birdview", "robot0_robotview", "robot0_eye_in_hand")   # in all three tasks
ACTION_DIM = 7   # dx, dy, dz (x 0.05 m), dax, day, daz (x 0.5 rad), gripper (-1 open, +1 closed)
TASKS = {
    "lift": dict(env="Lift", instruction="lift the cube", horizon=150),
    "can": dict(env="PickPlaceCan", instruction="pick up the can and place it in the bin", horizon=300),
    "stack": dict(env="Stack", instruction="stack the red cube on the green cube", horizon=250),
}
PROPRIO_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")


def import_robosuite():
    """Import robosuite with images top-row-up (opencv convention) and its start-up chatter off."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if "robosuite.macros_private" not in sys.modules:
        macros = types.ModuleType("robosuite.macros_private")
        macros.IMAGE_CONVENTION, macros.CONSOLE_LOGGING_LEVEL = "opencv", "ERROR"
        sys.modules["robosuite.macros_private"] = macros
    import robosuite
    return robosuite


def check_gl():
    """Exit with one clear line if no offscreen GL backend works."""
    backend = os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import mujoco
        ctx = mujoco.GLContext(64, 64)
        ctx.make_current()
        ctx.free()
    except Exception as e:
        sys.exit(f"error: offscreen rendering with MUJOCO_GL={backend} failed ({type(e).__name__}): install "
                 f"`apt-get install libegl1 libopengl0 libgl1-mesa-dri libgl1 libglib2.0-0` (EGL) or "
                 f"`apt-get install libosmesa6 libgl1 libglib2.0-0` and set MUJOCO_GL=osmesa")


# -----------------------------------------------------------------------------
# env, seeding, appearance, observation

def make_env(task, image_size=128, cameras=CAMERAS, render=True):
    """A robosuite env for `task` (a key of TASKS); render=False gives no cameras (fast, for experts)."""
    suite = import_robosuite()
    from robosuite.controllers import load_composite_controller_config
    spec = TASKS[task]
    env = suite.make(spec["env"], robots="Panda", controller_configs=load_composite_controller_config(controller="BASIC", robot="Panda"),
                     has_renderer=False, has_offscreen_renderer=render, use_camera_obs=render,
                     camera_names=list(cameras), camera_heights=image_size, camera_widths=image_size,
                     control_freq=20, horizon=spec["horizon"] + 50, ignore_done=True, hard_reset=False,
                     reward_shaping=False, seed=0)
    env.task, env.cameras, env.image_size = task, list(cameras), image_size
    if render:
        fast_rendering(env)
    return env


def fast_rendering(env):
    """No multisampling, an offscreen buffer the size of the camera, no reflections: ~3x faster on a CPU."""
    import mujoco
    ctx = env.sim._render_context_offscreen
    env.sim.model._model.vis.quality.offsamples = 0
    ctx.update_offscreen_size(env.image_size, env.image_size)
    ctx.con.free()   # rebuild the buffers so that offsamples = 0 takes effect
    ctx._set_mujoco_context_and_buffers()
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0


def appearance(split, i):
    """The look of episode i: RGB tints of table, floor and walls, and the light's brightness.
    'seen' hues lie in [0, 0.5), 'unseen' hues in [0.5, 1): the held-out looks are disjoint."""
    rng = np.random.default_rng([0 if split == "seen" else 1, i])
    lo = 0.0 if split == "seen" else 0.5
    tint = lambda: [round(c, 3) for c in colorsys.hsv_to_rgb(lo + 0.5 * rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.5, 1.0))]
    return dict(split=split, id=int(i), table=tint(), floor=tint(), walls=tint(), light=round(float(rng.uniform(0.5, 0.9)), 3))


def apply_appearance(env, look):
    m = env.sim.model._model
    import mujoco
    for name, key in (("table_ceramic", "table"), ("table_mat", "table"), ("floorplane", "floor"), ("walls_mat", "walls")):
        k = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_MATERIAL, name)
        if k >= 0:
            m.mat_rgba[k, :3] = look[key]
    m.light_diffuse[:] = look["light"]


def reset(env, seed, look=None):
    """Reset to episode `seed` exactly: the env's and the placement samplers' generators are
    re-seeded first (robosuite has no reset(seed=)). Returns the raw observation dict."""
    env.rng = np.random.default_rng(seed)
    samplers = [env.placement_initializer]
    while samplers:
        s = samplers.pop()
        s.rng = env.rng
        samplers += list(getattr(s, "samplers", {}).values())
    if look is not None:
        apply_appearance(env, look)
    obs = env.reset()
    if look is not None:   # the reset may re-write the model; apply again and re-render the first frame
        apply_appearance(env, look)
        obs = env._get_observations(force_update=True)
    return obs


def observation(obs, cameras=CAMERAS):
    """robosuite obs -> what the policy reads: images (V, H, W, 3) uint8 top row up, q (10,) float32
    (eef xyz, 6D rotation = first two columns of R, gripper opening), and the raw proprio keys."""
    raw = {k: np.asarray(obs[k]) for k in PROPRIO_KEYS}
    q = proprio_10d(raw[PROPRIO_KEYS[0]][None], raw[PROPRIO_KEYS[1]][None], raw[PROPRIO_KEYS[2]][None])[0]
    images = np.stack([obs[f"{c}_image"] for c in cameras]) if f"{cameras[0]}_image" in obs else None
    return dict(images=images, q=q, raw=raw)


def episode_seed(split, task, i):
    """Collection and evaluation seeds are disjoint: collect 0..999,999, eval from 10,000,000."""
    return (10_000_000 if split == "eval" else 0) + 100_000 * list(TASKS).index(task) + i


# -----------------------------------------------------------------------------
# scripted experts: waypoints in the OSC pose action space

def yaw_of(quat_xyzw):
    x, y, z, w = quat_xyzw
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


class Expert:
    """Grasp an object from above, carry it, put it down. Phases advance when the gripper reaches
    each waypoint; the yaw of the gripper is turned to the object's (modulo 90 deg for a cube)."""

    def __init__(self, env):
        self.env, self.phase, self.t = env, 0, 0

    def waypoints(self, obs):
        task, env = self.env.task, self.env
        if task == "lift":
            pick, turn = obs["cube_pos"], yaw_of(obs["cube_quat"])
            place = pick + np.array([0, 0, 0.15])
            return pick, turn, place, False
        if task == "can":
            pick = obs["Can_pos"]
            bin_xy = env.target_bin_placements[env.object_to_id["can"]][:2]
            return pick, None, np.array([*bin_xy, env.bin2_pos[2] + 0.12]), True
        pick, turn = obs["cubeA_pos"], yaw_of(obs["cubeA_quat"])
        return pick, turn, obs["cubeB_pos"] + np.array([0, 0, 0.055]), True

    def act(self, obs):
        pick, turn, place, release = self.waypoints(obs)
        eef = obs["robot0_eef_pos"]
        grip_yaw = yaw_of(obs["robot0_eef_quat"])
        a = np.zeros(ACTION_DIM)
        if turn is not None:   # turn the gripper to the cube's yaw, modulo 90 deg
            err = (turn - grip_yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4
            if self.phase < 3:
                a[5] = np.clip(3 * err, -1, 1)
        above = pick + np.array([0, 0, 0.10])
        self.t += 1
        if self.phase == 0:                       # above the object, open
            target, grip = above, -1
        elif self.phase == 1:                     # down to it
            target, grip = pick + np.array([0, 0, -0.005]), -1
        elif self.phase == 2:                     # close
            target, grip = pick + np.array([0, 0, -0.005]), 1
        elif self.phase == 3:                     # up and over the goal
            target, grip = (place + np.array([0, 0, 0.08])) if release else place, 1
        elif self.phase == 4:                     # down onto the goal
            target, grip = place, 1
        else:                                     # let go and back off
            target, grip = place + np.array([0, 0, 0.1]), -1
        err = target - eef
        if self.phase == 3 and release and np.linalg.norm(err[:2]) > 0.03:
            err[2] = max(err[2], place[2] + 0.1 - eef[2])      # stay high while travelling
        a[:3] = np.clip(err / 0.05 * 1.5, -1, 1)
        a[6] = grip
        done_here = np.linalg.norm(err) < (0.01 if self.phase in (1, 4) else 0.02)
        if self.phase == 0 and done_here and (turn is None or abs(a[5]) < 0.1):
            self.phase, self.t = 1, 0
        elif self.phase == 1 and (done_here or self.t > 40):
            self.phase, self.t = 2, 0
        elif self.phase == 2 and self.t > 12:
            self.phase, self.t = 3, 0
        elif self.phase == 3 and done_here and release:
            self.phase, self.t = 4, 0
        elif self.phase == 4 and (done_here or self.t > 30):
            self.phase, self.t = 5, 0
        return a


def rollout(env, seed, look=None, record=False):
    """One scripted episode. Returns (success, steps) or, with record, the arrays of a demo."""
    obs = reset(env, seed, look)
    expert, frames, success, extra = Expert(env), [], False, 0
    for t in range(TASKS[env.task]["horizon"]):
        a = expert.act(obs)
        if record:
            frames.append((observation(obs, env.cameras), a, env.sim.get_state().flatten()))
        obs, _, _, _ = env.step(a)
        if env._check_success():
            success = True
            extra += 1
            if extra > 5:   # a few steps past success, so the demo shows the task done
                break
    return (success, t + 1, frames) if record else (success, t + 1)


# -----------------------------------------------------------------------------
# the demo collector (robomimic's layout; successful demos only; resumable)

def write_demo(f, k, task, seed, look, frames, cameras):
    """frames: list of (observation dict, action, sim state) -> data/demo_k."""
    g = f["data"].create_group(f"demo_{k}")
    T = len(frames)
    g.attrs.update(num_samples=T, instruction=TASKS[task]["instruction"], task=task, seed=seed,
                   appearance=json.dumps(look))
    g["actions"] = np.stack([a for _, a, _ in frames]).astype(np.float32)
    g["states"] = np.stack([s for _, _, s in frames])
    g["rewards"] = np.zeros(T, np.float32)
    g["rewards"][-1] = 1.0
    g["dones"] = np.eye(T, dtype=np.int64)[-1]
    for key in PROPRIO_KEYS:
        g[f"obs/{key}"] = np.stack([o["raw"][key] for o, _, _ in frames])
    for v, cam in enumerate(cameras):
        g[f"obs/{cam}_image"] = np.stack([o["images"][v] for o, _, _ in frames])
    f["data"].attrs["total"] = int(f["data"].attrs.get("total", 0)) + T


_ENVS = {}   # a collection worker's envs, one per task, made on first use


def _episode(job):
    """In a worker process: one scripted episode with cameras; its frames come back if it succeeded."""
    task, seed, look, image_size, cameras = job
    if task not in _ENVS:
        _ENVS[task] = make_env(task, image_size, cameras)
    success, steps, frames = rollout(_ENVS[task], seed, look, record=True)
    return task, seed, look, success, frames if success else None


def collect(args, tasks):
    """Episodes run in `args.workers` processes; this process writes each successful demo as it
    arrives and flushes, so an interruption leaves a valid file that --extend continues."""
    import multiprocessing as mp
    import h5py
    from tqdm import tqdm
    check_gl()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    cameras = args.cameras.split(",")
    with h5py.File(args.out, "a" if args.extend else "w") as f, mp.get_context("spawn").Pool(args.workers) as pool:
        data = f.require_group("data")
        if "env_args" not in data.attrs:
            data.attrs["env_args"] = json.dumps(dict(env_name=",".join(TASKS[t]["env"] for t in tasks), type=1,
                                                     env_kwargs=dict(robots="Panda", controller="BASIC", control_freq=20,
                                                                     camera_names=cameras, camera_heights=args.image_size,
                                                                     camera_widths=args.image_size)))
        done = {(str(g.attrs["task"]), int(g.attrs["seed"])) for g in data.values()}
        have = {t: sum(1 for tt, _ in done if tt == t) for t in tasks}
        tried = {t: 0 for t in tasks}
        bar = tqdm(total=args.episodes * len(tasks), initial=sum(min(have[t], args.episodes) for t in tasks),
                   desc="demos", unit="demo")
        try:
            while any(have[t] < args.episodes for t in tasks):   # rounds: experts rarely fail, so one is typical
                jobs = []
                for t in tasks:
                    while len([j for j in jobs if j[0] == t]) < args.episodes - have[t]:
                        seed = episode_seed("collect", t, args.seed + tried[t])
                        tried[t] += 1
                        if (t, seed) not in done:
                            look = appearance("seen", seed) if not args.no_appearance else None
                            jobs.append((t, seed, look, args.image_size, cameras))
                for t, seed, look, success, frames in pool.imap_unordered(_episode, jobs):
                    if success:
                        write_demo(f, len(data), t, seed, look or {}, frames, cameras)
                        f.flush()
                        have[t] += 1
                        bar.update(1)
                    bar.set_postfix(kept={t: have[t] for t in tasks})
                failing = [t for t in tasks if have[t] < args.episodes and tried[t] > 3 * args.episodes + 10]
                if failing:
                    sys.exit(f"error: the {failing[0]} expert failed too often; see --measure-experts")
        except KeyboardInterrupt:
            pool.terminate()
            print(f"\ninterrupted: {args.out} holds {len(data)} complete demos; re-run with --extend to continue")
        bar.close()
        counts = {t: sum(1 for g in data.values() if g.attrs["task"] == t) for t in tasks}
    print(f"{args.out}: {counts} demos")


def measure_experts(args, tasks):
    import time
    for task in tasks:
        env = make_env(task, render=False)
        t0, results = time.time(), []
        for i in range(args.episodes):
            seed = episode_seed("collect", task, args.seed + i)
            results.append(rollout(env, seed, appearance("seen", seed)))
        ok = sum(s for s, _ in results)
        print(json.dumps(dict(task=task, successes=ok, episodes=len(results), success=ok / len(results),
                              mean_steps=float(np.mean([n for _, n in results])),
                              seconds_per_episode_no_cameras=(time.time() - t0) / len(results))))
        env.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="lift,can,stack")
    ap.add_argument("--episodes", type=int, default=20, help="successful demos per task")
    ap.add_argument("--out", default="data/demos.hdf5")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--cameras", default=",".join(CAMERAS))
    ap.add_argument("--seed", type=int, default=0, help="first collection seed")
    ap.add_argument("--workers", type=int, default=2, help="episode worker processes")
    ap.add_argument("--no-appearance", action="store_true", help="keep robosuite's default look")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--extend", action="store_true", help="add demos to an existing --out (skips its seeds)")
    ap.add_argument("--measure-experts", action="store_true", help="success of the scripted experts (no cameras, no file)")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        sys.exit(f"error: unknown task {', '.join(unknown)}: choose from {', '.join(TASKS)}")
    if args.episodes <= 0:
        sys.exit(f"error: --episodes must be positive (got {args.episodes})")
    if args.measure_experts:
        return measure_experts(args, tasks)
    if os.path.exists(args.out) and not (args.overwrite or args.extend):
        sys.exit(f"error: {args.out} exists: pass --extend to add demos to it, --overwrite to replace it, or another --out")
    bad = [c for c in args.cameras.split(",") if c not in ALL_CAMERAS]
    if bad:
        sys.exit(f"error: unknown camera {bad}: choose from {', '.join(ALL_CAMERAS)}")
    collect(args, tasks)


if __name__ == "__main__":
    main()
