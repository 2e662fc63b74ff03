"""
Everything robosuite: the env (Panda, OSC pose, two exterior cameras + the wrist camera), the observation the policy
reads, exact episode seeding, the scripted experts' rollouts (experts.py), and the demo collector:

    python sim.py --tasks lift,can,stack --episodes 20 --out data/demos.hdf5
    python sim.py --tasks lift,can,stack --episodes 20 --measure-experts     # success of the experts

Demos are written in robomimic's HDF5 layout (what data.py reads), successful ones only, each with its seed and
appearance. Collection and evaluation (evaluate.py) make envs and observations here, so they cannot drift apart.
Appearance (looks.py): table, floor, wall (and, for lift, cube) colours and the light are drawn per episode; "seen"
looks (collection) and "unseen" looks (an OOD evaluation) take their hues from disjoint ranges, so a held-out look
is truly new.

Cameras: agentview, frontview (robosuite's stock view from in front of the table: the whole robot, objects about 4
px at 128 px; "sideview" does not exist in PickPlaceCan's arena) and the wrist. Note: mj_step computes positions
before it integrates, so obs t (from the last substep's kinematics) and states[t] differ by one 2 ms physics
substep: a replayed state reproduces obs t to ~0.5 mm.
"""
import argparse
import json
import os
import signal
import sys
import tempfile
import types

import numpy as np

from experts import Expert, can_waypoints, lift_waypoints, stack_waypoints
from looks import HUES, appearance, apply_appearance  # noqa: F401 (sim.appearance is part of sim's interface)

CAMERAS = ("agentview", "frontview", "robot0_eye_in_hand")   # two exterior views + the wrist ("sideview": not in PickPlaceCan)
ALL_CAMERAS = ("agentview", "frontview", "birdview", "robot0_robotview", "robot0_eye_in_hand")   # in all three tasks
ACTION_DIM = 7   # dx, dy, dz (x 0.05 m), dax, day, daz (x 0.5 rad), gripper (-1 open, +1 closed)
PROPRIO_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
EXTRA_STEPS = 5  # steps recorded after success is first reached, so a demo shows the task done
GL_HELP = ("install EGL (apt-get install -y libegl1 libopengl0 libgl1-mesa-dri libgl1 libglib2.0-0) or OSMesa "
           "(apt-get install -y libosmesa6 libgl1 libglib2.0-0) and choose it with MUJOCO_GL=egl|osmesa")


