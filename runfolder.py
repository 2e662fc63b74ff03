"""
A run's folder (train.py): nothing is lost, nothing half-written is taken for whole.

A new run writes into a folder of its own, NAME.incomplete-XXXX beside NAME, which takes NAME's place at its first
checkpoint; a start that fails, is stopped (Ctrl-C, `kill`) or hits a NaN before that leaves nothing. With
--overwrite the old NAME is moved into the new folder at that moment, then deleted, so no name of the user's
(NAME.old, NAME.new) is ever touched. Checkpoints are written to a temporary name and renamed (atomic).
A resumed run writes into NAME itself. swap_in does the same for evaluate.py's and cknna.py's output folders.
folder_problem and changed_flags check a start or a resume before anything is written; load_checkpoint reads a
checkpoint back, with one clear line for a missing, truncated or foreign file.
"""
import atexit
import json
import os
import shutil
import signal
import sys
import tempfile

import torch


def swap_in(new, out):
    """Replace folder `out` by folder `new`, never a mix of both: the old one goes aside into `new` (a name of ours,
    so nothing of the user's is touched), `new` takes out's name, then the old one is deleted."""
    if os.path.exists(out):
        os.rename(out, os.path.join(new, "replaced"))
    os.rename(new, out)
    shutil.rmtree(os.path.join(out, "replaced"), ignore_errors=True)


class RunFolder:
    def __init__(self, out, resume, saved_step=0):
        self.out, self.dir, self.saved = out, out, saved_step if resume else 0

    def start(self, config):
        """A new run: its own folder, removed at exit unless a checkpoint was saved; config.json in it."""
        os.makedirs(os.path.dirname(self.out) or ".", exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix=os.path.basename(self.out) + ".incomplete-", dir=os.path.dirname(self.out) or ".")
        atexit.register(self.discard)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # `kill`: exit through atexit, like Ctrl-C
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump(config, f, indent=1)

    def save(self, state, step):
        """ckpt.pt written atomically (a crash never leaves a half-written one); a new run's folder becomes out."""
        path = os.path.join(self.dir, "ckpt.pt")
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)
        if self.dir != self.out:   # the run it replaces (--overwrite), if any, goes aside into the new folder
            swap_in(self.dir, self.out)
            self.dir = self.out
        self.saved = step

    def discard(self):   # a new run that stops before its first checkpoint leaves nothing
        if not self.saved:
            shutil.rmtree(self.dir, ignore_errors=True)


def folder_problem(out, data, resume, overwrite):
    """What is wrong with starting a run in folder out (one line, for train.py to print), or None."""
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

