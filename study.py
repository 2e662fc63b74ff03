"""
Does RS-CL reproduce? A grid of variants x seeds, each trained by train.py, evaluated in closed loop by
evaluate.py (seen and unseen looks, the same fixed episode seeds for every variant) and measured by
cknna.py (held-out demos of every task); then one table, the paper's claims with intervals, and figures.

    python study.py --preset paper-ablations --seeds 3        # -> study/paper-ablations/
    python study.py --preset core --seeds 3                   # baseline vs RS-CL vs sharper RS-CL
    python study.py --preset main --seeds 1 --out runs/main   # what main.sh runs

Re-running continues: finished trainings, evaluations and scores are kept (a half-trained run resumes), but only
what fits this study's flags (runkey.py): a trained run whose train.py flags or --data differ from what this study
would pass is refused by name (--retrain trains those anew: the old folder is replaced at the new first checkpoint);
an evaluation or CKNNA score that differs or is damaged is run again. Ctrl-C keeps what is finished. On another
machine (run folders are never committed), the runs the committed results.json reports for this same study are kept,
marked "carried", not trained again; delete their rows, or choose another --out, to train them anew.
Every variant is a set of train.py flags (VARIANTS); study.py adds no method code of its own.
Output: <out>/<variant>-s<seed>/ (checkpoints, logs, evaluations: git-ignored), and <out>/results.json,
<out>/table.md, <out>/success.png, <out>/cknna.png, <out>/rscl_floor.png (small: commit them).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

import runkey
from study_report import report

# -----------------------------------------------------------------------------
# the grid: variants are train.py flags; presets are lists of variants plus the evaluation's size

RECIPE = ["--backbone", "dinov2-s", "--cameras", "agentview,robot0_eye_in_hand", "--token-pool", "2",
          "--adapter-dropout", "0.0", "--lr", "1e-3", "--ema", "0.999", "--cache-features"]   # the CPU default
PRIVILEGED = ["--orientation", "raw", "--proprio-keys", "robot0_eef_pos,robot0_eef_quat,robot0_gripper_qpos,object"]
VARIANTS = {
    "baseline": [],
    "privileged": PRIVILEGED,                                      # q holds the cube's state: perfect perception
    "rscl": ["--rscl"],                                            # the paper: beta 1, tau 0.2, view cutoff, cosine lambda
    "rscl-sharp": ["--rscl", "--beta-scale", "median", "--beta", "0.3"],   # sharper, scale-free soft targets
    "rscl-beta0.3": ["--rscl", "--beta", "0.3"],
    "rscl-floor": ["--rscl", "--lambda-floor", "0.25"],
    "rscl-pooled-h": ["--rscl", "--rscl-on", "pooled-h"],
    "infonce": ["--rscl", "--rscl-target", "infonce"],              # identity targets
    "action": ["--rscl", "--rscl-target", "action"],                # next-action distances
    "token": ["--rscl", "--cutoff", "token"],
    "span": ["--rscl", "--cutoff", "span"],
    "align": ["--align"],                                           # Don't Blind Your VLA: teacher = the backbone, weight 0.2
    "rscl-align": ["--rscl", "--align"],
    "train-vision": ["--train-vision"],                             # the encoder fine-tuned (its copy), lr / 10
    "dual": ["--dual-encoder"],                                     # frozen + trainable encoder, fused per token
    "rscl-dual": ["--rscl", "--dual-encoder"],
}
LIVE = ("--train-vision", "--dual-encoder")   # a trainable encoder: no feature cache (train.py refuses it)
PRESETS = {
    "main": dict(variants=["rscl", "baseline"], episodes=50, unseen=20),
    "ladder": dict(variants=["baseline", "rscl", "privileged"], episodes=50, unseen=50),
    "core": dict(variants=["baseline", "rscl", "rscl-sharp"], episodes=50, unseen=50),
    "paper-ablations": dict(variants=["baseline", "rscl", "rscl-sharp", "infonce", "action", "token", "span",
                                      "rscl-beta0.3", "rscl-floor", "rscl-pooled-h"], episodes=50, unseen=50),
    # the related methods on the same policy (issue: align and the dual encoder); their claim is about unseen looks
    # issue 22's study of two demo regimes (README: the plan), one study folder per regime (--train-args
    # "--demos-per-task 30"); the episodes per seed from the power plan
    "regimes": dict(variants=["baseline", "rscl"], episodes=150, unseen=50),
    "related": dict(variants=["baseline", "rscl", "align", "dual", "rscl-align"], episodes=50, unseen=50),
}
# the paper's claims, each "A beats B" on a metric (success on seen looks, or CKNNA(h, q))
CLAIMS = [("RS-CL aligns h with q (CKNNA)", "rscl", "baseline", "cknna_h"),
          ("RS-CL raises success", "rscl", "baseline", "seen"),
          ("RS-CL raises success on unseen looks", "rscl", "baseline", "unseen"),
          ("plain InfoNCE beats the baseline", "infonce", "baseline", "seen"),
          ("proprio weights beat plain InfoNCE", "rscl", "infonce", "seen"),
          ("next-action weights are worse than InfoNCE", "infonce", "action", "seen"),
          ("view cutoff beats token cutoff", "rscl", "token", "seen"),
          ("view cutoff beats span cutoff", "rscl", "span", "seen"),
          ("sharper targets beat the paper's", "rscl-sharp", "rscl", "seen"),
          ("sharper targets align h with q more", "rscl-sharp", "rscl", "cknna_h"),
          ("alignment to a teacher helps on unseen looks", "align", "baseline", "unseen"),   # the related methods'
          ("the dual encoder helps on unseen looks", "dual", "baseline", "unseen")]         # own claims


ROOT = os.path.dirname(os.path.abspath(__file__))   # commands run here; results.json's paths are relative to it


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def rel(path):
    """A path as results.json records it: relative to the repository when inside it (no machine's absolute path in
    committed results), else as given."""
    r = os.path.relpath(path, ROOT)
    return path if r == os.pardir or r.startswith(os.pardir + os.sep) else r


# -----------------------------------------------------------------------------
# one run: train -> evaluate (seen, unseen) -> CKNNA, each step skipped when its output is complete

def call(cmd, dry):
    print("$ " + " ".join(cmd), flush=True)
    if dry:
        return 0
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        return proc.wait()
    except KeyboardInterrupt:   # the child got the Ctrl-C too: let it stop cleanly (train.py keeps its checkpoint)
        proc.wait()
        raise


def stamp(path):
    """Which file path is: a new run writes a new config.json (another inode and mtime), a resumed one keeps it."""
    if not os.path.isfile(path):
        return None
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


def train_cmd(a, variant, seed, folder):
    recipe = [f for f in RECIPE if f != "--cache-features" or not set(LIVE) & set(VARIANTS[variant])]
    return [sys.executable, "train.py", *recipe, *VARIANTS[variant], "--data", a.data, "--max-iters", str(a.iters),
            "--seed", str(seed), "--out", folder, "--cache-dir", a.cache_dir, *a.train_args]


def eval_cmd(a, folder, task, look, n):   # into folder/eval-<task>-<look>
    return [sys.executable, "evaluate.py", os.path.join(folder, "ckpt.pt"), "--tasks", task, "--episodes", str(n),
            "--appearance", look, "--out", os.path.join(folder, f"eval-{task}-{look}"), "--overwrite", "--videos", "2",
            *a.eval_args]


def run_one(a, name, folder, train, retrain):
    """The commands of one run, each only if its result is missing, damaged or from other flags (all of them when
    retrain). Returns None, or (why, what): why 'stopped' (a re-run continues it) or 'failed'."""
    py, ckpt, config = sys.executable, os.path.join(folder, "ckpt.pt"), os.path.join(folder, "config.json")
    done = 0 if retrain else runkey.step_of(ckpt)[0]
    if done < a.iters:
        start = ["--resume"] if done else (["--overwrite"] if os.path.isdir(folder) else [])   # a killed first start
        before = stamp(config)
        try:
            if call(train + start, a.dry_run):
                return "failed", "training"
        finally:   # a new run's folder (config.json is new): record what study.py asked for, even after a Ctrl-C
            if not a.dry_run and stamp(config) not in (None, before):
                runkey.record(folder, train=runkey.train_key(train[2:]), data=runkey.data_print(a.data))
        if not a.dry_run and (at := runkey.step_of(ckpt)[0]) < a.iters:   # stopped early (--stop-after, a kill):
            return "stopped", f"training stopped at step {at} of {a.iters}"   # no evaluation of it yet
    for task in a.tasks:
        for look, n in (("seen", a.episodes), ("unseen", a.unseen)):
            cmd, out = eval_cmd(a, folder, task, look, n), os.path.join(folder, f"eval-{task}-{look}")
            why = n and ("missing" if retrain else runkey.read_eval(out, task, cmd[2:])[1])   # n = 0: none
            if why:
                if why != "missing":
                    print(f"   {name}: evaluating {task} on {look} looks again: {why}", flush=True)
                if call(cmd, a.dry_run):
                    return "failed", f"evaluation ({task}, {look})"
                if not a.dry_run:
                    runkey.record(out, evaluate=runkey.eval_key(cmd[2:]))
    out = os.path.join(folder, "cknna")
    if why := "missing" if retrain else runkey.read_scores(out)[1]:
        if why != "missing":
            print(f"   {name}: CKNNA again: {why}", flush=True)
        if call([py, "cknna.py", ckpt, "--data", a.data, "--split", "val", "--out", out, "--overwrite"], a.dry_run):
            return "failed", "CKNNA"
    return None


def run_reference(a, ref):
    """evaluate.py's reference `ref` (expert, blind) on the study's episodes, each look, if missing or other."""
    for task in a.tasks:
        for look, n in (("seen", a.episodes), ("unseen", a.unseen)):
            cmd = ref_cmd(a, ref, task, look, n)
            if n and runkey.read_eval(cmd[cmd.index("--out") + 1], task, cmd[2:])[1]:
                if call(cmd, a.dry_run):
                    return "failed", f"evaluation ({task}, {look})"
                if not a.dry_run:
                    runkey.record(cmd[cmd.index("--out") + 1], evaluate=runkey.eval_key(cmd[2:]))


def ref_cmd(a, ref, task, look, n):   # into <out>/references/<ref>-<task>-<look>
    return [sys.executable, "evaluate.py", ref, "--tasks", task, "--episodes", str(n), "--appearance", look, "--out",
            os.path.join(a.out, "references", f"{ref}-{task}-{look}"), "--overwrite", "--videos", "0", *a.eval_args]


def read_reference(a, ref):
    r = dict(variant=ref, seed=0, reference=True, success={}, cknna={}, final={}, curve={})
    for task in a.tasks:
        for look, n in (("seen", a.episodes), ("unseen", a.unseen)):
            cmd = ref_cmd(a, ref, task, look, n)
            got, _ = runkey.read_eval(cmd[cmd.index("--out") + 1], task, cmd[2:]) if n else (None, None)
            if got:
                r["success"][f"{task}-{look}"] = got
    return r if r["success"] else None


def outcomes(out, task):
    """Episode i's success in evaluation folder out as the i-th character of a '0'/'1' string: episode i has the same
    seed for every variant, so two runs' strings pair episode by episode (study_report: paired intervals)."""
    res, _ = runkey.read_json(os.path.join(out, "results.json"))
    try:
        eps = sorted(res["episodes"][task], key=lambda e: e["episode"])
        return "".join("1" if e["success"] else "0" for e in eps)
    except (KeyError, TypeError):   # an evaluation from before per-episode results: no pairs (unpaired intervals)
        return None


