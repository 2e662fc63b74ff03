"""
The study's report (study.py writes it): pooled success with Wilson intervals, differences with Newcombe intervals,
CKNNA over seeds, the references beside the variants; table.md, results.json and three figures.

    report(out, config, runs, claims_of, flags_of)   # runs: study.py's read_run rows, references included

The references (evaluate.py expert / blind, rows with "reference": True) need no training: they are the same
evaluation episodes run by the scripted expert (the ceiling) and by its blind grasp (the floor).
"""
import json
import os

import numpy as np

from stats import mean_diff_interval, newcombe, newcombe_paired, verdict, wilson

def cell(k, n):
    """A success count as a table cell: k/n = rate (95% Wilson), or - when nothing was run."""
    if not n:
        return "-"
    lo, hi = wilson(k, n)
    return f"{k}/{n} = {k / n:.2f} ({lo:.2f}-{hi:.2f})"


def strict(x):
    """x for a strict JSON file: NaN and infinities (an interval that one seed cannot give) become null."""
    if isinstance(x, dict):
        return {k: strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def pooled(runs, key):
    k = sum(r["success"][key][0] for r in runs if key in r["success"])
    n = sum(r["success"][key][1] for r in runs if key in r["success"])
    return k, n


def compare(by_variant, a, b, metric, task):
    """The interval of variant a minus variant b: success (pooled episodes, Newcombe) or CKNNA (seeds, Welch)."""
    if metric == "cknna_h":
        xs = [r["cknna"]["h"] for r in by_variant[a] if "h" in r["cknna"]]
        ys = [r["cknna"]["h"] for r in by_variant[b] if "h" in r["cknna"]]
        return mean_diff_interval(xs, ys) if xs and ys else None
    key = f"{task}-{metric}"
    if pairs := paired(by_variant[a], by_variant[b], key):   # the same seeded episodes: pair them
        return (*newcombe_paired(*pairs), f"paired, {len(pairs[0])} episodes")
    (k1, n1), (k2, n2) = pooled(by_variant[a], key), pooled(by_variant[b], key)
    return (*newcombe(k1, n1, k2, n2), "unpaired") if n1 and n2 else None


def paired(runs_a, runs_b, key):
    """Per-episode outcomes of a's and b's runs of the same training seed, episode i against episode i (the same
    evaluation seed), concatenated over the seeds where both runs were evaluated: (x, y) 0/1 lists, or None when
    there is no such seed or a pair lacks its outcomes (then the pooled episodes are compared unpaired). A study cut
    short (a seed's second variant not yet evaluated) is compared on the seeds both finished, like with like."""
    b_of = {r["seed"]: r for r in runs_b if key in r["success"]}
    both = [(r, b_of[r["seed"]]) for r in runs_a if key in r["success"] and r["seed"] in b_of]
    x, y = [], []
    for ra, rb in both:
        oa, ob = ra.get("outcomes", {}).get(key), rb.get("outcomes", {}).get(key)
        if not oa or not ob or len(oa) != len(ob):
            return None
        x += [c == "1" for c in oa]
        y += [c == "1" for c in ob]
    return (x, y) if x else None


def report(out, config, runs, claims_of, flags_of, task):
    """claims_of: [(claim, better, worse, metric)]; flags_of(variant) -> its train.py flags as one string."""
    by_variant = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    ms = lambda xs: f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1):.3f}" if len(xs) > 1 else (f"{xs[0]:.3f}" if xs else "-")
    lines = [f"| variant | train.py flags | seeds | {task} seen (95% Wilson) | per seed | {task} unseen | "
             f"CKNNA(h, q) | CKNNA(z, q) | val FM | n_pos | RS-CL excess |", "|" + "---|" * 11]
    for v, rs in by_variant.items():
        seeds = "/".join(f"{r['success'].get(f'{task}-seen', [0, 0])[0]}" for r in rs)
        fin = lambda k: ms([r["final"][k] for r in rs if r["final"].get(k) is not None])
        lines.append(f"| {v} | {flags_of(v)} | {'-' if rs[0].get('reference') else len(rs)} | {cell(*pooled(rs, f'{task}-seen'))} | "
                     f"{seeds} | {cell(*pooled(rs, f'{task}-unseen'))} | "
                     f"{ms([r['cknna']['h'] for r in rs if 'h' in r['cknna']])} | "
                     f"{ms([r['cknna']['z'] for r in rs if 'z' in r['cknna']])} | {fin('val_loss_fm')} | "
                     f"{fin('val_n_pos')} | {fin('val_rscl_excess')} |")
    claims = []
    for name, x, y, metric in claims_of:
        if x in by_variant and y in by_variant and (c := compare(by_variant, x, y, metric, task)):
            d, lo, hi, *how = c
            seeds = {r["seed"] for r in by_variant[x] if f"{task}-{metric}" in r["success"]} & \
                    {r["seed"] for r in by_variant[y] if f"{task}-{metric}" in r["success"]}
            says = verdict(lo, hi) if np.isfinite(lo) else "inconclusive (one seed)"
            if metric != "cknna_h" and len(seeds) == 1 and says != "inconclusive":
                says += " (one training seed: the interval holds for this pair of runs, not for the recipe)"
            claims.append(dict(claim=name, better=x, worse=y, metric=metric, difference=d, low=lo, high=hi,
                               interval=how[0] if how else "Welch over seeds", verdict=says))
    lines += ["", "| the paper's claim | metric | difference (95% interval) | interval | verdict |", "|---|---|---|---|---|"]
    ci = lambda c: (f"{c['low']:+.3f} to {c['high']:+.3f}", c["interval"]) if np.isfinite(c["low"]) else \
        ("no interval: one seed", "-")
    lines += [f"| {c['claim']} ({c['better']} vs {c['worse']}) | {c['metric']} | {c['difference']:+.3f} "
              f"({ci(c)[0]}) | {ci(c)[1]} | {c['verdict']} |" for c in claims]
    lines += ["", f"Success: {task} episodes pooled over seeds (fixed evaluation seeds shared by every variant), "
              "Wilson intervals; differences of success: Newcombe's interval, paired episode by episode where both "
              "variants ran the same seeds' episodes (his paired method 10), else on the pooled episodes; either "
              "ignores the spread between training seeds: see the per-seed column. CKNNA: mean ± sd over seeds, k = 10, held-out "
              "demos of every task; differences: Welch's interval over seeds. n_pos, RS-CL excess: the last "
              "validation values (effective positives per anchor; loss minus the targets' entropy)."]
    if kept := [f"{r['variant']}-s{r['seed']} ({r.get('carried_from', 'results.json')})" for r in runs
                if r.get("carried")]:
        lines += ["", f"Kept from an earlier report (their run folders are not on the machine that wrote this "
                  f"table): {', '.join(kept)}."]
    table = "\n".join(lines) + "\n"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "table.md.tmp"), "w") as f:
        f.write(table)
    os.replace(os.path.join(out, "table.md.tmp"), os.path.join(out, "table.md"))
    with open(os.path.join(out, "results.json.tmp"), "w") as f:
        json.dump(strict(dict(config=config, runs=runs, claims=claims)), f, indent=1, allow_nan=False)
    os.replace(os.path.join(out, "results.json.tmp"), os.path.join(out, "results.json"))
    plot(out, by_variant, task)
    print(table)


