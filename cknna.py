"""
CKNNA (Centered Kernel Nearest-Neighbour Alignment, Huh et al. 2024) in O(N k) memory.

Reproduces AlignmentMetrics.cknna of minyoungg/platonic-rep (unbiased=True) number for number,
without its ~12 dense N x N arrays and its N^3 matmul: every HSIC term only needs the k nearest
neighbours of each row, so the score is computed from kNN index lists (see shared/notes/cknna.md).

    python cknna.py CKPT [CKPT ...] --data FILE --n 4415 --topk 10 --out out/cknna
    python bench.py --cknna                          # its cost against the dense N^3 reference
    python cknna.py --layers --data FILE [CKPT ...]  # every layer against state and actions (alignment.py)

Notation (cknna.md): A (N, d_a), B (N, d_b) features, row i = sample i; K = A A^T, L = B B^T;
nnK(i) = the k columns j != i with the largest K[i, j] (torch.topk); mask_K[i, j] = 1 iff
j in nnK(i) (rows, not symmetric); Kk = mask_K * K, Ll = mask_L * L; m = mask_K * mask_L,
Km = m * K, Lm = m * L.  A sparse matrix here is a pair (key, val): key = i * N + j (int64,
sorted), val = X[i, j], listing only the entries of its support.
"""
import argparse
import json
import os
import re
import shutil
import sys

import numpy as np
import torch

from knn import knn
from output import OutputError, claim, new_folder, swap_in, writing

# -----------------------------------------------------------------------------
# helpers

def _as_float64(x, name, device=None):
    """numpy array or torch tensor (N, D), any dtype -> float64 tensor (N, D) on `device`."""
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N samples, D features), got shape {tuple(x.shape)}")
    x = x.to(device=device if device is not None else x.device, dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf: clean or drop those samples first")
    return x


def _prepare(feats_a, feats_b, topk, min_topk, min_n):
    A = _as_float64(feats_a, "feats_a")
    B = _as_float64(feats_b, "feats_b", device=A.device)
    n = A.shape[0]
    if B.shape[0] != n:
        raise ValueError(f"feats_a has {n} rows but feats_b has {B.shape[0]}: "
                         "pass the same samples, in the same order, to both")
    if isinstance(topk, bool) or int(topk) != topk or topk < min_topk:
        raise ValueError(f"topk must be an integer >= {min_topk}, got {topk!r}")
    topk = int(topk)
    need = max(topk + 1, min_n)
    if n < need:
        raise ValueError(f"need at least max(topk + 1, {min_n}) = {need} samples, got N = {n}: "
                         "pass more samples or a smaller topk")
    return A, B, topk


def _sparse(idx, val):
    """kNN lists (N, k) -> the masked kernel mask * K as (key, val), key = i * N + j, sorted."""
    N = idx.shape[0]
    rows = torch.arange(N, device=idx.device).unsqueeze(1)  # (N, 1)
    key = (rows * N + idx).reshape(-1)  # (N k,)
    order = torch.argsort(key)
    return key[order], val.reshape(-1)[order]


def _find(query, keys):
    """For each query key: (is it in the sorted `keys`, its position there)."""
    if keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool), torch.zeros_like(query)
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return keys[pos] == query, pos


# -----------------------------------------------------------------------------
# --- CKNNA: unbiased HSIC from kNN lists ---

