"""
Alignment as a diagnostic: every layer of the frozen encoder, and a policy's h and z, against the robot's
state q, the next action and the action chunk (CKNNA and mutual kNN, alignment_metrics.py); and CKNNA(h, q) against
closed-loop success over several runs. The command lives in cknna.py:

    python cknna.py --layers --backbone dinov2-s --data data/main-demos.hdf5 --cameras agentview,robot0_eye_in_hand
    python cknna.py --layers --data FILE runs/a/ckpt.pt runs/b/ckpt.pt runs/c/ckpt.pt   # + h, z rows, success

Samples (--sampling): "heldout" (default) every timestep of the validation demos of every task (train.py's
split), at most --n of them drawn at random; "paper" the RS-CL paper's analysis: --per-task 10 trajectories
of every task, one sample every --stride 16 steps (its 4,415 transitions came from 240 trajectories so).
Features: one forward pass per batch gives every layer (Backbone.layer_features): the mean over the image
tokens (or dinov2's CLS token) after the encoder's final norm, so layer k is what the policy would get with
--layer k. Targets: q (10-D), the next action A_0 (a-D) and the chunk A (H x a, flattened), each min-max
scaled to [-1, 1] with the training split's statistics (a checkpoint's own for its h and z). Every
representation and target is L2-normalised per row before the metrics, as cknna.py's analysis does.
Chance: the same scores at the policy's layer with the target's sample order shuffled. Control: a
representation that knows only the episode and the time within it (no image): consecutive steps of one
episode are neighbours in every smooth representation, so a layer must beat this to show more than that.
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from alignment_metrics import cknna, extract, mutual_knn, run_names
from output import swap_in
from stats import spearman, spearman_interval, spearman_p, wilson

TARGETS = {"q": "state q", "action": "next action", "chunk": "action chunk"}

# -----------------------------------------------------------------------------
# samples and targets

def sample_index(ds, sampling, n, per_task=10, stride=16, seed=0):
    """Sorted sample indices into ds. heldout: all of ds, at most n of them drawn at random (the seeded draw
    cknna.py's analysis makes, so both see the same samples); paper: the first per_task demos of every task,
    t = 0, stride, 2 stride, ... of each (then at most n)."""
    if sampling == "paper":
        demos = {d for task in set(ds.tasks) for d in [d for d, t in enumerate(ds.tasks) if t == task][:per_task]}
        idx = [i for i, (d, t) in enumerate(ds.index) if d in demos and t % stride == 0]
    else:
        idx = list(range(len(ds)))
    if len(idx) > n:
        idx = [idx[i] for i in torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:n].tolist()]
    return sorted(idx)


def unit_rows(x):
    """(N, d) -> float64 tensor (N, d), each row L2-normalised (a zero row stays zero)."""
    return torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float64), dim=1)


def targets(ds, idx, stats):
    """{"q": (N, 10), "action": (N, a), "chunk": (N, H*a)}: min-max scaled to [-1, 1] with stats (q_min, q_max,
    a_min, a_max), then L2-normalised per row."""
    def scale(x, name):
        lo, hi = (np.asarray(stats[f"{name}_{m}"], np.float64) for m in ("min", "max"))
        flat = hi - lo < 1e-6                                          # the policy's normalize(): a constant
        return np.where(flat, x - lo, 2 * (x - lo) / np.maximum(hi - lo, 1e-6) - 1)   # dimension -> x - v
    q = np.stack([ds.q[ds.index[i][0]][ds.index[i][1]] for i in idx])  # (N, 10)
    A = np.stack([ds.chunk(*ds.index[i]) for i in idx])               # (N, H, a)
    A = scale(A, "a")
    return {"q": unit_rows(scale(q, "q")), "action": unit_rows(A[:, 0]),
            "chunk": unit_rows(A.reshape(len(idx), -1))}              # (N, H*a)


@torch.no_grad()
def layer_features(backbone, ds, idx, token="mean", batch_size=32):
    """{layer name: (N, D_l)} pooled features of samples idx of ds (Backbone.layer_features), rows L2-normalised."""
    from data import collate
    out = {}
    for s in tqdm(range(0, len(idx), batch_size), desc=f"{backbone.name}: every layer", unit="batch"):
        b = collate([ds[i] for i in idx[s:s + batch_size]])
        for name, f in backbone.layer_features(b["images"], b["instructions"], token).items():
            out.setdefault(name, []).append(f.cpu())
    return {name: unit_rows(torch.cat(fs)) for name, fs in out.items()}


def score(reps, tgts, topk, kind, run=None):
    """One row per (representation, target): CKNNA and mutual kNN of reps[r] (N, D) against tgts[t] (N, d)."""
    return [dict(representation=r, kind=kind, run=run, target=t, cknna=cknna(X, Y, topk), mutual_knn=mutual_knn(X, Y, topk))
            for r, X in reps.items() for t, Y in tgts.items()]


def episode_time(ds, idx):
    """The control representation (N, E + 2): which episode (one-hot) and how far into it (cos, sin of pi/2 t / T),
    rows L2-normalised: the kernel is (1[same episode] + cos(phase difference)) / 2, so the nearest neighbours are
    the nearest steps of the same episode, then the same phase elsewhere. It has seen no image."""
    d = np.array([ds.index[i][0] for i in idx])
    phase = np.pi / 2 * np.array([ds.index[i][1] / len(ds.actions[ds.index[i][0]]) for i in idx])
    episodes = {e: k for k, e in enumerate(dict.fromkeys(d.tolist()))}
    F = np.zeros((len(idx), len(episodes) + 2))
    F[np.arange(len(idx)), [episodes[e] for e in d.tolist()]] = 1.0
    F[:, -2], F[:, -1] = np.cos(phase), np.sin(phase)
    return unit_rows(F)


def shuffled(X, tgts, topk, name, seed=0):
    """Chance level: rows of score() with every target's sample order permuted (unrelated samples paired)."""
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
    return score({name: X}, {t: Y[perm] for t, Y in tgts.items()}, topk, "shuffled")

# -----------------------------------------------------------------------------
# alignment against success

def results_of(ckpt, appearance):
    """The evaluate.py results.json beside a checkpoint (eval-*/results.json of that appearance): exactly one."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    paths = [os.path.join(folder, d, "results.json") for d in sorted(os.listdir(folder)) if d.startswith("eval")]
    found = [p for p in paths if os.path.isfile(p) and json.load(open(p)).get("appearance") == appearance]
    if len(found) != 1:
        raise ValueError(f"{len(found)} evaluations of {appearance} looks beside {ckpt} ({', '.join(found) or 'no eval-*/results.json'}): "
                         f"pass one results.json per checkpoint with --results, in the checkpoints' order")
    return found[0]


def success_of(path):
    """(successes, episodes) over every task of an evaluate.py results.json."""
    try:
        summary = json.load(open(path))["summary"]
        return sum(s["successes"] for s in summary.values()), sum(s["episodes"] for s in summary.values())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not an evaluate.py results.json ({type(e).__name__}): give the file evaluate.py wrote")

# -----------------------------------------------------------------------------
# figures (matplotlib imported here only)

def plot_layers(rows, path, marked, title):
    """Alignment vs layer: CKNNA (left) and mutual kNN (right), one line per target, the chance band (shuffled
    targets, grey), the policy's layer marked; the checkpoints' h and z as points to the right."""
    from matplotlib.figure import Figure
    layers = list(dict.fromkeys(r["representation"] for r in rows if r["kind"] == "layer"))
    runs = list(dict.fromkeys(r["run"] for r in rows if r["kind"] in ("h", "z")))
    extra = ["", "h", "z"] if runs else []                               # a gap, then the checkpoints' h and z
    x_of = {name: i for i, name in enumerate(layers + extra)}
    fig = Figure(figsize=(max(11.0, 0.32 * len(x_of) * 2 + 4), 4.6))
    for ax, metric in zip(fig.subplots(1, 2), ("cknna", "mutual_knn")):
        for c, (t, label) in enumerate(TARGETS.items()):
            ys = [next(r[metric] for r in rows if r["kind"] == "layer" and r["representation"] == l and r["target"] == t)
                  for l in layers]
            ax.plot([x_of[l] for l in layers], ys, "-o", ms=3.5, color=f"C{c}", label=label)
            control = [r[metric] for r in rows if r["kind"] == "control" and r["target"] == t]
            ax.plot([0, len(layers) - 1], control * 2, "--", color=f"C{c}", linewidth=1.0, alpha=0.8)
            for m, run in enumerate(runs):
                for kind in ("h", "z"):
                    v = [r[metric] for r in rows if r["kind"] == kind and r["run"] == run and r["target"] == t]
                    ax.plot([x_of[kind]], v, "osD^v"[m % 5], color=f"C{c}", ms=6, mfc="none" if kind == "z" else None)
        for m, run in enumerate(runs):                                   # legend: one grey marker per run
            ax.plot([], [], "osD^v"[m % 5], color="0.3", linestyle="none", label=f"{run} (h filled, z hollow)")
        ax.plot([], [], "--", color="0.3", linewidth=1.0, label="episode + time only (control)")
        chance = [r[metric] for r in rows if r["kind"] == "shuffled"]
        ax.axhspan(min(chance), max(chance), color="0.6", alpha=0.35, label="shuffled target (chance)")
        if marked in x_of:
            ax.axvline(x_of[marked], color="black", linestyle=":", linewidth=1.2, label=f"policy's layer ({marked})")
        ax.set_xticks(list(x_of.values()), list(x_of), fontsize=8, rotation=90 if len(x_of) > 20 else 0)
        ax.set_ylabel({"cknna": "CKNNA", "mutual_knn": "mutual kNN"}[metric])
        ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.supxlabel(("layer (v: vision blocks, l: LLM layers; " if "l0" in x_of else "layer (") + "0 = embeddings)"
                  + ("; h, z: the checkpoints' adapter output and projection" if extra else ""), fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_success(runs, rho, ci, p, path, appearance):
    """Scatter of CKNNA(h, q) against closed-loop success (95% Wilson bars), one point per run; Spearman's rho,
    its bootstrap interval and permutation p in the title."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.0, 4.6))
    ax = fig.subplots()
    for r in runs:                                                   # success with its 95% Wilson interval
        ax.errorbar(r["cknna_h_q"], r["success"], yerr=[[r["success"] - r["wilson95"][0]], [r["wilson95"][1] - r["success"]]],
                    fmt="o", color="C0", capsize=3)
        ax.annotate(f"{r['run']} ({r['successes']}/{r['episodes']})", (r["cknna_h_q"], r["success"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ci_text = f"95% CI {ci[0]:+.2f} to {ci[1]:+.2f} (bootstrap over runs)" if np.isfinite(ci[0]) else "no interval under 3 runs"
    ax.set_title(f"Spearman rho = {rho:+.2f}, {ci_text}\npermutation p = {p:.2f}; {len(runs)} runs", fontsize=9)
    ax.set_xlabel("CKNNA(h, q), held-out samples")
    ax.set_ylabel(f"closed-loop success ({appearance} looks)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)

# -----------------------------------------------------------------------------
# the command: python cknna.py --layers ...

def sweep(args, tmp):
    """Everything the command computes, written into folder tmp. Returns the scores.json dict."""
    from backbone import BACKBONES, Backbone
    from data import open_dataset
    from model import Policy, PolicyConfig
    from runfolder import load_checkpoint
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfgs = [load_checkpoint(c)["model_config"] for c in args.ckpt]
    for path, cfg in zip(args.ckpt, cfgs):
        if set(cfg) - set(PolicyConfig.__dataclass_fields__):
            raise ValueError(f"checkpoint {path} has config fields this model.py lacks "
                             f"({', '.join(sorted(set(cfg) - set(PolicyConfig.__dataclass_fields__)))}): it was "
                             f"written by another version; analyse it with that version")
    name = args.backbone or (cfgs[0]["backbone"] if cfgs else "dinov2-s")
    if name not in BACKBONES or BACKBONES[name][0] == "siglip" or args.token == "cls" and BACKBONES[name][0] != "dinov2":
        raise ValueError(f"--backbone {name} --token {args.token}: the layer sweep reads dinov2-s (mean or cls) and "
                         f"{', '.join(b for b, v in BACKBONES.items() if v[0] == 'qwen2.5-vl')} (mean: no CLS token)")
    first = cfgs[0] if cfgs and cfgs[0]["backbone"] == name else {}     # the policy whose layer is marked
    k_default = BACKBONES[name][2] or 12                                  # dinov2-s: all 12 layers
    k_policy = first["layer"] if first.get("layer", -1) > 0 else k_default
    marked = str(k_policy) if BACKBONES[name][0] == "dinov2" else f"l{k_policy}"
    cameras = args.cameras.split(",") if args.cameras else (cfgs[0]["cameras"] if cfgs else None)
    keys = args.proprio_keys.split(",") if args.proprio_keys else None
    H = cfgs[0]["horizon"] if cfgs else 16
    open_split = lambda split, cams, H=H: open_dataset(args.data, args.layout, cams, H, split, proprio_keys=keys)
    ds, stats = open_split(args.split, cameras), open_split("train", cameras).stats()
    idx = sample_index(ds, args.sampling, args.n, args.per_task, args.stride)
    if len(idx) < max(args.topk + 1, 4):
        raise ValueError(f"{len(idx)} samples in the {args.split} split ({args.sampling} sampling): k = {args.topk} needs "
                         f"at least {max(args.topk + 1, 4)}; use --split all or a smaller --topk")
    backbone = Backbone(name, args.backbone_path or first.get("backbone_path", ""), args.layer if args.layer > 0 else k_policy,
                        device=device, pool=args.token_pool or first.get("token_pool", 1))
    backbone.check_images(ds.image_shape)
    print(f"{len(idx)} samples ({args.sampling}, {args.split} split of {args.data}); {name} up to layer "
          f"{backbone.layer}, {args.token} pooling; k = {args.topk}")
    t0 = time.time()
    feats = layer_features(backbone, ds, idx, args.token, args.batch_size)
    t1 = time.time()
    tgts = targets(ds, idx, stats)
    rows = score(feats, tgts, args.topk, "layer")
    at = marked if marked in feats else list(feats)[-1]
    rows += shuffled(feats[at], tgts, args.topk, f"shuffled ({at})")
    rows += score({"episode + time": episode_time(ds, idx)}, tgts, args.topk, "control")
    t2 = time.time()
    runs = []
    for path, run, cfg in zip(args.ckpt, run_names(args.ckpt) if args.ckpt else [], cfgs):
        mine = (cfg["backbone"], cfg["layer"] if cfg["layer"] > 0 else k_default, cfg.get("token_pool", 1)) == \
               (name, backbone.layer, backbone.pool)                   # then the sweep's backbone serves the policy
        policy = Policy.from_checkpoint(path, device=device, backbone=backbone if mine else None)
        pds = open_split(args.split, policy.cfg.cameras, policy.cfg.horizon)
        reps = extract(policy, pds, idx)                                          # h, z: mean over tokens, L2
        own = {k: getattr(policy, k).tolist() for k in ("q_min", "q_max", "a_min", "a_max")}
        ptg = targets(pds, idx, own)
        rows += score({"h": reps["h"]}, ptg, args.topk, "h", run) + score({"z": reps["z"]}, ptg, args.topk, "z", run)
        runs.append(dict(run=run, ckpt=path, backbone=cfg["backbone"]))
    t3 = time.time()
    out = dict(data=args.data, split=args.split, sampling=args.sampling, n=len(idx), topk=args.topk, backbone=name,
               swept_to=backbone.layer, policy_layer=marked, token=args.token, cameras=list(ds.cameras),
               targets="min-max to [-1, 1] with the train split's statistics (h, z: the checkpoint's), rows L2-normalised",
               mutual_knn_chance=args.topk / (len(idx) - 1), rows=rows, runs=runs,
               seconds=dict(forward=t1 - t0, scores=t2 - t1, checkpoints=t3 - t2))
    title = (f"{name}: alignment of each layer ({args.token} over image tokens, after the final norm) with state and "
             f"actions; {len(idx)} {args.sampling} samples, k = {args.topk}")
    plot_layers(rows, os.path.join(tmp, "layers.png"), marked, title)
    if args.ckpt:
        out["success"] = success(args, runs, rows, os.path.join(tmp, "success.png"))
    return out


def success(args, runs, rows, path):
    """CKNNA(h, q) against closed-loop success over the runs: Spearman's rho, its bootstrap interval, the scatter."""
    if args.results:
        files = args.results.split(",")
        if len(files) != len(runs):
            raise ValueError(f"--results names {len(files)} files for {len(runs)} checkpoints: one per checkpoint, in order")
    else:
        try:
            files = [results_of(r["ckpt"], args.appearance) for r in runs]
        except ValueError as e:
            print(f"note: alignment vs success skipped: {e}")
            return None
    for r, f in zip(runs, files):
        r["results"], (r["successes"], r["episodes"]) = f, success_of(f)
        r["success"], r["wilson95"] = r["successes"] / max(1, r["episodes"]), wilson(r["successes"], r["episodes"])
        r["cknna_h_q"] = next(x["cknna"] for x in rows if x["kind"] == "h" and x["run"] == r["run"] and x["target"] == "q")
    x, y = [r["cknna_h_q"] for r in runs], [r["success"] for r in runs]
    rho, (lo, hi, used), p = spearman(x, y), spearman_interval(x, y, args.bootstrap), spearman_p(x, y)
    plot_success(runs, rho, (lo, hi), p, path, args.appearance)
    return dict(spearman=rho, ci95=[lo, hi], bootstrap=args.bootstrap, bootstrap_used=used, permutation_p=p,
                appearance=args.appearance)


def report(out):
    """The table of scores, the best layer per target, and alignment vs success, on stdout."""
    rows = out["rows"]
    print(f"{'representation':22s} {'CKNNA: q':>9s} {'action':>8s} {'chunk':>8s}   {'mutual kNN: q':>13s} {'action':>8s} {'chunk':>8s}")
    for rep, kind, run in dict.fromkeys((r["representation"], r["kind"], r["run"]) for r in rows):
        get = {(r["target"], m): r[m] for r in rows if (r["representation"], r["kind"], r["run"]) == (rep, kind, run)
               for m in ("cknna", "mutual_knn")}
        label = f"{rep} {run}" if run else (f"layer {rep}" if kind == "layer" else rep)
        print(f"{label[:22]:22s} " + " ".join(f"{get[t, 'cknna']:8.4f}" for t in TARGETS) + "   "
              + " ".join(f"{get[t, 'mutual_knn']:8.4f}" for t in TARGETS))
    layer_rows = [r for r in rows if r["kind"] == "layer"]
    best = {t: max((r for r in layer_rows if r["target"] == t), key=lambda r: r["cknna"]) for t in TARGETS}
    out["best_layer"] = {t: r["representation"] for t, r in best.items()}
    print("best layer by CKNNA: " + ", ".join(f"{TARGETS[t]} {r['representation']} ({r['cknna']:.3f})" for t, r in best.items())
          + f"; the policy's layer is {out['policy_layer']}; mutual kNN chance k/(N-1) = {out['mutual_knn_chance']:.4f}")
    s = out.get("success")
    if s:
        print(f"alignment vs success ({len(out['runs'])} runs, {s['appearance']} looks): Spearman rho = {s['spearman']:+.3f}, "
              f"95% bootstrap interval {s['ci95'][0]:+.3f} to {s['ci95'][1]:+.3f} ({s['bootstrap_used']} of {s['bootstrap']} "
              f"resamples), permutation p = {s['permutation_p']:.3f}")


def die(msg):
    """Bad input: one line on stderr, exit status 2, no traceback (cknna.py's form)."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    p = argparse.ArgumentParser(prog="python cknna.py --layers", description="alignment of every layer with state and actions")
    p.error = lambda msg: die(f"{msg}: see python cknna.py --layers --help")
    p.add_argument("ckpt", nargs="*", help="checkpoints: adds their h and z, and CKNNA(h, q) against success")
    p.add_argument("--data", help="HDF5 demo file (or LeRobot folder) to draw samples from")
    p.add_argument("--backbone", default="", help="encoder to sweep (default: the first checkpoint's, else dinov2-s)")
    p.add_argument("--backbone-path", default="", help="local weights of the backbone (default: the checkpoint's)")
    p.add_argument("--layer", type=int, default=-1, help="sweep up to this LLM/encoder layer (default: the policy's layer)")
    p.add_argument("--token-pool", type=int, default=0, help="dinov2-s: its input side follows the pooling (0: the checkpoint's, else 1)")
    p.add_argument("--token", default="mean", choices=["mean", "cls"], help="pooling: mean over image tokens, or dinov2's CLS")
    p.add_argument("--cameras", default="", help="cameras, comma-separated (default: the checkpoint's, else the layout's)")
    p.add_argument("--layout", default="robomimic", help="the data file's layout (see layouts.py)")
    p.add_argument("--proprio-keys", default="", help="obs keys of eef position, orientation and gripper (default: the layout's)")
    p.add_argument("--sampling", default="heldout", choices=["heldout", "paper"], help="held-out demos, or the paper's windows")
    p.add_argument("--split", default="val", choices=["val", "train", "all"], help="demos to sample (val: held out per task)")
    p.add_argument("--per-task", type=int, default=10, help="paper sampling: trajectories per task")
    p.add_argument("--stride", type=int, default=16, help="paper sampling: one sample every this many steps")
    p.add_argument("--n", type=int, default=4415, help="at most this many samples")
    p.add_argument("--topk", type=int, default=10, help="k nearest neighbours")
    p.add_argument("--results", default="", help="evaluate.py results.json files, comma-separated, one per checkpoint "
                                                  "(default: the eval-*/results.json beside each of --appearance looks)")
    p.add_argument("--appearance", default="seen", choices=["seen", "unseen"], help="which evaluation gives the success")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the runs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="out/layers", help="output folder: scores.json, layers.png, success.png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (once the new results are written)")
    args = p.parse_args(argv)
    args.out = os.path.normpath(args.out)
    if not args.data:
        p.error("give --data FILE")
    for flag in ("topk", "n", "per_task", "stride", "bootstrap", "batch_size"):
        if getattr(args, flag) < 1:
            die(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(args, flag)})")
    if args.results and not args.ckpt:
        die("--results gives the success of checkpoints: name the checkpoints too")
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out) and not args.overwrite):
        die(f"--out {args.out} already exists: choose another --out, or pass --overwrite to replace it once the new results are written")
    inside = [f for f in args.ckpt + [args.data] if os.path.realpath(f).startswith(os.path.realpath(args.out) + os.sep)]
    if inside:
        die(f"--out {args.out} holds {inside[0]}: name a folder of its own for the results")
    from backbone import WeightsNotFound
    from data import DataError
    tmp = f"{args.out}.tmp{os.getpid()}"
    try:
        os.makedirs(tmp)
        out = sweep(args, tmp)
        report(out)
        with open(os.path.join(tmp, "scores.json"), "w") as f:
            json.dump(out, f, indent=1)
        swap_in(tmp, args.out)
    except (DataError, ValueError, WeightsNotFound) as e:
        die(str(e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # a failed sweep leaves nothing
    print(f"scores: {args.out}/scores.json; figures: {args.out}/layers.png" + (", success.png" if out.get("success") else ""))