def plot(out, by_variant, task):
    """success.png (pooled rate, Wilson bars, one dot per seed), cknna.png (per seed and mean), rscl_floor.png."""
    from matplotlib.figure import Figure
    names = list(by_variant)
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6, 1.1 * len(names) + 2), 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, look in zip(axes, ("seen", "unseen")):
        for i, v in enumerate(names):
            k, n = pooled(by_variant[v], f"{task}-{look}")
            if not n:
                continue
            lo, hi = wilson(k, n)
            ax.errorbar(i, k / n, [[k / n - lo], [hi - k / n]], fmt="o", color="black", capsize=4, ms=7)
            per = [r["success"][f"{task}-{look}"] for r in by_variant[v] if f"{task}-{look}" in r["success"]]
            ax.scatter(i + np.linspace(-0.15, 0.15, len(per)), [s / m for s, m in per], color="C0", s=14, zorder=3)
        ax.set_xticks(x, names, rotation=35, ha="right")
        ax.set_title(f"{task}, {look} looks")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("success (pooled, 95% Wilson; dots: seeds)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "success.png"), dpi=110)
    fig = Figure(figsize=(max(6, 1.1 * len(names) + 2), 4.2))
    axes = fig.subplots(1, 2)
    for ax, rep in zip(axes, ("h", "z")):
        for i, v in enumerate(names):
            vals = [r["cknna"][rep] for r in by_variant[v] if rep in r["cknna"]]
            if vals:
                ax.scatter(i + np.linspace(-0.15, 0.15, len(vals)), vals, color="C0", s=14)
                ax.hlines(np.mean(vals), i - 0.3, i + 0.3, color="black")
        ax.set_xticks(x, names, rotation=35, ha="right")
        ax.set_title(f"CKNNA({rep}, q), held-out demos (line: mean)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cknna.png"), dpi=110)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for c, v in enumerate(v for v in names if by_variant[v][0].get("curve", {}).get("loss_rscl")):
        for key, style in (("loss_rscl", "-"), ("w_entropy", "--")):
            curves = [np.array(r["curve"][key]) for r in by_variant[v] if r["curve"][key]]
            n = min(len(cv) for cv in curves)
            mean = np.mean([cv[:n, 1] for cv in curves], 0)
            ax.plot(curves[0][:n, 0], mean, style, color=f"C{c % 10}", label=f"{v}: {'loss' if key == 'loss_rscl' else 'floor'}")
    ax.set_xlabel("step")
    ax.set_ylabel("nats (mean over seeds)")
    ax.set_title("RS-CL loss (solid) against its floor, the soft targets' entropy (dashed)")
    if ax.get_legend_handles_labels()[0]:   # no RS-CL variant in the study: no curves to name
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "rscl_floor.png"), dpi=110)
