"""
The frozen backbone's features, computed once and memory-mapped.

The VLM is frozen and view cutoff acts after it, so its output for a sample is the same at every
epoch: run it once over the data set, store the features in 16 bits with each view's token slice,
and train the adapter and DiT from the file. This removes most of the cost of a training step.

    python train.py --rscl --cache-features      # builds data/cache/<key>/ on first use, then trains from it

The key covers everything the features depend on: backbone, layer, cameras, image size, prompt
and the data file's content (sha1), and the split. Not allowed with image augmentation (the
images, hence the features, change at every step) nor with a trainable backbone.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import torch
from tqdm import tqdm


def file_sha1(path, block=1 << 24):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def cache_key(backbone, ds, split):
    spec = dict(backbone=backbone.name, layer=backbone.layer, pool=backbone.pool, cameras=ds.cameras, image_shape=list(ds.image_shape),
                data=file_sha1(ds.path), split=split, demos=ds.demos, version=2)
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16], spec


class FeatureCache:
    """Sample i of `ds` -> dict(feats (N, D) float16, mask (N,), views (V, 2), q, A, instruction).
    Same order and same q, A as the DemoDataset it was built from."""

    def __init__(self, folder, ds):
        meta = json.load(open(os.path.join(folder, "meta.json")))
        S, N, D = meta["shape"]
        self.ds = ds
        self.feats = np.memmap(os.path.join(folder, "feats.f16"), dtype=np.float16, mode="r", shape=(S, N, D))
        self.mask = np.load(os.path.join(folder, "mask.npy"))       # (S, N) bool
        self.views = np.load(os.path.join(folder, "views.npy"))     # (S, V, 2) int64
        assert S == len(ds), "cache and data set disagree"

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        d, t = self.ds.index[i]
        return dict(feats=np.asarray(self.feats[i]), mask=self.mask[i], views=self.views[i], q=self.ds.q[d][t],
                    A=self.ds.chunk(d, t), instruction=self.ds.instructions[d])


@torch.no_grad()
def build_cache(backbone, ds, root, split, batch_size=32):
    """Run the frozen backbone once over ds (with a progress bar) and return a FeatureCache.
    Written to a temporary folder and renamed, so an interrupted build leaves nothing half-made."""
    key, spec = cache_key(backbone, ds, split)
    folder = os.path.join(root, key)
    if os.path.isfile(os.path.join(folder, "meta.json")):
        return FeatureCache(folder, ds)
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    # the longest prompt fixes N: every view has the same number of tokens, only the text varies
    dummy = np.zeros((1, len(ds.cameras), *ds.image_shape), np.uint8)
    longest = ds.instructions[0] if backbone.family != "qwen2.5-vl" else max(   # vision-only: no text tokens
        set(ds.instructions), key=lambda s: len(backbone.prepare(dummy, [s])["input_ids"][0]))
    f0, _, _ = backbone(dummy, [longest])
    N, D, S = f0.shape[1], f0.shape[2], len(ds)
    feats = np.memmap(os.path.join(tmp, "feats.f16"), dtype=np.float16, mode="w+", shape=(S, N, D))
    mask = np.zeros((S, N), bool)
    views = np.zeros((S, len(ds.cameras), 2), np.int64)
    for s in tqdm(range(0, S, batch_size), desc=f"caching {backbone.name} features ({split})", unit="batch"):
        items = [ds[i] for i in range(s, min(S, s + batch_size))]
        images = np.stack([it["images"] for it in items])
        f, m, v = backbone(images, [it["instruction"] for it in items])    # (b, n, D), (b, n), (b, V, 2)
        n = f.shape[1]
        feats[s:s + len(items), :n] = f.float().cpu().numpy().astype(np.float16)
        feats[s:s + len(items), n:] = 0
        mask[s:s + len(items), :n] = m.cpu().numpy()
        views[s:s + len(items)] = v.cpu().numpy()
    feats.flush()
    np.save(os.path.join(tmp, "mask.npy"), mask)
    np.save(os.path.join(tmp, "views.npy"), views)
    json.dump(dict(spec, shape=[S, N, D]), open(os.path.join(tmp, "meta.json"), "w"))
    os.replace(tmp, folder)
    return FeatureCache(folder, ds)
