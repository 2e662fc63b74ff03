"""
The frozen backbone's features, computed once and memory-mapped.

The VLM is frozen and view cutoff acts after it, so its output for a sample is the same at every
epoch: run it once over the data set, store the features in 16 bits with each view's token slice,
and train the adapter and DiT from the file. This removes most of the cost of a training step.

    python train.py --rscl --cache-features      # builds data/cache/<key>/ on first use, then trains from it

The key covers everything the features depend on: backbone, layer, cameras, image size, prompt
and the data file's content (sha1), and the split. Not allowed with image augmentation (the
images, hence the features, change at every step) nor with a trainable backbone.

With --align and a teacher other than the backbone, the frozen teacher's features go beside the
backbone's (teacher.f16), already matched to the backbone's token grid (align.teacher_targets); the
teacher (name, layer, pooling) is then part of the key, so a cache made with another teacher, or
none, is never reused for it. A teacher that is the backbone itself needs nothing stored.
"""
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import torch
from tqdm import tqdm

from align import teacher_targets
from data import fingerprint
from output import writing


def cache_key(backbone, ds, split, teacher=None):
    spec = dict(backbone=backbone.name, layer=backbone.layer, pool=backbone.pool, cameras=ds.cameras, image_shape=list(ds.image_shape),
                data=fingerprint(ds),   # the file's sha1; a LeRobot folder has its own
                split=split, demos=ds.demos, version=2)
    if getattr(ds, "flip", "none") != "none":   # flipped frames give other features (only then: old keys stay valid)
        spec["flip"] = ds.flip
    if getattr(backbone, "cpu_bf16", False):     # bf16 features on a CPU differ from float32 ones by ~0.6%
        spec["cpu_bf16"] = True
    if teacher is not None:                      # only then: the keys of caches without a teacher stay valid
        spec["teacher"] = dict(name=teacher.name, layer=teacher.layer, pool=teacher.pool, cpu_bf16=teacher.cpu_bf16)
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16], spec


class CacheError(Exception):
    """A cache folder that is incomplete or damaged; build_cache rebuilds it."""


class FeatureCache:
    """Sample i of `ds` -> dict(feats (N, D) float16, mask (N,), views (V, 2), q, A, instruction
    [, teacher (V*n, D_t) float16 when built with a teacher]). Same order and same q, A as the DemoDataset."""

    def __init__(self, folder, ds):
        """CacheError if any file is missing, truncated or of the wrong shape: never taken as whole."""
        try:
            meta = json.load(open(os.path.join(folder, "meta.json")))
            S, N, D = meta["shape"]
            self.feats = _memmap(folder, "feats.f16", (S, N, D))
            self.teacher = _memmap(folder, "teacher.f16", meta["teacher_shape"]) if "teacher_shape" in meta else None
            self.mask = np.load(os.path.join(folder, "mask.npy"))       # (S, N) bool
            self.views = np.load(os.path.join(folder, "views.npy"))     # (S, V, 2) int64
            if S != len(ds) or self.mask.shape != (S, N) or self.views.shape != (S, len(ds.cameras), 2):
                raise ValueError(f"shapes {self.mask.shape}, {self.views.shape} do not fit {len(ds)} samples of N = {N}")
        except (OSError, ValueError, KeyError, TypeError) as e:   # json errors are ValueErrors
            raise CacheError(f"{folder}: {type(e).__name__}: {str(e)[:120]}") from None
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        d, t = self.ds.index[i]
        item = dict(feats=np.asarray(self.feats[i]), mask=self.mask[i], views=self.views[i], q=self.ds.q[d][t],
                    A=self.ds.chunk(d, t), instruction=self.ds.instructions[d])
        if self.teacher is not None:
            item["teacher"] = np.asarray(self.teacher[i])
        return item


def _memmap(folder, name, shape):
    """A float16 file of this shape, read-only; ValueError if its size is not that."""
    path, size = os.path.join(folder, name), int(np.prod(shape)) * 2
    if os.path.getsize(path) != size:
        raise ValueError(f"{name} holds {os.path.getsize(path)} bytes, not {size}")
    return np.memmap(path, dtype=np.float16, mode="r", shape=tuple(shape))


