"""
Across studies: success against the number of training demos (one study folder per data regime, e.g. study.py's
`--preset regimes` run with `--train-args "--demos-per-task 30"` and without), the paper's claims regime by regime
with their intervals, and alignment against success over every run.

    python study_regimes.py study/lift-30 study/lift-360 --out results/regimes
    python study_regimes.py study/lift-30 study/lift-30-privileged study/lift-360 ...   # folders of one regime merge

Folders of the same data and number of demos are one regime: a second folder adds variants to it (e.g. the privileged
reference, trained with `study.py --variants privileged --seeds 1 --references ""` on the same episodes).

Reads each folder's results.json (study.py writes it; nothing is re-run) and writes to --out:
  success_vs_demos.png  pooled success with 95% Wilson intervals against training demos, seen and unseen looks, one
                        line per variant and the references (scripted expert: the ceiling; blind grasp: the floor;
                        the privileged policy, q holding the cube's state: perfect perception)
  regimes.md            the same as a table, the claims per regime, and Spearman's rho of CKNNA(h, q) against success
  regimes.json          all of it, for plots of your own
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np

from data import split_demos
from output import OutputError, atomic
from stats import paired_normal, spearman, spearman_interval, wilson
from study_report import cell, paired, pooled, strict

LOOKS = ("seen", "unseen")
REFERENCES = ("expert", "blind", "privileged")   # the ladder beside the variants: drawn dashed, not in the Spearman


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def training_demos(data, train_args):
    """How many demos the study's runs trained on: its data file's training split, cut by --demos-per-task."""
    n = int(train_args[train_args.index("--demos-per-task") + 1]) if "--demos-per-task" in train_args else 0
    with h5py.File(data, "r") as f:
        return len(split_demos(f, "train", max_demos=n))


def read_study(folder, root):
    """One study folder -> dict(folder, demos, task, rows: {variant: runs}, claims)."""
    path = os.path.join(folder, "results.json")
    try:
        with open(path) as f:
            res = json.load(f)
        config, runs, claims = res["config"], res["runs"], res["claims"]
        data = config["data"] if os.path.isabs(config["data"]) else os.path.join(root, config["data"])
        demos = training_demos(data, config["train_args"])
    except FileNotFoundError as e:
        die(f"{e.filename} does not exist: run study.py with --out {folder} first (or give the folder it wrote)")
    except (OSError, ValueError, KeyError, TypeError) as e:
        die(f"{path} is not a readable study.py results.json ({type(e).__name__}: {e}): re-run study.py with "
            f"--report-only --out {folder} to write it again")
    rows = {}
    for r in runs:
        rows.setdefault(r["variant"], []).append(r)
    return dict(folders=[folder], data=os.path.realpath(data), demos=demos, task=config["tasks"][0], rows=rows,
                claims=claims)


def merge(studies):
    """Studies of one regime (the same data file and number of demos) as one: their variants side by side."""
    by = {}
    for s in studies:
        m = by.setdefault((s["data"], s["demos"]), dict(s, folders=[], rows={}, claims=[]))
        if twice := sorted(set(m["rows"]) & set(s["rows"])):
            die(f"{s['folders'][0]} and {m['folders'][0]} both hold {twice[0]} at {s['demos']} demos: give each "
                f"variant of a regime once (run the second study with --variants and --references '')")
        m["folders"] += s["folders"]
        m["rows"].update(s["rows"])
        m["claims"] += s["claims"]
    return list(by.values())


def curve(studies):
    """{variant: {look: [(demos, k, n), ...]}} over the studies, in order of demos."""
    out = {}
    for s in sorted(studies, key=lambda s: s["demos"]):
        for v, runs in s["rows"].items():
            for look in LOOKS:
                k, n = pooled(runs, f"{s['task']}-{look}")
                if n:
                    out.setdefault(v, {}).setdefault(look, []).append((s["demos"], k, n))
    return out


def planned(s, claim):
    """The plan's own analysis of a success claim (README, written before the runs): the normal interval of the mean
    per-episode difference, and the difference seed by seed. None for a claim on CKNNA or without paired episodes."""
    if claim["metric"] not in LOOKS:
        return None
    key, a, b = f"{s['task']}-{claim['metric']}", s["rows"][claim["better"]], s["rows"][claim["worse"]]
    pairs = paired(a, b, key)
    if not pairs:
        return None
    rate = lambda r: r["success"][key][0] / r["success"][key][1]
    b_of = {r["seed"]: r for r in b if key in r["success"]}
    return dict(normal=paired_normal(*pairs),
                per_seed=[rate(r) - rate(b_of[r["seed"]]) for r in a if key in r["success"] and r["seed"] in b_of])


def alignment_vs_success(studies):
    """Spearman's rho of CKNNA(h, q) against seen success over every trained run of every study."""
    pts = [(r["cknna"]["h"], r["success"][f"{s['task']}-seen"][0] / r["success"][f"{s['task']}-seen"][1])
           for s in studies for v, runs in s["rows"].items() for r in runs
           if v not in REFERENCES and "h" in r.get("cknna", {}) and f"{s['task']}-seen" in r["success"]]
    if len(pts) < 3:
        return dict(runs=len(pts))
    x, y = np.array(pts).T
    lo, hi, used = spearman_interval(x, y)
    return dict(runs=len(pts), spearman=spearman(x, y), ci95=[lo, hi], bootstrap_used=used, points=pts)


