"""
Alignment of policies to the robot state: CKNNA and mutual kNN (alignment_metrics.py) of each checkpoint's pooled
backbone features, h and z against q, a grouped-bar plot of them, and a PCA of h coloured by appearance and state.

    python cknna.py CKPT [CKPT ...] --data FILE --n 4415 --topk 10 --out out/cknna
    python bench.py --cknna                          # the metric's cost against the dense N^3 reference
    python cknna.py --layers --data FILE [CKPT ...]  # every layer against state and actions (alignment.py)
"""
import argparse
import json
import os
import re
import shutil
import sys

import numpy as np
import torch

from alignment_metrics import cknna, extract, mutual_knn, run_names
from output import OutputError, claim, new_folder, swap_in, writing


# -----------------------------------------------------------------------------
# plots (matplotlib imported here only; a bare Figure renders with the Agg canvas)

def _numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_alignment(scores, path, topk=10):
    """Grouped bars. scores = {representation_name: {run_name: value}}; one group per
    representation, one bar per run (checkpoint), each labelled with its value. Writes path."""
    from matplotlib.figure import Figure
    reps = list(scores)
    runs = list(dict.fromkeys(r for rep in reps for r in scores[rep]))  # first-seen order
    width = 0.8 / max(1, len(runs))
    fig = Figure(figsize=(max(6.0, 1.6 * len(reps) * max(1, len(runs)) ** 0.5 + 2), 4.8))
    ax = fig.subplots()
    x = np.arange(len(reps))
    for r, run in enumerate(runs):
        vals = [scores[rep].get(run, np.nan) for rep in reps]
        bars = ax.bar(x + (r - (len(runs) - 1) / 2) * width, vals, width, label=run,
                      color=f"C{r % 10}")
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, reps)
    ax.set_ylabel("CKNNA (higher = more aligned)")
    ax.set_title(f"Alignment to proprioceptive state (CKNNA, k={topk})")
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, 0.0), hi + 0.12 * (hi - min(lo, 0.0)))  # room for the value labels
    ax.legend(title="run", fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps the outside legend


def pca_2d(h):
    """h (N, D) -> coordinates (N, 2) on the top two principal axes, explained-variance (2,)."""
    h = _numpy(h).astype(np.float64)
    hc = h - h.mean(0)  # (N, D) centred
    _, s, vt = np.linalg.svd(hc, full_matrices=False)
    return hc @ vt[:2].T, s[:2] ** 2 / max((s**2).sum(), 1e-300)


def plot_projection(h, colour_by, path, title="PCA of the features"):
    """2-D PCA of h (N, D), one subplot per colouring. colour_by = {label: (N,) values}:
    integer/bool/string values are categorical (legend), float values continuous (colorbar).
    Writes path."""
    from matplotlib.figure import Figure
    xy, var = pca_2d(h)
    fig = Figure(figsize=(5.2 * len(colour_by), 4.8))
    axes = np.atleast_1d(fig.subplots(1, len(colour_by)))
    size = float(np.clip(30000 / len(xy), 2, 25))
    for ax, (label, c) in zip(axes, colour_by.items()):
        c = _numpy(c).reshape(-1)
        if c.dtype.kind in "fc":  # continuous
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=c, s=size, cmap="viridis", alpha=0.8)
            fig.colorbar(sc, ax=ax, label=label)
        else:  # categorical: one colour per category (tab10, or tab20 repeating after 20)
            cats = np.unique(c)
            for q, cat in enumerate(cats):
                colour = f"C{q}" if len(cats) <= 10 else _tab20(q)
                ax.scatter(xy[c == cat, 0], xy[c == cat, 1], s=size, alpha=0.8, color=colour,
                           label=str(cat))
            if len(cats) <= 20:   # past that a legend is a wall of numbers: say how many instead
                ax.legend(title=label, fontsize=8, markerscale=max(1.0, 20 / size) ** 0.5,
                          ncol=1 + len(cats) // 11, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            else:
                label = f"{label} ({len(cats)}, one colour each)"
        ax.set_title(f"coloured by {label}")
        ax.set_xlabel(f"PC1 ({100 * var[0]:.1f}% var)")
        ax.set_ylabel(f"PC2 ({100 * var[1]:.1f}% var)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps the outside legend


def _tab20(q):
    from matplotlib import colormaps
    return colormaps["tab20"](q % 20)


# -----------------------------------------------------------------------------
# the command

def analyse(args):
    """CKNNA and mutual kNN of each checkpoint's representations against q, the grouped-bar plot,
    and a PCA of h coloured by episode appearance and by robot state."""
    from data import open_demos, open_like
    from layouts import run_layout
    from model import Policy
    out, tmp = args.out, args.tmp   # written into tmp, a folder of our own, which then takes out's place whole
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scores, table, backbones = {}, [], {}
    for path, run in zip(args.ckpt, run_names(args.ckpt)):
        policy = Policy.from_checkpoint(path, device=device)
        cfg = policy.cfg
        how = dict(policy.train_config, **({"proprio_keys": args.proprio_keys} if args.proprio_keys else {}))
        ds = open_like(args.data, how, cfg.cameras, cfg.horizon, args.split)   # read as the run read its data
        n = min(args.n, len(ds))
        if n < max(args.topk + 1, 4):
            raise ValueError(f"{args.data} has {len(ds)} samples: CKNNA with k = {args.topk} needs at least {args.topk + 1}")
        idx = sorted(torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].tolist())
        reps = extract(policy, ds, idx)
        backbones[run] = cfg.backbone
        for rep in ("backbone", "h", "z"):
            a = cknna(reps[rep], reps["q"], args.topk)
            m = mutual_knn(reps[rep], reps["q"], args.topk)
            scores.setdefault(rep, {})[run] = a
            table.append(dict(run=run, representation=rep, cknna=a, mutual_knn=m, n=n))
        # the motivating picture: does h cluster by how the scene looks, or by the robot's state?
        looks = [ds.demos[ds.index[i][0]] for i in idx]   # a LeRobot dataset: its episodes
        if os.path.isfile(args.data):   # an HDF5 file: sim.py's demos carry their appearance
            f = open_demos(args.data)
            looks = [f["data"][d].attrs.get("appearance", d) for d in looks]
            f.close()
        ids = {a: k for k, a in enumerate(dict.fromkeys(looks))}
        q = np.stack([ds.q[ds.index[i][0]][ds.index[i][1]] for i in idx])  # raw state: 10-D [x, y, z, R cols, g]
        colours = {"episode appearance": np.array([ids[a] for a in looks])}
        if run_layout(how)["orientation"] != "raw":   # else q is a state vector as given, of unknown meaning
            colours.update({"gripper opening (m)": q[:, 9].astype(float), "end-effector height (m)": q[:, 2].astype(float)})
        with writing(out, "--out"):
            plot_projection(reps["h"].numpy(), colours, os.path.join(tmp, f"projection_{run.replace('/', '_')}.png"),
                            title=f"{run}: PCA of the adapter output h (mean over tokens), {n} samples")
    if len(set(backbones.values())) > 1:   # allowed, but the legend must say so
        scores = {rep: {f"{r} ({backbones[r]})": v for r, v in d.items()} for rep, d in scores.items()}
    print(f"{'run':24s} {'representation':15s} {'CKNNA':>8s} {'mutual kNN':>11s}   (k = {args.topk})")
    for r in table:
        print(f"{r['run']:24s} {r['representation']:15s} {r['cknna']:8.4f} {r['mutual_knn']:11.4f}")
    with writing(out, "--out"):   # into tmp, which then takes out's place whole
        plot_alignment(scores, os.path.join(tmp, "alignment.png"), args.topk)
        with open(os.path.join(tmp, "scores.json"), "w") as f:
            json.dump(dict(rows=table, backbones=backbones, data=args.data), f, indent=1)
        swap_in(tmp, out, replace=args.overwrite)
    print(f"figures: {out}/alignment.png, {out}/projection_*.png; scores: {out}/scores.json")


def die(msg):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--layers" in argv:   # the layer sweep has flags of its own (alignment.py)
        from alignment import main as layers
        return layers([a for a in argv if a != "--layers"])
    p = argparse.ArgumentParser(description="CKNNA alignment of policy features to proprio state")
    p.error = lambda msg: die(f"{msg}: see python cknna.py --help")   # argparse's errors in the house form
    p.add_argument("ckpt", nargs="*", help="checkpoints to analyse")
    p.add_argument("--layers", action="store_true", help="every layer against state and actions: python cknna.py --layers --help")
    p.add_argument("--data", help="HDF5 demo file or LeRobot dataset folder to draw samples from")
    p.add_argument("--n", type=int, default=4415, help="number of samples")
    p.add_argument("--split", default="val", choices=["val", "train", "all"],
                   help="which demos: val = the held-out demos of every task (train.py's split)")
    p.add_argument("--topk", type=int, default=10, help="k nearest neighbours")
    p.add_argument("--out", default="out/cknna", help="output folder for figures and scores")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (once the new results are written)")
    p.add_argument("--proprio-keys", default="", help="q's keys (default: the checkpoint's, read as in its training)")
    args = p.parse_args(argv)
    args.out = os.path.normpath(args.out)
    if not args.ckpt or not args.data:
        p.error("give at least one CKPT and --data FILE")
    if args.topk < 1 or args.n < args.topk + 1:
        die(f"--topk must be at least 1 and --n at least topk + 1 (got --topk {args.topk}, --n {args.n})")
    inside = [p for p in args.ckpt + [args.data] if os.path.realpath(p).startswith(os.path.realpath(args.out) + os.sep)]
    if inside:
        die(f"--out {args.out} holds {inside[0]}: name a folder of its own for the results")
    try:   # one analysis per output: before out is looked at
        claim(args.out, "--out")
    except OutputError as e:
        die(str(e))
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out) and not args.overwrite):
        die(f"--out {args.out} already exists{' (a file)' if os.path.isfile(args.out) else ''}: choose another --out"
            f"{'' if os.path.isfile(args.out) else ', or pass --overwrite to replace it once the new results are written'}")
    if os.path.isdir(args.out) and os.listdir(args.out) and "scores.json" not in os.listdir(args.out):
        die(f"--overwrite would delete {args.out}, which holds no scores.json (not a cknna.py output): choose another --out")
    from data import DataError
    args.tmp = None
    try:
        args.tmp = new_folder(args.out, "--out")   # can it be written? before anything is computed
        analyse(args)
    except DataError as e:   # data unlike the run's: the remedy names only flags of cknna.py
        if [f for f in re.findall(r"--[a-z][a-z-]*", e.remedy) if f not in p._option_string_actions]:
            die(f"{e.problem}: cknna.py reads --data as each checkpoint's run read its data (its layout, cameras and "
                f"keys): pass data like that run's, or name q's keys with --proprio-keys")
        die(str(e))
    except (OutputError, ValueError) as e:
        die(str(e))
    finally:
        if args.tmp:
            shutil.rmtree(args.tmp, ignore_errors=True)   # a failed analysis leaves nothing


if __name__ == "__main__":
    main()