CARRIED = "its run folder is not on the machine that wrote this report: the row is the one the results.json in carried_from reported"


def carried(a, grid, train):
    """Rows of an earlier results.json (this study's own, then each --carry-from study's) for runs whose folders are
    not on this machine (run folders hold checkpoints, never committed: a study continued on a new machine, or one that
    shares runs with another, keeps what was reported instead of training those runs again), but only from a report
    of the same study: the same data path, steps, tasks, episodes and extra flags, and, where the row recorded them,
    the same train.py key and data content. {folder: row}"""
    now = dict(data=rel(a.data), iters=a.iters, tasks=a.tasks, episodes=a.episodes, unseen=a.unseen,
               train_args=a.train_args, eval_args=a.eval_args)
    rows = {}
    for src in [a.out] + a.carry_from:
        old, _ = runkey.read_json(os.path.join(src, "results.json"))
        if not isinstance(old, dict):
            continue
        if bad := [k for k, v in now.items() if old.get("config", {}).get(k) != v]:
            if src != a.out:   # (this study's own earlier report with other flags: another study, silently)
                print(f"note: --carry-from {rel(src)}: its study ran with another --{bad[0].replace('_', '-')}: none "
                      f"of its runs is kept", flush=True)
            continue
        for r in old.get("runs", []):
            if not r.get("reference"):
                rows.setdefault((r.get("variant"), r.get("seed")), (r, rel(os.path.join(src, "results.json"))))
    keep = {}
    for v, s, f in grid:
        r, src = rows.get((v, s), (None, None))
        if r is None or os.path.exists(os.path.join(f, "log.jsonl")):
            continue   # never reported, or its folder is here: the folder decides
        key = json.loads(json.dumps(runkey.train_key(train[f][2:])))
        then_sha1 = r.get("data_sha1")
        if r.get("train", key) != key or (then_sha1 and not (os.path.isfile(a.data) and runkey.sha1(a.data) == then_sha1)):
            print(f"note: {v}-s{s}: {src} reports it with other flags or data: trained again", flush=True)
            continue
        keep[f] = dict(r, carried=CARRIED, carried_from=r.get("carried_from") or src)
    return keep