@torch.no_grad()
def build_cache(backbone, ds, root, split, batch_size=32, teacher=None):
    """Run the frozen backbone once over ds (with a progress bar) and return a FeatureCache.
    teacher: another frozen Backbone whose features, matched to the backbone's grid, are stored too (--align).
    Written to a temporary folder and renamed, so an interrupted build leaves nothing half-made; a folder
    damaged later (a file deleted or truncated) is detected on opening and rebuilt."""
    key, spec = cache_key(backbone, ds, split, teacher)
    folder = os.path.join(root, key)
    if os.path.exists(folder):
        try:
            return FeatureCache(folder, ds)
        except CacheError as e:
            print(f"note: feature cache {e}: rebuilding it", file=sys.stderr)
    tmp = f"{folder}.tmp{os.getpid()}"   # per process: two runs building one key do not share a folder
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(root, "--cache-dir"):   # an unwritable --cache-dir: one line, before anything is computed
        os.makedirs(tmp)
    try:
        with writing(root, "--cache-dir"):   # a full disk: one line (the data, checked when opened, is only read)
            return _build(backbone, ds, spec, folder, tmp, split, batch_size, teacher)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # an interrupted or failed build leaves nothing


def _build(backbone, ds, spec, folder, tmp, split, batch_size, teacher=None):
    """The build itself: every file into tmp, meta.json last, then tmp renamed to folder."""
    # the longest prompt fixes N: every view has the same number of tokens, only the text varies
    dummy = np.zeros((1, len(ds.cameras), *ds.image_shape), np.uint8)
    longest = ds.instructions[0] if backbone.family != "qwen2.5-vl" else max(   # vision-only: no text tokens
        set(ds.instructions), key=lambda s: len(backbone.prepare(dummy, [s])["input_ids"][0]))
    f0, _, _ = backbone(dummy, [longest])
    N, D, S = f0.shape[1], f0.shape[2], len(ds)
    feats = np.memmap(os.path.join(tmp, "feats.f16"), dtype=np.float16, mode="w+", shape=(S, N, D))
    mask = np.zeros((S, N), bool)
    views = np.zeros((S, len(ds.cameras), 2), np.int64)
    if teacher is not None:   # per view: m teacher tokens -> the backbone's n
        m_t, n_t = teacher.tokens_per_view(ds.image_shape[0]), backbone.tokens_per_view(ds.image_shape[0])
        spec["teacher_shape"] = [S, len(ds.cameras) * n_t, teacher.dim]
        t_all = np.memmap(os.path.join(tmp, "teacher.f16"), dtype=np.float16, mode="w+", shape=tuple(spec["teacher_shape"]))
    for s in tqdm(range(0, S, batch_size), desc=f"caching {backbone.name} features ({split})", unit="batch"):
        items = [ds[i] for i in range(s, min(S, s + batch_size))]
        images = np.stack([it["images"] for it in items])
        f, m, v = backbone(images, [it["instruction"] for it in items])    # (b, n, D), (b, n), (b, V, 2)
        n = f.shape[1]
        feats[s:s + len(items), :n] = f.float().cpu().numpy().astype(np.float16)
        feats[s:s + len(items), n:] = 0
        mask[s:s + len(items), :n] = m.cpu().numpy()
        views[s:s + len(items)] = v.cpu().numpy()
        if teacher is not None:
            tf, _, tv = teacher(images, [it["instruction"] for it in items])    # (b, N_t, D_t), _, (b, V, 2)
            t_all[s:s + len(items)] = teacher_targets(tf.float(), tv, m_t, n_t).cpu().numpy().astype(np.float16)
    feats.flush()
    if teacher is not None:
        t_all.flush()
    np.save(os.path.join(tmp, "mask.npy"), mask)
    np.save(os.path.join(tmp, "views.npy"), views)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(dict(spec, shape=[S, N, D]), f)
    shutil.rmtree(folder, ignore_errors=True)   # a damaged one
    os.replace(tmp, folder)
    return FeatureCache(folder, ds)