def hsic_sparse(n, kx, vx, ky, vy):
    """Unbiased HSIC (Song et al. 2012) of two N x N matrices with zero diagonal, given sparse:
    hsic(X, Y) = [ sum(X * Y^T) + sum(X) sum(Y) / ((n-1)(n-2)) - 2 sum(X @ Y) / (n-2) ] / (n(n-3))
    kx, ky (nnz,) int64 sorted keys i * n + j; vx, vy (nnz,) float64 values. Returns a 0-d tensor."""
    # sum(X * Y^T) = sum_{i,j} X[i, j] Y[j, i]: look up the transposed key j * n + i of every
    # X entry among Y's keys (only pairs in both supports, in opposite directions, contribute)
    i, j = kx // n, kx % n
    hit, pos = _find(j * n + i, ky)
    trace_term = (vx[hit] * vy[pos[hit]]).sum()
    # sum(X @ Y) = sum_{i,l} sum_j X[i, j] Y[j, l] = sum_j colsum_X[j] * rowsum_Y[j]
    colsum_x = torch.zeros(n, dtype=vx.dtype, device=vx.device).index_add_(0, j, vx)
    rowsum_y = torch.zeros(n, dtype=vy.dtype, device=vy.device).index_add_(0, ky // n, vy)
    xy_term = (colsum_x * rowsum_y).sum()
    h = trace_term + vx.sum() * vy.sum() / ((n - 1) * (n - 2)) - 2 * xy_term / (n - 2)
    return h / (n * (n - 3))


@torch.no_grad()
def cknna(feats_a, feats_b, topk=10):
    """CKNNA of platonic-rep's AlignmentMetrics.cknna(A, B, topk) with unbiased=True.
    feats_a (N, d_a), feats_b (N, d_b): numpy arrays or torch tensors (any float dtype, any
    device; B is moved to A's device). No normalisation inside: L2-normalise rows first if
    wanted. Argument order matters (~1e-3 relative): embedding first, proprio second.
    The neighbour sets are those of a float64 torch.topk over each kernel row (knn.py: a float32
    search, re-checked in float64, proved or recomputed), the kernel values and sums are float64,
    so TF32 never applies. Ties (duplicate rows) are broken by torch.topk on the float64 row, as
    in the reference; near-tied neighbours can differ from a float32 dense run.
    Returns a python float. Memory O(N k) beyond the inputs, their float32 copy and one block."""
    A, B, k = _prepare(feats_a, feats_b, topk, min_topk=2, min_n=4)
    n = A.shape[0]
    kK, vK = _sparse(*knn(A, k))  # Kk = mask_K * K: N k entries
    kL, vL = _sparse(*knn(B, k))  # Ll = mask_L * L
    # joint mask m = mask_K * mask_L: the entries of Kk whose (i, j) is also in Ll's support
    hit, pos = _find(kK, kL)
    kM, vKm, vLm = kK[hit], vK[hit], vL[pos[hit]]  # Km and Lm share the support m (sorted)
    h_kl = hsic_sparse(n, kM, vKm, kM, vLm)  # hsic(Km, Lm)
    h_kk = hsic_sparse(n, kK, vK, kK, vK)  # hsic(Kk, Kk): the reference's similarity(K, K)
    h_ll = hsic_sparse(n, kL, vL, kL, vL)  # hsic(Ll, Ll)
    # the + 1e-6 is the reference's; a negative h_kk * h_ll gives NaN there and here
    return (h_kl / (torch.sqrt(h_kk * h_ll) + 1e-6)).item()


@torch.no_grad()
def mutual_knn(feats_a, feats_b, topk=10):
    """Mutual kNN accuracy: mean over i of |nnK(i) & nnL(i)| / k, in [0, 1].
    feats_a (N, d_a), feats_b (N, d_b), as in cknna (float64, self excluded). Returns a float.
    The reference ranks with argsort (diagonal -1e8) instead of topk: same sets up to ties."""
    A, B, k = _prepare(feats_a, feats_b, topk, min_topk=1, min_n=2)
    kK, _ = _sparse(*knn(A, k))
    kL, _ = _sparse(*knn(B, k))
    hit, _ = _find(kK, kL)  # |mask_K * mask_L| summed over all rows
    return hit.sum().item() / (A.shape[0] * k)


def pooled_h_cknna(policy, batches, topk=10):
    """CKNNA of the adapter's h, mean-pooled over real tokens, against q, from batches of the policy's inputs
    (feats, mask, views, q, A, teacher, pixels) (train.py --cknna-every). NaN with topk or fewer samples."""
    from model import masked_mean
    hs, qs = [], []
    for feats, mask, views, q, _, _, pixels in batches:
        feats, mask, _ = policy.inputs(feats, mask, views, pixels)                     # E' too, if the policy has one
        h, _ = policy.adapter(feats, mask)                                            # (B, N, D)
        hs.append(masked_mean(h.float(), mask).cpu())                                 # (B, D)
        qs.append(q.float().cpu())
    h, q = torch.cat(hs), torch.cat(qs)
    h, q = h / h.norm(dim=1, keepdim=True), q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return cknna(h, q, topk=topk) if len(h) > topk else float("nan")


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
# benchmark: every case in a fresh spawned process, so ru_maxrss is that case's peak alone

# -----------------------------------------------------------------------------

def run_names(paths):
    """A distinct name per checkpoint (the plot's bars are keyed by it): runs/main-rscl/ckpt.pt -> main-rscl;
    two in one folder -> main-rscl/ckpt, main-rscl/ckpt_500; two folders of one name -> a/run/ckpt, b/run/ckpt."""
    real = [os.path.realpath(p) for p in paths]
    twice = [p for p, r in zip(paths, real) if real.count(r) > 1]
    if twice:
        raise ValueError(f"checkpoint {twice[0]} is given twice: name each checkpoint once")
    parts = [os.path.splitext(r)[0].split(os.sep) for r in real]          # [..., 'main-rscl', 'ckpt']
    for d in range(1, max(map(len, parts)) + 1):   # the folder's name, else more of the path until they differ
        names = [p[-2] if d == 1 else "/".join(p[-d:]) for p in parts]
        if len(set(names)) == len(names):
            return names


@torch.no_grad()
def extract(policy, ds, idx, batch_size=32):
    """Pooled representations of samples idx of ds, each row L2-normalised, and q.
    Pooling: the mean over real (non-padding) tokens, for the backbone features and for h; z is
    one vector per sample already. q: min-max scaled with the checkpoint's statistics, then
    L2-normalised like the embeddings (as in the paper's analysis)."""
    from data import collate
    from model import masked_mean
    out = {"backbone": [], "h": [], "z": [], "q": []}
    for s in range(0, len(idx), batch_size):
        b = collate([ds[i] for i in idx[s:s + batch_size]])
        c = policy.encode(b["images"], b["instructions"])
        out["backbone"].append(masked_mean(c["feats"].float(), c["mask"]))  # (B, D)
        out["h"].append(masked_mean(c["h"].float(), c["mask"]))             # (B, D)
        out["z"].append(c["z"].float())                                     # (B, 128)
        out["q"].append(policy.normalize(b["q"].to(c["mask"].device), "q").float())  # (B, 10) in [-1, 1]
    return {k: torch.nn.functional.normalize(torch.cat(v).cpu(), dim=1) for k, v in out.items()}


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
