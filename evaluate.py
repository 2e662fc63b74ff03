"""
Closed-loop evaluation in robosuite: predict a chunk of H actions, execute the first few, re-plan.

    python evaluate.py runs/tiny-rscl/ckpt.pt --tasks lift --episodes 20
    python evaluate.py CKPT --tasks lift,can,stack --episodes 50 --appearance unseen   # held-out looks
    python evaluate.py expert --tasks lift --episodes 50 --out runs/references/expert-seen   # the ceiling
    python evaluate.py blind --tasks lift --episodes 50 --out runs/references/blind-seen     # the floor

References (no checkpoint, the same episodes and loop): `expert` is sim.py's scripted expert, the ceiling; `blind`
is the same script aimed at the mean object pose of the collection episodes, which never looks: the floor. A
privileged checkpoint (q also holds the simulator's object state, trained with --orientation raw --proprio-keys
robot0_eef_pos,robot0_eef_quat,robot0_gripper_qpos,object) gets that same q here: the policy under perfect perception.

Episodes run in worker processes (one env each); the policy runs here, batched across the envs.
Evaluation seeds are fixed and disjoint from the collection seeds (sim.episode_seed). Success is
the env's own check. Prints per-task success with a 95% Wilson interval, writes results.json and
a GIF of the first episodes with every camera view side by side.
"""
import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import sim
from experts import Expert, blind_waypoints, mean_object_pose
from layouts import DataError, run_layout, state_q
from model import Policy
from output import OutputError, claim, new_folder, swap_in, writing
from stats import wilson


def die(msg, code=2):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.error = lambda msg: die(f"{msg}: see python evaluate.py --help")   # argparse's errors in the house form
REFERENCES = ("expert", "blind")
p.add_argument("ckpt", help="a checkpoint, or a reference: expert (the ceiling) or blind (the floor)")
p.add_argument("--tasks", default="lift")
p.add_argument("--episodes", type=int, default=10, help="episodes per task")
p.add_argument("--appearance", default="seen", choices=["seen", "unseen", "none"],
               help="training-like or held-out looks; none: robosuite's stock look (sim.py --no-appearance)")
p.add_argument("--execute", type=int, default=8, help="actions executed per predicted chunk before re-planning")
p.add_argument("--init-noise", type=float, default=1.0,
               help="std of the flow's starting point x0 at inference: 1 = sampling (GR00T, default), 0 = deterministic")
p.add_argument("--horizon", type=int, default=0, help="max env steps per episode (0: the task's default)")
p.add_argument("--workers", type=int, default=2, help="env worker processes")
p.add_argument("--videos", type=int, default=2, help="episodes saved as GIF (first ones of each task)")
p.add_argument("--out", default="", help="output folder (default: next to the checkpoint, eval-<appearance>)")
p.add_argument("--overwrite", action="store_true", help="replace an existing output folder (only once all is written)")
p.add_argument("--weights", default="auto", choices=["auto", "ema", "raw"],
               help="the checkpoint's EMA weights (train.py --ema) or its raw ones; auto: EMA where saved")
p.add_argument("--device", default="auto")
p.add_argument("--seed", type=int, default=0, help="seed of the policy's noise")
args = p.parse_args()


def check_args(a):
    """Every flag's range, before anything runs: the first problem as one line, else None."""
    for k, lo in dict(episodes=1, execute=1, horizon=0, workers=1, videos=0).items():
        if getattr(a, k) < lo:
            return f"--{k} must be at least {lo} (got {getattr(a, k)})"
    if not 0 <= a.seed < 2**32:   # the seeds torch.manual_seed takes
        return f"--seed must be in [0, {2**32 - 1}] (got {a.seed})"
    if not 0 <= a.init_noise <= 10:   # NaN fails too
        return f"--init-noise must be in [0, 10] (got {a.init_noise})"
    if a.device != "auto" and (not re.fullmatch(r"cpu|cuda(:\d+)?", a.device) or "cuda" in a.device and not torch.cuda.is_available()):
        return f"--device {a.device} is not available here: use auto, cpu{', cuda or cuda:N' * torch.cuda.is_available()}"


# -----------------------------------------------------------------------------
# a worker owns one env; it answers ("reset", task, seed, appearance) and ("step", actions)

