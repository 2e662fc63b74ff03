"""
What a study's run is keyed by (study.py): the train.py flags it was trained with, the data it read, and the
evaluate.py flags of each evaluation; and whether its files can be read at all. study.py asks before it reuses
anything, so its table never says one thing while the run folders say another. Each check gives None (it fits) or
one line naming the file, the flag, its value then and now.

Where the key is read, in a run folder:
    config.json             train.py: {"args": vars(args), ...}, every flag as the run saw it
    study.json              study.py: the flags it asked for and the data file's size and mtime (so a flag dropped
                            from --train-args, or a data file collected again, is seen too; older runs lack it)
    eval-*/results.json     evaluate.py: appearance, execute, init_noise, horizon, and the episodes per task
    eval-*/study.json       study.py: the evaluate.py flags it asked for (those results.json does not record too)
When config.json holds a hash of the data's content (DATA_SHA1: sha1 of the file's bytes), it decides, not the
data's path, size or mtime. Values compare as typed: '1e-3' on the command line equals 0.001 in config.json.
"""
import functools
import hashlib
import json
import os
import time

# flags that say where and how a run is executed or logged, not what it computes: never part of the key
TRAIN_HOW = {"out", "cache_dir", "resume", "overwrite", "stop_after", "workers", "device", "backbone_path", "compile",
             "log_every", "eval_every", "ckpt_every", "cknna_every", "data"}   # --data: compared as a file, below
EVAL_HOW = {"out", "overwrite", "videos", "workers", "device"}
DATA_SHA1 = "data_fingerprint"   # train.py's content hash of --data, at config.json's top level (data.fingerprint)
ABSENT = object()         # a flag not given


def flags(argv):
    """A command's flags as {name: value}: ['--lr', '1e-3', '--rscl'] -> {'lr': '1e-3', 'rscl': True}. A flag given
    twice keeps its last value, as argparse does; positional arguments (evaluate.py's checkpoint) are skipped."""
    out, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--"):
            name, eq, value = argv[i][2:].partition("=")
            if not eq:
                value = True   # a bare flag (store_true)
                if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    value, i = argv[i + 1], i + 1
            out[name.replace("-", "_")] = value
        i += 1
    return out


def norm(v):
    """A value as JSON saved it (bool, number, str, None) or as typed (str; True for a bare flag), comparable across
    the two: '1e-3' equals 0.001 and '2' equals 2, but True never equals 1."""
    if v is ABSENT or v is None or isinstance(v, bool):
        return ("flag", v)
    try:
        return ("number", float(v))
    except (TypeError, ValueError):
        return ("text", str(v))


def show(v):
    """A flag's value as a person reads it: on/off for a bare flag, '' for an empty one."""
    if v is ABSENT:
        return "not given"
    if v is None or isinstance(v, bool):
        return {True: "on", False: "off", None: "unset"}[v]
    return "''" if v == "" else str(v)


def differ(name, now, then, where):
    return f"--{name.replace('_', '-')} {show(now)} now, {show(then)} {where}"


def read_json(path):
    """(the parsed file, None), or (None, what is wrong with it: 'missing', or one line naming the file)."""
    try:
        with open(path) as f:
            return json.load(f), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as e:   # a half-written file, not UTF-8, unreadable
        return None, f"{os.path.basename(path)} is damaged (not readable JSON: {type(e).__name__})"


def record(folder, **key):
    """folder/study.json: what study.py asked for, written atomically next to what it produced."""
    path = os.path.join(folder, "study.json")
    with open(path + ".tmp", "w") as f:
        json.dump(key, f, indent=1)
    os.replace(path + ".tmp", path)


def data_print(path):
    """The data file's size and modification time: the data's identity until train.py records a content hash."""
    st = os.stat(path)
    return dict(size=st.st_size, mtime_ns=st.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def sha1(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_key(argv):
    """The flags of a train.py command that decide what it computes."""
    return {k: v for k, v in flags(argv).items() if k not in TRAIN_HOW}


def eval_key(argv):
    return {k: v for k, v in flags(argv).items() if k not in EVAL_HOW}


def data_problem(saved, args, asked, data):
    """Why the data file `data` is not the one the run read (None when it is)."""
    hashed = saved.get(DATA_SHA1)
    if hashed is not None and os.path.isfile(data):   # the content decides, wherever the file lies
        if sha1(data) == hashed:
            return None
        return (f"--data {data} holds other content than the run was trained on (sha1 {sha1(data)[:12]} now, "
                f"{str(hashed)[:12]} in its config.json)")
    if os.path.realpath(str(args.get("data", ""))) != os.path.realpath(data):
        return differ("data", data, args.get("data", ABSENT), "in its config.json")
    then = asked.get("data")
    if isinstance(then, dict) and os.path.isfile(data) and then != (now := data_print(data)):
        when = lambda d: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.get("mtime_ns", 0) / 1e9))
        return (f"--data {data} has changed since the run was trained (size {then.get('size')} bytes, modified "
                f"{when(then)} then; {now['size']} bytes, modified {when(now)} now)")
    return None


