"""
A run's folder (train.py): nothing is lost, nothing half-written is taken for whole, one process writes it.

A run first claims NAME (output.claim: NAME.lock, held for the process's life, so a second run on the same --out is
refused, and the NAME.incomplete-* of a run that was killed are removed). A new run writes into a folder of its own,
NAME.incomplete-XXXX beside NAME, which takes NAME's place at its first checkpoint; a start that fails, is stopped
(Ctrl-C, `kill`) or hits a NaN before that leaves nothing. With --overwrite the old NAME is moved into the new folder at
that moment, then deleted, so no name of the user's (NAME.old, NAME.new) is ever touched; without it a NAME that someone
else made meanwhile is never replaced (output.swap_in). Checkpoints are written to a name of ours and renamed (atomic).
A resumed run writes into NAME itself, its log cut back to its checkpoint's step. A write that fails, Ctrl-C and
`kill` end with one line saying what is kept. folder_problem and changed_flags check a start or a resume before
anything is written; load_checkpoint reads a checkpoint back, with one clear line for a missing, truncated or foreign file.
"""
import atexit
import json
import os
import shutil
import signal
import sys

import torch

from layouts import run_layout
from output import OutputError, atomic, claim, new_folder, swap_in, writing


# what --resume may change (how a run is executed and logged; --lr: the way back from a NaN); all else must match
RESUMABLE = {"workers", "device", "eval_every", "eval_iters", "log_every", "ckpt_every", "cknna_every", "stop_after",
             "compile", "cache_features", "cache_dir", "backbone_path", "out", "resume", "overwrite", "lr", "vision_lr"}


def _torch_save(state, path):
    """torch.save through a Python file: a full disk is an OSError (ENOSPC), not torch's RuntimeError."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})   # a Ctrl-C waits for the file
    try:
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _write_lines(lines, path):
    with open(path, "w") as f:
        f.writelines(lines)


class RunFolder:
    """out's folder for a new run (resume False) or a resumed one; saved: the step of the last checkpoint written (a
    resumed run: set to its checkpoint's). claim: take out at once (the process that writes; see claim)."""

    def __init__(self, out, resume, overwrite=False, claim=False):
        self.out, self.dir, self.resume, self.overwrite = out, out, resume, overwrite
        self.saved, self.log_file, self.signum = 0, None, 0
        if claim:
            self.claim()

    def kept(self, how=""):
        """What this run keeps if it ends now, and how to go on (one clause); how: what else to change."""
        if not self.saved:
            return f"no checkpoint had been written, so this run keeps nothing: start again{how}"
        elsewhere = f" --out {self.dir}" if self.dir != self.out else ""
        return (f"the last good checkpoint (step {self.saved}) is kept in {os.path.join(self.dir, 'ckpt.pt')}: continue "
                f"it with --resume{elsewhere}{how}")

    def claim(self):
        """Before anything is written: out is this process's alone (output.claim); Ctrl-C and `kill` then end with one
        line saying what is kept, through atexit (a new run's folder without a checkpoint is removed)."""
        claim(self.out, "--out")
        pid = os.getpid()

        def stopped(signum, _):
            if os.getpid() != pid:   # a forked data loader worker: its loop ends quietly on KeyboardInterrupt
                raise KeyboardInterrupt
            if not self.signum:
                print(f"\ninterrupted: {self.kept()}", file=sys.stderr)
            self.signum = signum
            sys.exit(128 + signum)   # 130 for Ctrl-C, 143 for `kill`
        signal.signal(signal.SIGINT, stopped)
        signal.signal(signal.SIGTERM, stopped)
        hook = sys.unraisablehook   # a signal landing in a __del__ or weakref callback: Python swallows the exit there

        def unraisable(u):
            if not isinstance(u.exc_value, SystemExit):
                hook(u)
        sys.unraisablehook = unraisable

    def check_stop(self):
        """Once a step: a stop whose exit Python swallowed (see claim) ends the run here, without a second line."""
        if self.signum:
            sys.exit(128 + self.signum)

    def start(self, config):
        """Once every check has passed. A new run: its own folder, removed at exit unless a checkpoint was saved, with
        config.json and a new log.jsonl. A resumed run: its log.jsonl keeps only the rows up to its checkpoint's step (a
        run stopped after its last checkpoint had logged later steps, which it now logs again), rewritten atomically."""
        if not self.resume:
            self.dir = new_folder(self.out, "--out")
            atexit.register(self.discard)
            with writing(self.out, "--out"), open(os.path.join(self.dir, "config.json"), "w") as f:
                json.dump(config, f, indent=1)
        path = os.path.join(self.dir, "log.jsonl")
        if self.resume:
            rows = []
            for line in open(path) if os.path.isfile(path) else []:
                try:
                    if json.loads(line)["step"] <= self.saved:
                        rows.append(line if line.endswith("\n") else line + "\n")
                except (ValueError, KeyError, TypeError):   # a line torn by a kill
                    pass
            atomic(path, lambda tmp: _write_lines(rows, tmp), "--out")
        with writing(path, "--out"):
            self.log_file = open(path, "a" if self.resume else "w")

    def log(self, row):
        try:
            with writing(os.path.join(self.out, "log.jsonl"), "--out"):
                self.log_file.write(json.dumps(row) + "\n")
                self.log_file.flush()
        except OutputError as e:
            raise OutputError(f"{e}; {self.kept()}") from None

    def save(self, state, step):
        """ckpt.pt written atomically (a crash or a full disk never leaves a half-written one, the last one stays);
        a new run's folder then becomes out."""
        try:
            atomic(os.path.join(self.dir, "ckpt.pt"), lambda tmp: _torch_save(state, tmp), "--out")
            if self.dir != self.out:   # the run it replaces (--overwrite), if any, goes aside into the new folder
                with writing(self.out, "--out"):
                    swap_in(self.dir, self.out, replace=self.overwrite)
                self.dir = self.out
        except OutputError as e:
            if hasattr(e, "kept"):   # out was made by someone else meanwhile: this run is kept whole beside it
                self.dir, self.saved = e.kept, step
            raise OutputError(f"{e}; {self.kept()}") from None
        self.saved = step

    def discard(self):   # a new run that stops before its first checkpoint leaves nothing
        if not self.saved:
            shutil.rmtree(self.dir, ignore_errors=True)