def worker(conn, cameras, image_size, reference=None):
    """reference None: the main process sends the actions; expert or blind: the worker computes them here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle (it was ignored from the start)
    envs, agent = {}, None
    while True:
        try:
            msg = conn.recv()
        except EOFError:   # the parent is gone (interrupted): end quietly
            break
        if msg[0] == "close":
            break
        if msg[0] == "reset":
            _, task, seed, appearance = msg
            if task not in envs:
                envs[task] = sim.make_env(task, image_size=image_size, cameras=cameras)
            env = envs[task]
            obs = sim.reset(env, seed, appearance)
            if reference:   # a fresh script per episode; the blind one aims at the mean pose (computed once per env)
                waypoints = sim.TASKS[task]["expert"]
                if reference == "blind":
                    if not hasattr(env, "mean_pose"):
                        env.mean_pose = mean_object_pose(env, lambda e, i: sim.reset(e, sim.episode_seed("collect", task, i)))
                        obs = sim.reset(env, seed, appearance)
                    waypoints = blind_waypoints(waypoints, env.mean_pose)
                agent = Expert(env, waypoints)
            frames = [sim.observation(obs, cameras)["images"]]
            conn.send((sim.observation(obs, cameras), False, frames, 0))
        else:   # execute a chunk of actions, stop early on success
            _, actions = msg
            frames, success, n = [], False, 0
            for a in actions if agent is None else range(actions):   # a reference: `actions` is a count
                obs, _, _, _ = env.step(np.clip(a if agent is None else agent.act(obs), -1, 1))
                n += 1
                frames.append(sim.observation(obs, cameras)["images"])
                if env._check_success():
                    success = True
                    break
            conn.send((sim.observation(obs, cameras), success, frames, n))
    for env in envs.values():
        env.close()


def load_policy(path, device, tasks):
    """The checkpoint's policy, and q_of(obs, task) -> q (d,) built the way its training data was read: sim.py's
    10-D q, or (privileged) the raw proprio keys and the object state. One clear line when the simulator cannot
    give that q."""
    try:
        policy = Policy.from_checkpoint(path, device=device, weights=args.weights)
    except Exception as e:
        die(str(e))
    cfg = policy.cfg
    if args.execute > cfg.horizon:
        die(f"--execute {args.execute} is more than the checkpoint's chunk of {cfg.horizon} actions: give 1 to {cfg.horizon}")
    missing = [c for c in cfg.cameras if c not in sim.CAMERAS]
    if missing or cfg.action_dim != sim.ACTION_DIM:
        die(f"checkpoint does not match the simulator: it reads cameras {cfg.cameras} and writes {cfg.action_dim}-D "
            f"actions; sim.py offers cameras {list(sim.CAMERAS)} and {sim.ACTION_DIM}-D actions")
    r = run_layout(policy.train_config)   # how its training data was read
    keys, offered = r["proprio_keys"].split(","), (*sim.PROPRIO_KEYS, "object")
    if r["image_flip"] != "none" or any(k not in offered for k in keys) or r["orientation"] not in ("quat_xyzw", "raw"):
        die(f"checkpoint {path} was trained on data read with --orientation {r['orientation']}, --proprio-keys "
            f"{r['proprio_keys']}, --image-flip {r['image_flip']}; the simulator gives upright frames and q from "
            f"{', '.join(offered)} (quat_xyzw or raw): evaluate a run trained on sim.py's demos with their layout")

    q_of = lambda obs, task: state_q(obs["raw"], keys, r["orientation"])   # (d,)
    for task in tasks if "object" in keys else ():   # the object state's width depends on the task: check it first
        env = sim.make_env(task, cameras=())
        try:
            q = q_of(sim.observation(sim.reset(env, sim.episode_seed("eval", task, 0))), task)
        except (KeyError, DataError) as e:
            die(f"the simulator cannot give {task}'s q as checkpoint {path} reads it ({e}): evaluate it on its own task")
        finally:
            env.close()
        if q.shape[0] != cfg.state_dim:
            die(f"checkpoint {path} reads a {cfg.state_dim}-D q, but {task}'s {r['proprio_keys']} is {q.shape[0]}-D here "
                f"(the object state differs between tasks): evaluate a privileged policy on the task it was trained on")
    return policy, q_of


def save_gif(frames, path, fps=20):
    """frames: list of (V, H, W, 3) uint8 -> a GIF with the V views side by side."""
    from PIL import Image
    images = [Image.fromarray(np.concatenate(list(f), axis=1)) for f in frames[::2]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(2000 / fps), loop=0)


def main():
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in sim.TASKS]
    if unknown:
        die(f"unknown task {unknown}: choose from {', '.join(sim.TASKS)}")
    if len(set(tasks)) != len(tasks):
        die(f"--tasks {args.tasks} names a task twice: name each once")
    if problem := check_args(args):
        die(problem)
    reference = args.ckpt if args.ckpt in REFERENCES and not os.path.exists(args.ckpt) else None
    default = os.path.join("runs", "references", f"{reference}-{args.appearance}") if reference else \
        os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), f"eval-{args.appearance}")
    out = os.path.normpath(args.out or default)
    if os.path.realpath(args.ckpt).startswith(os.path.realpath(out) + os.sep):
        die(f"--out {out} holds the checkpoint {args.ckpt}: name a folder of its own for the results")
    claim(out, "--out")   # one evaluation per output, and (next) one that can be written, before any episode runs
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out) and not args.overwrite):
        die(f"output {out} already exists{' (a file)' if os.path.isfile(out) else ''}: pass another --out"
            f"{'' if os.path.isfile(out) else ', or --overwrite to replace it once the new results are written'}")
    if os.path.isdir(out) and os.listdir(out) and "results.json" not in os.listdir(out):
        die(f"--overwrite would delete {out}, which holds no results.json (not an evaluation's folder): choose another --out")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if reference:   # no policy: cameras only for the GIFs
        policy, cameras, image_size, q_of = None, ("agentview", "robot0_eye_in_hand") if args.videos else (), 128, None
    else:
        policy, q_of = load_policy(args.ckpt, device, tasks)
        cameras, image_size = policy.cfg.cameras, policy.cfg.image_size
    tmp = new_folder(out, "--out")   # everything is written into tmp, a folder of our own, which then takes out's place
    try:
        episodes(args, out, tmp, policy, tasks, reference, q_of, cameras, image_size)
    finally:   # a failed or interrupted evaluation leaves nothing
        shutil.rmtree(tmp, ignore_errors=True)


def episodes(args, out, tmp, policy, tasks, reference, q_of, cameras, image_size):
    """Every episode, then results.json and the GIFs written into tmp, which then becomes out."""
    sim.check_gl()   # one clear line if no offscreen GL backend works
    torch.manual_seed(args.seed)

    jobs = [(t, i) for t in tasks for i in range(args.episodes)]
    ctx = mp.get_context("spawn")
    n_workers = max(1, min(args.workers, len(jobs)))
    pipes = []
    sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)   # the workers start with Ctrl-C ignored: no traceback of theirs
    for _ in range(n_workers):
        a, b = ctx.Pipe()
        ctx.Process(target=worker, args=(b, cameras, image_size, reference), daemon=True).start()
        pipes.append(a)
    signal.signal(signal.SIGINT, sigint)

    results = {t: [] for t in tasks}
    videos = {}
    state = {}   # worker -> dict(job, obs, steps, frames)
    bar = tqdm(total=len(jobs), desc="episodes", unit="ep")

    def start(w):
        if not jobs:
            return
        task, i = jobs.pop(0)
        seed = sim.episode_seed("eval", task, i)   # new looks: the seen or unseen distribution, never a training look
        pipes[w].send(("reset", task, seed, sim.appearance(args.appearance, seed)))
        obs, _, frames, _ = pipes[w].recv()
        state[w] = dict(job=(task, i), obs=obs, steps=0, frames=frames if i < args.videos else None)

    t0 = time.time()
    for w in range(n_workers):
        start(w)
    while state:
        ws = sorted(state)
        if policy is None:   # a reference acts in its worker, args.execute steps at a time
            for w in ws:
                pipes[w].send(("step", args.execute))
        else:
            images = torch.from_numpy(np.stack([state[w]["obs"]["images"] for w in ws]))
            q = torch.from_numpy(np.stack([q_of(state[w]["obs"], state[w]["job"][0]) for w in ws]))
            instructions = [sim.TASKS[state[w]["job"][0]]["instruction"] for w in ws]
            chunks = policy.predict(images, q, instructions, noise=args.init_noise).cpu().numpy()   # (n, H, a)
            for w, chunk in zip(ws, chunks):
                pipes[w].send(("step", chunk[:args.execute]))
        for w in ws:
            obs, success, frames, n = pipes[w].recv()
            s = state[w]
            s["obs"], s["steps"] = obs, s["steps"] + n
            if s["frames"] is not None:
                s["frames"] += frames
            task, i = s["job"]
            limit = args.horizon or sim.TASKS[task]["horizon"]
            if success or s["steps"] >= limit:
                results[task].append(dict(episode=i, seed=sim.episode_seed("eval", task, i), success=bool(success),
                                          steps=s["steps"]))
                if s["frames"] is not None:
                    videos[f"{task}_{i}"] = s["frames"]
                del state[w]
                bar.update(1)
                bar.set_postfix({t: f"{sum(r['success'] for r in results[t])}/{len(results[t])}" for t in tasks})
                start(w)
    bar.close()
    for pipe in pipes:
        pipe.send(("close",))

    summary = {}
    for t in tasks:
        k, n = sum(r["success"] for r in results[t]), len(results[t])
        lo, hi = wilson(k, n)
        summary[t] = dict(success=k / n, successes=k, episodes=n, wilson95=[lo, hi])
        print(f"{t:8s} success {k}/{n} = {k / n:.2f}  (95% Wilson interval {lo:.2f}-{hi:.2f})")
    with writing(out, "--out"):   # into tmp, which then takes out's place: never a mix of two evaluations
        for name, frames in videos.items():
            save_gif(frames, os.path.join(tmp, f"{name}.gif"))
        report = dict(ckpt=reference or os.path.abspath(args.ckpt), appearance=args.appearance, execute=args.execute, init_noise=args.init_noise,
                      weights=policy.weights if policy else None,
                      horizon=args.horizon, summary=summary, episodes=results, seconds=time.time() - t0)
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump(report, f, indent=1)
        swap_in(tmp, out, replace=args.overwrite)
    print(f"results: {os.path.join(out, 'results.json')}; videos: {', '.join(sorted(videos)) or 'none'} in {out}")


if __name__ == "__main__":
    try:
        main()
    except OutputError as e:   # a write that failed, or --out in use (output.py)
        die(str(e))
    except KeyboardInterrupt:  # the workers ignore Ctrl-C; the results are written only once every episode has run
        print("\ninterrupted: nothing was written (evaluate.py writes once every episode has run): run it again",
              file=sys.stderr)
        sys.exit(130)
