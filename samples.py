"""
What the two demo readers share: data.DemoDataset (HDF5 files) and lerobot_data.LeRobotDemos (LeRobot datasets) split
their demos per task the same way, and index the same samples, one per timestep. A reader holds, per demo d,
tasks[d], q[d] (T, 10) and actions[d] (T, a); index = [(d, t), ...] (one sample each); H, the action horizon. Each
takes task_groups, stats and chunk as its methods (`task_groups, stats, chunk = samples.task_groups, ...`): one
definition for both, and no inheritance.
"""
import numpy as np

from layouts import DataError, minmax_stats


# -----------------------------------------------------------------------------
# which demos: the per-task split

def split_by_task(names, tasks, split, val_frac=0.1, max_demos=0, where="data"):
    """Names of a split, chosen per task so that every task is in both splits: of each task's demos (in the given
    order) the last round(val_frac * n) (at least 1 when n > 1) are validation, the first `max_demos` of the rest
    (0 = all) are training. 'all' is every demo. Returns them in the given order; an empty split -> DataError."""
    by_task = {}
    for name, task in zip(names, tasks):
        by_task.setdefault(task, []).append(name)
    out = set()
    for group in by_task.values():
        n_val = max(1, int(round(len(group) * val_frac))) if len(group) > 1 and val_frac > 0 else 0
        train = group[:len(group) - n_val][:max_demos or None]
        out |= set({"train": train, "val": group[len(group) - n_val:], "all": group}[split])
    if not out:   # one demo per task: no validation demo (or no training one) to draw from
        raise DataError(f"{where}: the {split} split is empty ({len(names)} demo(s) in "
                        f"{len(by_task)} task(s)): every task needs at least 2 demos, one for validation: collect more")
    return [n for n in names if n in out]


# -----------------------------------------------------------------------------
# the sample index (methods of both readers)

def task_groups(self):
    """Sample indices of each task: {task: int array}, for task-balanced batches."""
    sample_task = np.array([self.tasks[d] for d, _ in self.index])
    return {t: np.flatnonzero(sample_task == t) for t in dict.fromkeys(self.tasks)}


def stats(self):
    """Min-max statistics of q and actions over this split (plain lists, for the checkpoint; see minmax_stats)."""
    return minmax_stats(np.concatenate(self.q), np.concatenate(self.actions))


def chunk(self, d, t):
    """A (H, a): actions t .. t+H-1, the last action repeated past the end of the demo."""
    acts = self.actions[d]
    idx = np.minimum(np.arange(t, t + self.H), len(acts) - 1)
    return acts[idx]