def plot(path, cur, task):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    names = list(cur)
    for ax, look in zip(axes, LOOKS):
        for i, v in enumerate(names):
            pts = cur[v].get(look, [])
            if not pts:
                continue
            d, k, n = (np.array(c, float) for c in zip(*pts))
            p = k / n
            lo, hi = np.array([wilson(int(a), int(b)) for a, b in zip(k, n)]).T
            style = dict(ls="--", marker="s" if v == "privileged" else "") if v in REFERENCES else dict(ls="-", marker="o")
            x = d * (1 + 0.03 * (i - len(names) / 2))   # side by side at each demo count
            ax.errorbar(x, p, [p - lo, hi - p], capsize=4, label=v, color=f"C{i}", **style)
        ax.set_xscale("log")
        ds = sorted({d for v in names for d, _, _ in cur[v].get(look, [])})
        ax.set_xticks(ds, [str(d) for d in ds])   # the regimes themselves, not log-scale minor ticks
        ax.minorticks_off()
        ax.set_xlabel("training demos")
        ax.set_title(f"{task}, {look} looks")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("success (pooled over seeds, 95% Wilson)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), "--out")


def table(studies, cur, align):
    lines = ["| variant | training demos | seeds | seen (95% Wilson) | unseen |", "|---|---|---|---|---|"]
    for v in cur:
        for s in sorted(studies, key=lambda s: s["demos"]):
            if v in s["rows"]:
                runs = s["rows"][v]
                cells = [cell(*pooled(runs, f"{s['task']}-{look}")) for look in LOOKS]
                seeds = "-" if runs[0].get("reference") else len(runs)
                lines.append(f"| {v} | {s['demos']} | {seeds} | {cells[0]} | {cells[1]} |")
    lines += ["", "| training demos | the paper's claim | difference (95% interval) | interval | verdict "
              "| the plan's normal interval | per seed |", "|---|---|---|---|---|---|---|"]
    for s in sorted(studies, key=lambda s: s["demos"]):
        for c in s["claims"]:
            pl = planned(s, c)
            extra = (f"{pl['normal'][1]:+.3f} to {pl['normal'][2]:+.3f} | {', '.join(f'{d:+.3f}' for d in pl['per_seed'])}"
                     if pl else "- | -")
            ci = f"{c['low']:+.3f} to {c['high']:+.3f}" if c["low"] is not None and np.isfinite(c["low"]) else "none: one seed"
            lines.append(f"| {s['demos']} | {c['claim']} ({c['better']} vs {c['worse']}) | {c['difference']:+.3f} ({ci}) "
                         f"| {c.get('interval', '')} | {c['verdict']} | {extra} |")
    if "spearman" in align:
        lines += ["", f"CKNNA(h, q) against seen success over {align['runs']} runs of every regime: Spearman's rho = "
                  f"{align['spearman']:+.2f} (95% bootstrap interval {align['ci95'][0]:+.2f} to {align['ci95'][1]:+.2f})."]
    return "\n".join(lines) + "\n"


def text_file(text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return write


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: die(f"{msg}: see python study_regimes.py --help")
    p.add_argument("studies", nargs="+", help="study.py output folders, one per data regime")
    p.add_argument("--out", default="results/regimes")
    a = p.parse_args()
    root = os.path.dirname(os.path.abspath(__file__))
    studies = merge([read_study(f, root) for f in a.studies])
    if len({s["task"] for s in studies}) > 1:
        die(f"the studies evaluated different tasks ({', '.join(sorted({s['task'] for s in studies}))}): give studies of one task")
    cur, align = curve(studies), alignment_vs_success(studies)
    text = table(studies, cur, align)
    blob = json.dumps(strict(dict(studies=[dict(folders=[os.path.relpath(os.path.abspath(f), root) for f in s["folders"]],
                                         demos=s["demos"],
                                         claims=s["claims"],
                                         planned={c["claim"]: planned(s, c) for c in s["claims"]}) for s in studies], curve=cur, alignment_vs_success=align)),
                      indent=1, allow_nan=False)
    try:
        os.makedirs(a.out, exist_ok=True)
        atomic(os.path.join(a.out, "regimes.md"), text_file(text), "--out")
        atomic(os.path.join(a.out, "regimes.json"), text_file(blob), "--out")
        plot(os.path.join(a.out, "success_vs_demos.png"), cur, studies[0]["task"])
    except OutputError as e:
        die(str(e))
    except OSError as e:
        die(f"cannot write to --out {a.out} ({e.strerror}): choose a writable folder")
    print(text)
    print(f"written: {a.out}/success_vs_demos.png, regimes.md, regimes.json")


if __name__ == "__main__":
    main()