def step_of(ckpt):
    """(the step ckpt.pt was saved at, 0 when there is none; None), or (0, what is wrong with it)."""
    if not os.path.isfile(ckpt):
        return 0, None
    import torch
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"]), None
    except Exception as e:   # truncated, not a checkpoint, no step: one line, never a traceback
        return 0, f"ckpt.pt is damaged (it cannot be read as a train.py checkpoint: {type(e).__name__})"


def trained_problem(folder, argv, data):
    """Why the trained run in folder, if any, cannot be continued or reused by train.py's arguments argv on data:
    its checkpoint is damaged, or its key differs (run_problem). None when it fits, or when nothing is trained yet."""
    if not os.path.isfile(os.path.join(folder, "ckpt.pt")):
        return None   # nothing to reuse (a folder left by a killed first start is replaced)
    return step_of(os.path.join(folder, "ckpt.pt"))[1] or run_problem(folder, argv, data)


def run_problem(folder, argv, data):
    """Why the trained run in folder is not the one train.py's arguments argv would train on data: each differing
    flag with its value now and then, in one line; None when it fits."""
    saved, why = read_json(os.path.join(folder, "config.json"))
    if why:
        return "config.json is missing" if why == "missing" else why
    args = saved.get("args") if isinstance(saved, dict) else None
    if not isinstance(args, dict):
        return "config.json is damaged (no 'args', train.py's flags, in it)"
    now = train_key(argv)
    diffs = [differ(k, v, args.get(k, ABSENT), "in its config.json") for k, v in now.items()
             if k not in args or norm(v) != norm(args[k])]
    asked, _ = read_json(os.path.join(folder, "study.json"))   # None: a run trained before study.py kept one
    asked = asked if isinstance(asked, dict) else {}
    then = asked.get("train") if isinstance(asked.get("train"), dict) else {}
    diffs += [differ(k, ABSENT, v, "when it was trained") for k, v in then.items() if k not in now]
    if problem := data_problem(saved, args, asked, data):
        diffs.append(problem)
    return "; ".join(diffs) or None


def read_eval(out, task, argv):
    """The evaluation in folder out: ([successes, episodes] of task, None) when it is the one evaluate.py's arguments
    argv would run, else (None, why): 'missing', a damaged file, or the differing flags in one line."""
    res, why = read_json(os.path.join(out, "results.json"))
    if why:
        return None, why
    try:
        summary = res["summary"]
        episodes, successes = int(summary[task]["episodes"]), int(summary[task]["successes"])
    except (KeyError, TypeError, ValueError):
        return None, f"results.json is damaged (no episode count for {task} in its summary)"
    now = eval_key(argv)
    recorded = dict(res, tasks=",".join(summary), episodes=episodes)
    diffs = {k: differ(k, v, recorded[k], "in its results.json") for k, v in now.items()
             if k in recorded and norm(v) != norm(recorded[k])}
    asked, _ = read_json(os.path.join(out, "study.json"))   # None: an evaluation from before study.py kept one
    then = asked.get("evaluate") if isinstance(asked, dict) else None
    if isinstance(then, dict):   # the flags results.json does not record (--seed), and flags dropped since
        for k in sorted(set(now) | set(then)):
            if k not in diffs and norm(now.get(k, ABSENT)) != norm(then.get(k, ABSENT)):
                diffs[k] = differ(k, now.get(k, ABSENT), then.get(k, ABSENT), "when it was run")
    if diffs:
        return None, "; ".join(diffs[k] for k in sorted(diffs))
    return [successes, episodes], None


def read_scores(out):
    """cknna.py's scores in folder out: ({representation: CKNNA}, None), or (None, 'missing' or what is damaged)."""
    scores, why = read_json(os.path.join(out, "scores.json"))
    if why:
        return None, why
    rows = scores.get("rows") if isinstance(scores, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"representation", "cknna"} <= set(r)
                                             for r in rows):
        return None, "scores.json is damaged (no rows of representation and cknna)"
    return {r["representation"]: r["cknna"] for r in rows}, None


def read_log(path):
    """log.jsonl's rows, and a note or a problem: a last line cut off mid-write (a killed run) is dropped with a
    note; a damaged line before it makes the log unusable (rows None)."""
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError
        except ValueError:
            if i == len(lines) - 1:
                return rows, f"log.jsonl's last line is cut off (line {i + 1}, a write was interrupted): ignored"
            return None, f"log.jsonl is damaged (line {i + 1} of {len(lines)} is not a log row)"
        rows.append(row)
    return rows, None