def folder_problem(out, data, resume, overwrite):
    """What is wrong with starting a run in folder out (one line, for train.py to print), or None."""
    if resume and overwrite:
        return "pass --resume (continue the run) or --overwrite (replace it), not both"
    ckpt_path = os.path.join(out, "ckpt.pt")
    there = os.listdir(out) if os.path.isdir(out) else []
    if overwrite and there and not {"ckpt.pt", "config.json"} & set(there):
        return f"--overwrite would delete {out}, which is not a run folder (no ckpt.pt or config.json in it): choose another --out"
    if overwrite and os.path.realpath(data).startswith(os.path.realpath(out) + os.sep):
        return f"--overwrite would delete {out}, which holds --data {data}: choose another --out"
    if resume and not os.path.isfile(ckpt_path):
        return f"--resume: there is no {ckpt_path} to continue; start a new run without --resume"
    if not resume and there and not overwrite:
        return (f"run folder {out} already exists{'' if os.path.isfile(ckpt_path) else ' (no checkpoint in it)'}: "
                f"choose another --out, continue it with --resume, or pass --overwrite")
    return None


def changed_flags(now, saved, default, keep):
    """--resume: the flags of `now` whose value is not the checkpoint's (`saved`; a flag it lacks has its default(name)),
    but those in keep, as '--flag value (checkpoint: value)'. --data compares as a real path."""
    norm = lambda k, v: os.path.realpath(v) if k == "data" else v
    show = lambda v: ("on" if v else "off") if isinstance(v, bool) else v if v != "" else "''"   # store_true flags
    return [f"--{k.replace('_', '-')} {show(v)} (checkpoint: {show(saved.get(k, default(k)))})"
            for k, v in now.items() if k not in keep and norm(k, v) != norm(k, saved.get(k, default(k)))]


def resume_checkpoint(path, now, default, keep):
    """--resume: the checkpoint at path, or ValueError (one line) if it is missing, unreadable, of another experiment
    (changed_flags of config now, but those in keep) or at or past --stop-after already."""
    ckpt = load_checkpoint(path)
    saved = {**ckpt.get("config", {}), **run_layout(ckpt.get("config", {}))}   # before --layout: robomimic's
    if changed := changed_flags(now, saved, default, keep):
        raise ValueError(f"--resume: {', '.join(changed)} does not fit the checkpoint: these flags change the experiment; "
                         f"resume with the checkpoint's values, or start a new run (another --out)")
    if 0 < now["stop_after"] <= ckpt["step"]:
        raise ValueError(f"--stop-after {now['stop_after']}: the checkpoint is at step {ckpt['step']} already: give a "
                         f"later step or 0")
    return ckpt


def load_checkpoint(path):
    """torch.load with one clear error for a missing, truncated or foreign file."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} does not exist: give the path of a ckpt.pt written by train.py")
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}): it is truncated or not a "
                         f"train.py checkpoint; use the run folder's ckpt.pt")
    if not isinstance(ckpt, dict) or not {"model", "model_config"} <= set(ckpt):
        raise ValueError(f"checkpoint {path} has no 'model'/'model_config': it was not written by train.py")
    return ckpt



def data_changed(ckpt, fingerprint, data):
    """--resume: one line if the content of --data (data.fingerprint) is not what the checkpoint was trained on, else
    None (also for a checkpoint from before fingerprints)."""
    was = ckpt.get("data_fingerprint")
    if was and was != fingerprint:
        return (f"--resume: --data {data} is not the data this run was trained on (content sha1 {fingerprint[:12]}, the "
                f"checkpoint's {was[:12]}): it changed since (sim.py --extend, regenerated, replaced); resume with the data "
                f"as it was, or train on the new data in a new run (another --out)")
    return None
