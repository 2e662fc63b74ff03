"""Data splits and batch sampling: every task is in both splits, and balanced batches draw tasks equally."""
import h5py
import numpy as np

from data import Batches, DemoDataset, write_synthetic

CAMS = ["agentview"]


def multi_task_file(tmp_path):
    """15 demos written task by task (a, b, c: 5 each), as the collector writes them."""
    return write_synthetic(str(tmp_path / "multi.hdf5"), n_demos=15, T=12, image_size=16, cameras=CAMS,
                           tasks=("a", "b", "c"))


def test_every_task_is_in_both_splits_and_the_splits_are_disjoint(tmp_path):
    path = multi_task_file(tmp_path)
    train = DemoDataset(path, CAMS, split="train", val_frac=0.2)
    val = DemoDataset(path, CAMS, split="val", val_frac=0.2)
    everything = DemoDataset(path, CAMS, split="all")
    assert sorted(set(train.tasks)) == sorted(set(val.tasks)) == ["a", "b", "c"]
    assert not set(train.demos) & set(val.demos)
    assert sorted(train.demos + val.demos, key=lambda k: int(k[5:])) == everything.demos
    # per task, the last demo (20% of 5) is validation: demos 4, 9 and 14
    assert val.demos == ["demo_4", "demo_9", "demo_14"]
    with h5py.File(path) as f:
        assert [f["data"][d].attrs["task"] for d in val.demos] == ["a", "b", "c"]


def test_demos_per_task_caps_each_tasks_training_demos(tmp_path):
    path = multi_task_file(tmp_path)
    train = DemoDataset(path, CAMS, split="train", val_frac=0.2, max_demos=2)
    assert train.demos == ["demo_0", "demo_1", "demo_5", "demo_6", "demo_10", "demo_11"]
    val = DemoDataset(path, CAMS, split="val", val_frac=0.2, max_demos=2)
    assert val.demos == ["demo_4", "demo_9", "demo_14"]     # the cap never moves validation demos


def test_balanced_batches_draw_each_task_equally_often(tmp_path):
    path = multi_task_file(tmp_path)
    ds = DemoDataset(path, CAMS, split="all")
    # make task "a" 10x rarer in timesteps: keep only its first demo's samples in the index
    ds.index = [(d, t) for d, t in ds.index if ds.tasks[d] != "a" or ds.demos[d] == "demo_0"]
    groups = ds.task_groups()
    assert {t: len(g) for t, g in groups.items()} == {"a": 12, "b": 60, "c": 60}
    src = list(range(len(ds.index)))                      # sample i -> its own index, to read back the draw
    task_of_sample = np.array([ds.tasks[d] for d, _ in ds.index])
    for mode in ("balanced", "uniform"):
        counts = {t: 0 for t in "abc"}
        b = Batches(IndexSource(src), 64, seed=0, n_batches=50, groups=groups if mode == "balanced" else None)
        for k in range(len(b)):
            for i in b[k]["i"].tolist():
                counts[task_of_sample[i]] += 1
        share_a = counts["a"] / sum(counts.values())
        if mode == "balanced":
            assert abs(share_a - 1 / 3) < 0.03, counts
        else:
            assert abs(share_a - 12 / 132) < 0.03, counts


class IndexSource:
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return dict(i=np.array(self.items[i]), instruction="")