def die(msg):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def import_robosuite():
    """Import robosuite with images top-row-up (opencv convention) and its start-up chatter off."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if "robosuite.macros_private" not in sys.modules:
        macros = types.ModuleType("robosuite.macros_private")
        macros.IMAGE_CONVENTION, macros.CONSOLE_LOGGING_LEVEL = "opencv", "ERROR"
        sys.modules["robosuite.macros_private"] = macros
    import robosuite
    import robosuite.macros
    robosuite.macros.IMAGE_CONVENTION = "opencv"   # also if robosuite was imported before us
    return robosuite


def gl_error():
    """None if an offscreen GL context can be made with MUJOCO_GL (default egl), else one line saying why
    and what to install."""
    backend = os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import mujoco
        ctx = mujoco.GLContext(32, 32)
        ctx.make_current()
        ctx.free()
        return None
    except Exception as e:
        return f"offscreen rendering with MUJOCO_GL={backend} failed ({type(e).__name__}: {str(e)[:80]}); {GL_HELP}"


def check_gl():
    """Exit with one clear line if no offscreen GL backend works."""
    msg = gl_error()
    if msg:
        sys.exit(f"error: {msg}")


# -----------------------------------------------------------------------------
# env, seeding, appearance, observation

def make_env(task, image_size=128, cameras=CAMERAS, render=True):
    """A robosuite env for `task` (a key of TASKS); render=False or cameras=() gives no cameras (fast, for
    the experts). Made with seed 0, so the model (the Lift cube's size is drawn at load time) is the same
    in every process; episodes are seeded by reset(). hard_reset=False: a reset keeps the sim and the GL
    context (60-100 ms instead of 1.4-4.2 s)."""
    suite = import_robosuite()
    from robosuite.controllers import load_composite_controller_config
    spec, render = TASKS[task], render and len(cameras) > 0
    env = suite.make(spec["env_name"], robots="Panda",
                     controller_configs=load_composite_controller_config(controller="BASIC", robot="Panda"),
                     has_renderer=False, has_offscreen_renderer=render, use_camera_obs=render,
                     camera_names=list(cameras) or "agentview", camera_heights=image_size, camera_widths=image_size,
                     control_freq=20, horizon=spec["horizon"] + 50, ignore_done=True, hard_reset=False,
                     reward_shaping=False, seed=0)
    env.task, env.cameras, env.image_size = task, list(cameras) if render else [], image_size
    m = env.sim.model._model
    env.stock_look = dict(mat_rgba=m.mat_rgba.copy(), mat_texid=m.mat_texid.copy(),
                          light_diffuse=m.light_diffuse.copy(), light_dir=m.light_dir.copy())
    if render:
        fast_rendering(env)
    return env


def fast_rendering(env):
    """No multisampling, an offscreen buffer the size of the camera, no reflections: ~3x faster on a CPU.
    Also: robosuite renders without making the env's GL context current, so with two envs in one process
    (a worker serving several tasks) one env would draw with the other's context (garbage frames). The
    context is made current before every render."""
    import mujoco
    ctx = env.sim._render_context_offscreen
    ctx.gl_ctx.make_current()
    m = env.sim.model._model
    m.vis.quality.offsamples = 0
    m.vis.global_.offwidth = m.vis.global_.offheight = env.image_size
    ctx.con.free()   # rebuild the buffers so that both settings take effect
    ctx._set_mujoco_context_and_buffers()
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    render = ctx.render

    def render_in_own_context(*args, **kwargs):
        ctx.gl_ctx.make_current()
        return render(*args, **kwargs)
    ctx.render = render_in_own_context


def reset(env, seed, look=None):
    """Reset to episode `seed` with appearance `look` (None: robosuite's stock look), exactly: the env's
    and the placement samplers' generators are replaced by fresh ones first (robosuite has no
    reset(seed=)), so the same (seed, look) gives the same observations and states. Returns the raw
    observation dict."""
    env.rng = np.random.default_rng(seed)   # robot init noise; PickPlaceCan's samplers are nested
    samplers = [env.placement_initializer]
    while samplers:
        s = samplers.pop()
        s.rng = env.rng
        samplers += list(getattr(s, "samplers", {}).values())
    apply_appearance(env, look, TASKS[env.task]["recolour"])   # the soft reset keeps the model: the first frame has it
    return env.reset()


def observation(obs, cameras=CAMERAS):
    """robosuite obs -> what the policy reads: images (V, H, W, 3) uint8 top row up (None without cameras),
    q (10,) float32 (eef xyz, 6D rotation = first two columns of R, gripper opening qpos[0] - qpos[1]),
    and raw, the proprio keys as robosuite gives them (for storage) and "object", the object poses (robosuite's
    object-state: for Lift cube_pos, cube_quat, gripper_to_cube_pos), which q of a privileged policy appends."""
    from data import proprio_10d   # here, not at the top: data.py imports torch, and `import sim` stays cheap
    raw = {k: np.asarray(obs[k]) for k in PROPRIO_KEYS}
    if "object-state" in obs:
        raw["object"] = np.asarray(obs["object-state"])
    q = proprio_10d(raw[PROPRIO_KEYS[0]][None], raw[PROPRIO_KEYS[1]][None], raw[PROPRIO_KEYS[2]][None])[0]
    images = np.stack([obs[f"{c}_image"] for c in cameras]) if cameras and f"{cameras[0]}_image" in obs else None
    return dict(images=images, q=q, raw=raw)


def episode_seed(split, task, i):
    """Seed of episode i of `task`: collection seeds lie in [0, 10^6), evaluation seeds from 10^7, so the
    two never meet; tasks take blocks of 10^5."""
    assert 0 <= i < 100_000, f"episode index {i} out of range"
    return (10_000_000 if split == "eval" else 0) + 100_000 * list(TASKS).index(task) + i


TASKS = {   # recolour: materials an appearance may recolour (only where the instruction names no colour)
    "lift": dict(env_name="Lift", instruction="lift the cube", horizon=150, expert=lift_waypoints,
                 recolour=("cube_redwood_mat",)),
    "can": dict(env_name="PickPlaceCan", instruction="pick up the can and place it in the bin", horizon=300,
                expert=can_waypoints, recolour=()),
    "stack": dict(env_name="Stack", instruction="stack the red cube on the green cube", horizon=250,
                  expert=stack_waypoints, recolour=()),
}


def rollout(env, seed, look=None, record=False, noise=0.0):
    """One scripted episode, ended EXTRA_STEPS steps after success or at the horizon. Returns
    (success, steps) or, with record, (success, steps, frames): per step the observation before the
    action, the expert's action, the sim state and the reward. noise > 0 (DART, Laskey et al. 2017): the
    executed xyz action gets N(0, noise^2) added, the recorded one stays the expert's, so the demos show
    how to recover from states a little off the expert's path (seeded by the episode)."""
    obs = reset(env, seed, look)
    expert, frames, success_at = Expert(env, TASKS[env.task]["expert"]), [], None
    rng = np.random.default_rng([seed, 1])
    for t in range(TASKS[env.task]["horizon"]):
        a, state, o = expert.act(obs), env.sim.get_state().flatten(), obs
        executed = a.copy()
        executed[:3] = np.clip(a[:3] + noise * rng.standard_normal(3), -1, 1) if noise else a[:3]
        obs, reward, _, _ = env.step(executed)
        if record:
            frames.append(dict(obs=observation(o, env.cameras), object=o["object-state"], action=a, state=state,
                               reward=reward))
        if success_at is None and env._check_success():
            success_at = t
        if success_at is not None and t >= success_at + EXTRA_STEPS:
            break
    success = success_at is not None and bool(env._check_success())   # reached, and still holds at the end
    return (success, t + 1) + ((frames,) if record else ())


# -----------------------------------------------------------------------------
# the demo collector (robomimic's layout; successful demos only; resumable)

def write_demo(f, task, seed, look, frames, cameras, noise=0.0):
    """frames (from rollout) -> data/demo_k, k = the number of demos so far. num_samples is written last:
    a demo without it is incomplete (interrupted mid-write) and is dropped by drop_incomplete."""
    data = f["data"]
    g = data.create_group(f"demo_{len(data)}")
    T = len(frames)
    g.attrs.update(instruction=TASKS[task]["instruction"], task=task, seed=seed, appearance=json.dumps(look),
                   action_noise=noise)
    g["actions"] = np.stack([fr["action"] for fr in frames]).astype(np.float32)   # (T, 7)
    g["states"] = np.stack([fr["state"] for fr in frames])                        # (T, S) float64
    g["rewards"] = np.array([fr["reward"] for fr in frames], np.float32)          # (T,)
    g["dones"] = np.eye(T, dtype=np.int64)[-1]                                    # (T,) 1 at the last step
    for key in PROPRIO_KEYS:
        g[f"obs/{key}"] = np.stack([fr["obs"]["raw"][key] for fr in frames])
    g["obs/object"] = np.stack([fr["object"] for fr in frames])                   # (T, D) object poses
    for v, cam in enumerate(cameras):
        g[f"obs/{cam}_image"] = np.stack([fr["obs"]["images"][v] for fr in frames])   # (T, H, W, 3) uint8
    g.attrs["num_samples"] = T
    data.attrs["total"] = sum(int(d.attrs["num_samples"]) for d in data.values())
    f.flush()


def complete_counts(path, cameras, image_size):
    """{task: complete demos} of a file of sim.py's with these cameras at this size (read only), else None."""
    import h5py
    with h5py.File(path, "r") as f:
        demos = [g for g in f.get("data", {}).values() if "num_samples" in g.attrs and "task" in g.attrs and "states" in g]
        if demos and views_of(demos[0]) == sorted((c, image_size) for c in cameras):
            return {t: sum(1 for g in demos if g.attrs["task"] == t) for t in TASKS}


def views_of(demo):
    return sorted((k[:-6], v.shape[1]) for k, v in demo.get("obs", {}).items() if k.endswith("_image"))   # (name, px)


def drop_incomplete(f):
    for name in [n for n, g in f["data"].items() if "num_samples" not in g.attrs]:
        del f["data"][name]


_ENVS = {}   # a collection worker's envs, one per task, made on first use


def _episode(job):
    """In a worker process: one scripted episode with cameras; its frames come back if it succeeded."""
    task, seed, look, image_size, cameras, noise = job
    if task not in _ENVS:
        _ENVS[task] = make_env(task, image_size, cameras)
    success, steps, frames = rollout(_ENVS[task], seed, look, record=True, noise=noise)
    return task, seed, look, success, frames if success else None


def _worker_init(threads):
    """Ctrl-C is the parent's to handle. Mesa's software renderer (llvmpipe) starts a thread per core in
    every process: two workers on 2 cores were slower than one until each got its share."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("LP_NUM_THREADS", str(threads))


def collect(args, tasks, cameras):
    """Episodes run in `args.workers` processes; this process writes each successful demo in seed order
    as it arrives and flushes, so an interruption leaves a valid file that --extend continues."""
    import multiprocessing as mp
    import h5py
    from tqdm import tqdm
    check_gl()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    env_kwargs = dict(robots="Panda", controller="BASIC", control_freq=20, camera_names=cameras,
                      camera_heights=args.image_size, camera_widths=args.image_size)
    path = args.tmp or args.out   # --overwrite: a file of our own beside out, renamed over it on success
    if args.extend and h5py.is_hdf5(args.out) and (counts := complete_counts(args.out, cameras, args.image_size)) and all(counts.get(t, 0) >= args.episodes for t in tasks):
        print(f"{args.out}: {counts} demos (nothing to add: the file is left as it was)")   # so its runs still fit it
        return
    try:
        f = h5py.File(path, "a" if args.extend else "w")
    except OSError as e:
        die(f"cannot open {args.out} as HDF5 ({str(e).splitlines()[0]}): choose another --out")
    with f:   # --extend: the demos there are checked before anything is written
        demos = list(f.get("data", {}).values())
        views = views_of(demos[0]) if demos else []
        envs = json.loads(f["data"].attrs.get("env_args", '{"env_name": "none"}'))["env_name"] if demos else ""
        ours = {TASKS[t]["env_name"] for t in TASKS}   # sim.py's demos: its envs, their states, a task and a seed each
        if demos and (set(envs.split(",")) - ours or any({"task", "seed"} - set(g.attrs) or "states" not in g for g in demos)):
            die(f"{args.out} was not written by sim.py (env {envs}; sim.py's demos have states, a task and a seed): "
                f"--extend only a file of sim.py's; collect into another --out")
        if demos and views != sorted((c, args.image_size) for c in cameras):
            die(f"{args.out} holds demos of other cameras {views} (name, px): --extend it with its --cameras and --image-size")
        data = f.require_group("data")
        old_envs = json.loads(data.attrs.get("env_args", '{"env_name": ""}'))["env_name"].split(",")
        env_names = [TASKS[t]["env_name"] for t in TASKS if t in tasks or TASKS[t]["env_name"] in old_envs]
        data.attrs["env_args"] = json.dumps(dict(env_name=",".join(env_names), type=1, env_kwargs=env_kwargs))
        drop_incomplete(f)
        done = {(str(g.attrs["task"]), int(g.attrs["seed"])) for g in data.values()}
        have = {t: sum(1 for tt, _ in done if tt == t) for t in tasks}
        tried = {t: 0 for t in tasks}
        bar = tqdm(total=args.episodes * len(tasks), initial=sum(min(have[t], args.episodes) for t in tasks),
                   desc="demos", unit="demo")
        workers = min(args.workers, sum(max(0, args.episodes - have[t]) for t in tasks))   # no idle start-ups
        threads = max(1, os.cpu_count() // max(1, workers))
        pool = mp.get_context("spawn").Pool(workers, _worker_init, (threads,)) if workers > 1 else None
        try:
            while any(have[t] < args.episodes for t in tasks):   # rounds: experts rarely fail, so one is typical
                jobs = []
                for t in tasks:
                    while len([j for j in jobs if j[0] == t]) < args.episodes - have[t]:
                        seed = episode_seed("collect", t, args.seed + tried[t])
                        tried[t] += 1
                        if (t, seed) not in done:
                            look = appearance("seen", seed) if not args.no_appearance else None
                            jobs.append((t, seed, look, args.image_size, cameras, args.noise))
                for t, seed, look, success, frames in (pool.imap(_episode, jobs) if pool else map(_episode, jobs)):
                    if success:
                        write_demo(f, t, seed, look, frames, cameras, args.noise)
                        have[t] += 1
                        bar.update(1)
                    bar.set_postfix(kept={t: have[t] for t in tasks})
                failing = [t for t in tasks if have[t] < args.episodes and tried[t] > 3 * args.episodes + 10]
                if failing:
                    die(f"the {failing[0]} expert failed too often; see --measure-experts")
        except KeyboardInterrupt:
            drop_incomplete(f)
            bar.close()
            print(f"\ninterrupted: {args.out} holds {len(data)} complete demos; re-run with --extend to continue"
                  if path == args.out else f"\ninterrupted: {args.out} is as it was", file=sys.stderr)
            sys.exit(130)
        finally:
            if pool:
                pool.terminate()
        bar.close()
        counts = {t: sum(1 for g in data.values() if g.attrs["task"] == t) for t in TASKS}
    os.replace(path, args.out)   # --overwrite: only a complete collection replaces the old file (else path is out)
    print(f"{args.out}: {counts} demos")


def measure_experts(args, tasks):
    import time
    for task in tasks:
        env = make_env(task, render=False)
        t0, results = time.time(), []
        for i in range(args.episodes):
            seed = episode_seed("collect", task, args.seed + i)
            results.append(rollout(env, seed, appearance("seen", seed) if not args.no_appearance else None))
        ok = sum(s for s, _ in results)
        print(json.dumps(dict(task=task, successes=ok, episodes=len(results), success=ok / len(results),
                              mean_steps=float(np.mean([n for _, n in results])),
                              seconds_per_episode_no_cameras=round((time.time() - t0) / len(results), 3))))
        env.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.error = lambda msg: die(f"{msg}: see python sim.py --help")   # argparse's errors in the house form
    ap.add_argument("--tasks", default="lift,can,stack")
    ap.add_argument("--episodes", type=int, default=20, help="successful demos per task")
    ap.add_argument("--out", default="data/demos.hdf5")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--cameras", default=",".join(CAMERAS))
    ap.add_argument("--seed", type=int, default=0, help="first collection episode index (seeds: episode_seed)")
    ap.add_argument("--workers", type=int, default=2, help="episode worker processes (1: in this process)")
    ap.add_argument("--no-appearance", action="store_true", help="keep robosuite's stock look")
    ap.add_argument("--noise", type=float, default=0.0, help="std of the noise on the executed xyz actions (DART)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--extend", action="store_true", help="add demos to an existing --out (skips its seeds)")
    ap.add_argument("--measure-experts", action="store_true", help="success of the scripted experts (no cameras, no file)")
    args = ap.parse_args()
    import h5py
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        die(f"unknown task {', '.join(unknown)}: choose from {', '.join(TASKS)}")
    for k, (lo, hi) in dict(episodes=(1, 10**6), workers=(1, 256), image_size=(16, 2048), seed=(0, 50_000), noise=(0, 1)).items():
        if not lo <= getattr(args, k) <= hi:
            die(f"--{k.replace('_', '-')} must be in [{lo}, {hi}] (got {getattr(args, k)})")
    if args.measure_experts:
        return measure_experts(args, tasks)
    if args.overwrite and args.extend:
        die("pass --overwrite or --extend, not both")
    if os.path.isdir(args.out) or args.overwrite and os.path.isfile(args.out) and not h5py.is_hdf5(args.out):
        die(f"--out {args.out} is a folder or a file that is not HDF5: name a demo file (.hdf5)")
    if os.path.exists(args.out) and not (args.overwrite or args.extend):
        die(f"{args.out} exists: pass --extend to add demos to it, --overwrite to replace it, or another --out")
    cameras = args.cameras.split(",")
    bad = [c for c in cameras if c not in ALL_CAMERAS]
    if bad or len(set(cameras)) != len(cameras):
        die(f"unknown or repeated camera {', '.join(bad) or args.cameras}: choose from {', '.join(ALL_CAMERAS)}, each once")
    args.tmp = None   # --overwrite: collected into a new file of our own beside out (never a name the user has)
    if args.overwrite and os.path.isfile(args.out):
        fd, args.tmp = tempfile.mkstemp(prefix=os.path.basename(args.out) + ".incomplete-", dir=os.path.dirname(os.path.abspath(args.out)))
        os.close(fd)
    try:
        collect(args, tasks, cameras)
    finally:   # a failed or interrupted --overwrite leaves the old file as it was, and nothing beside it
        if args.tmp and os.path.isfile(args.tmp):
            os.remove(args.tmp)


if __name__ == "__main__":
    main()