def read_run(a, variant, seed, folder, train):
    """What a finished run measured: success counts per task and look, CKNNA rows, final log values, curves.
    None (with a note naming the file and what is wrong) for a run that is damaged or not this study's."""
    name = f"{variant}-s{seed}"
    saved, _ = runkey.read_json(os.path.join(folder, "config.json"))
    r = dict(variant=variant, seed=seed, folder=rel(folder), success={}, outcomes={}, cknna={},
             train=runkey.train_key(train[2:]), data_sha1=(saved or {}).get(runkey.DATA_SHA1))
    damaged = [runkey.run_problem(folder, train[2:], a.data)]
    for task in a.tasks:
        for look, n in (("seen", a.episodes), ("unseen", a.unseen)):
            if not n:
                continue   # --unseen 0: no unseen looks in this study
            out = os.path.join(folder, f"eval-{task}-{look}")
            got, why = runkey.read_eval(out, task, eval_cmd(a, folder, task, look, n)[2:])
            if got:
                r["success"][f"{task}-{look}"] = got
                r["outcomes"][f"{task}-{look}"] = outcomes(out, task)
            elif why != "missing":
                damaged.append(f"eval-{task}-{look}: {why}")
    got, why = runkey.read_scores(os.path.join(folder, "cknna"))
    r["cknna"] = got or {}
    if why not in (None, "missing"):
        damaged.append(f"cknna: {why}")
    rows, note = runkey.read_log(os.path.join(folder, "log.jsonl"))
    if rows is not None and not any(damaged) and not r["success"]:   # still training, or stopped before its evaluation
        print(f"note: {name} is left out of the report: not evaluated yet (run the study again to finish it)", flush=True)
        return None
    if rows is None or any(damaged):
        print(f"note: {name} is left out of the report: {'; '.join(d for d in damaged + [note] if d)}", flush=True)
        return None
    if note:
        print(f"note: {name}: {note}", flush=True)
    last = lambda k: next((row[k] for row in reversed(rows) if k in row), None)
    r["final"] = {k: last(k) for k in ("val_loss_fm", "val_loss_rscl", "val_w_entropy", "val_n_pos",
                                        "val_rscl_excess", "val_cos_z", "val_cos_off", "val_cos_off_std")}
    r["curve"] = {k: [[row["step"], row[k]] for row in rows if k in row and "val_loss_fm" not in row]
                  for k in ("loss_rscl", "w_entropy")}
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: die(f"{msg}: see python study.py --help")
    p.add_argument("--preset", default="core", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--variants", default="", help=f"comma-separated, instead of the preset's (from {', '.join(VARIANTS)})")
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0 .. N-1 per variant")
    p.add_argument("--data", default="data/main-demos.hdf5", help="the demo file (main.sh collects it)")
    p.add_argument("--iters", type=int, default=2000, help="training steps per run")
    p.add_argument("--tasks", default="lift", help="tasks evaluated in closed loop")
    p.add_argument("--episodes", type=int, default=-1, help="episodes per task on seen looks (-1: the preset's)")
    p.add_argument("--unseen", type=int, default=-1, help="episodes per task on unseen looks (-1: the preset's)")
    p.add_argument("--out", default="", help="study folder (default: study/<preset>)")
    p.add_argument("--cache-dir", default="data/cache")
    p.add_argument("--carry-from", default="", help="other study folders (comma-separated) whose reported runs this "
                   "study keeps where its own are missing, if that study ran with the same flags (e.g. the baseline "
                   "of the regime an ablation study extends)")
    p.add_argument("--train-args", default="", help="extra train.py flags for every run, e.g. '--batch-size 16'")
    p.add_argument("--eval-args", default="", help="extra evaluate.py flags, e.g. '--workers 4'")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--report-only", action="store_true", help="only gather what exists into the table and figures")
    p.add_argument("--references", default="expert,blind", help="evaluate.py's references run on the same episodes "
                   "(expert: the ceiling, blind: the floor; '' for none)")
    p.add_argument("--retrain", action="store_true", help="train anew the runs whose flags, data or checkpoint do not "
                   "fit (refused without it); each old folder is replaced at its new run's first checkpoint")
    a = p.parse_args()
    if a.preset not in PRESETS:
        die(f"unknown preset '{a.preset}': choose one of {', '.join(PRESETS)}")
    preset = PRESETS[a.preset]
    variants = a.variants.split(",") if a.variants else preset["variants"]
    if bad := [v for v in variants if v not in VARIANTS]:
        die(f"unknown variant {bad[0]}: choose from {', '.join(VARIANTS)}")
    if twice := [v for i, v in enumerate(variants) if v in variants[:i]]:
        die(f"--variants lists {twice[0]} twice: its runs would be counted twice; name each variant once")
    a.episodes = preset["episodes"] if a.episodes < 0 else a.episodes
    a.unseen = preset["unseen"] if a.unseen < 0 else a.unseen
    if a.seeds < 1 or a.iters < 1 or a.episodes < 1 or a.unseen < 0:
        die(f"--seeds, --iters and --episodes must be at least 1, --unseen 0 (got {a.seeds}, {a.iters}, "
            f"{a.episodes}, {a.unseen})")
    a.references = [r for r in a.references.split(",") if r]
    if bad := [r for r in a.references if r not in ("expert", "blind")] or len(set(a.references)) != len(a.references):
        die(f"--references {','.join(a.references)}: name expert and/or blind, each once (or '' for none)")
    if not os.path.isfile(a.data):
        die(f"--data {a.data} does not exist: collect it with bash main.sh (or sim.py, see the README)")
    a.tasks, a.train_args, a.eval_args = a.tasks.split(","), a.train_args.split(), a.eval_args.split()
    a.data, a.out = os.path.abspath(a.data), os.path.abspath(a.out or os.path.join("study", a.preset))
    a.cache_dir = os.path.abspath(a.cache_dir)
    a.carry_from = [os.path.abspath(c) for c in a.carry_from.split(",") if c]
    if bad := [c for c in a.carry_from if not os.path.isfile(os.path.join(c, "results.json"))]:
        die(f"--carry-from {rel(bad[0])} holds no results.json: name a study folder that has reported its runs")
    grid = [(v, s, os.path.join(a.out, f"{v}-s{s}")) for s in range(a.seeds) for v in variants]   # a study cut
    # short holds every variant at its first seeds (paired runs), not one variant's seeds
    train = {f: train_cmd(a, v, s, f) for v, s, f in grid}
    kept = carried(a, grid, train)   # reported before, folder not here: not trained again
    failed = []
    if not a.report_only:
        misfits = {f: why for f in train if (why := runkey.trained_problem(f, train[f][2:], a.data))}
        if misfits and not a.retrain:   # never reused silently: one line per run, with the way out
            for f, why in misfits.items():
                print(f"error: {os.path.basename(f)}: {why}: re-run with --retrain to train it anew, or choose "
                      f"another --out", file=sys.stderr)
            sys.exit(2)
        for ref in a.references:   # cheap, no training: the floor and the ceiling first
            print(f"== study {a.preset}: reference {ref}", flush=True)
            if what := run_reference(a, ref):
                failed.append((*what, ref))
        for i, (v, s, folder) in enumerate(grid):
            print(f"== study {a.preset}: run {i + 1}/{len(grid)}: {v}, seed {s}"
                  f"{' (trained anew: ' + misfits[folder] + ')' if folder in misfits else ''}", flush=True)
            if folder in kept:
                print(f"   {v}-s{s}: kept from {kept[folder]['carried_from']} ({CARRIED.split(':')[0]})", flush=True)
                continue
            if what := run_one(a, f"{v}-s{s}", folder, train[folder], folder in misfits):
                failed.append((*what, f"{v}-s{s}"))
                print(f"   {v}-s{s}: {what[1]}{' failed' * (what[0] == 'failed')}; the study goes on with the next run",
                      flush=True)
    if not a.dry_run:
        runs = [kept.get(f) or read_run(a, v, s, f, train[f]) for v, s, f in grid
                if f in kept or os.path.isfile(os.path.join(f, "log.jsonl"))]
        runs += [read_reference(a, ref) for ref in a.references]
        config = dict(vars(a), data=rel(a.data), out=rel(a.out), cache_dir=rel(a.cache_dir),
                      carry_from=[rel(c) for c in a.carry_from])
        flags_of = lambda v: "(no training)" if v not in VARIANTS else f"`{' '.join(VARIANTS[v]) or '(none)'}`"
        report(a.out, config, [r for r in runs if r], CLAIMS, flags_of, a.tasks[0])
        print(f"study: {a.out}/table.md, results.json, success.png, cknna.png, rscl_floor.png")
    stopped = [name for why, _, name in failed if why == "stopped"]
    broken = [f"{name} ({what})" for why, what, name in failed if why == "failed"]
    says = []   # only what is true: a stopped training continues, a failed command fails again until its cause is fixed
    if stopped:
        says.append(f"{len(stopped)} run(s) stopped before step {a.iters}: {', '.join(stopped)}: re-run to continue "
                    f"them")
    if broken:
        says.append(f"{len(broken)} run(s) failed: {', '.join(broken)}: the error is printed above under its command "
                    f"('$ ...'); fix its cause, then re-run")
    if says:
        die("; ".join(says))


def cli():
    try:
        main()
    except KeyboardInterrupt:   # Ctrl-C: one line, no traceback; every output is written whole or not at all
        print("\nstudy: interrupted: finished trainings, evaluations and CKNNA scores are kept and a stopped training "
              "resumes from its last checkpoint: run the same command again to continue", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
