"""--align (Don't Blind Your VLA): the loss, the frozen projector, the teacher's grid, the cache, checkpoints, train.py.
    python -m pytest -q tests/test_align.py"""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from align import batch_targets, grid_side, resample, teacher_targets, view_tokens
from backbone import Backbone
from data import DemoDataset, collate
from features import build_cache, cache_key
from loss import align_loss
from model import Policy, make_config
from test_policy import CAMS, batch_of
from test_train import FAST, bad, rows, train



# --- the loss ---

def test_align_loss_is_the_formula_and_minus_one_at_the_teacher():
    torch.manual_seed(0)
    p, t = torch.randn(2, 5, 6).double(), torch.randn(2, 5, 6).double()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    cos = [float(p[b, m] @ t[b, m] / (p[b, m].norm() * t[b, m].norm())) for b in range(2) for m in range(5) if mask[b, m]]
    assert abs(float(align_loss(p, t, mask)) - (-sum(cos) / len(cos))) < 1e-12           # mean over the 8 real tokens
    assert abs(float(align_loss(p, t)) - float(-F.cosine_similarity(p, t, dim=-1).mean())) < 1e-12
    assert float(align_loss(p, p.clone(), mask)) == -1.0                                  # the teacher = P(h)
    assert abs(float(align_loss(p, 3 * p)) + 1) < 1e-12 and abs(float(align_loss(p, -p)) - 1) < 1e-12   # scale-free


# --- the teacher's grid, matched view by view ---

def test_view_tokens_take_each_views_slice_wherever_it_starts():
    x = torch.arange(2 * 12, dtype=torch.float32).view(2, 12, 1)             # token value = its position (+ 12 b)
    views = torch.tensor([[[1, 5], [6, 10]], [[3, 7], [8, 12]]])              # other starts per sample (text)
    got = view_tokens(x, views, 4)[..., 0]
    assert got.shape == (2, 2, 4)
    assert torch.equal(got[0], torch.tensor([[1., 2, 3, 4], [6, 7, 8, 9]]))
    assert torch.equal(got[1], 12 + torch.tensor([[3., 4, 5, 6], [8, 9, 10, 11]]))


def test_teacher_grid_is_resampled_to_each_views_token_grid():
    # teacher: 4 x 4 patches per view; policy: 2 x 2 tokens per view -> each token is the mean of a 2 x 2 block
    B, V, D_t = 2, 3, 2
    grid = torch.randn(B, V, 4, 4, D_t)
    feats = torch.cat([torch.zeros(B, 2, D_t), grid.view(B, V * 16, D_t)], 1)   # 2 text tokens, then the views
    views = torch.stack([torch.arange(V) * 16 + 2, torch.arange(V) * 16 + 18], -1).expand(B, V, 2)
    t = teacher_targets(feats, views, 16, 4)
    assert t.shape == (B, V * 4, D_t)
    expected = grid.view(B, V, 2, 2, 2, 2, D_t).mean((3, 5))                    # (B, V, row, col, D_t)
    assert torch.allclose(t, expected.reshape(B, V * 4, D_t), atol=1e-6)
    assert torch.equal(resample(grid.view(B, V, 16, D_t), 16), grid.view(B, V, 16, D_t))   # same grid: unchanged
    up = resample(torch.ones(B, V, 4, D_t) * torch.arange(V)[None, :, None, None], 16)     # 2 x 2 -> 4 x 4
    assert up.shape == (B, V, 16, D_t) and torch.allclose(up, torch.arange(V).float()[None, :, None, None].expand_as(up))
    # a non-square (a 3 x 3 -> 6 x 6 bilinear) case against F.interpolate written out per view
    small = torch.randn(1, 1, 9, D_t)
    ref = F.interpolate(small.view(1, 3, 3, D_t).permute(0, 3, 1, 2), size=(6, 6), mode="bilinear", align_corners=False)
    assert torch.allclose(resample(small, 36), ref.permute(0, 2, 3, 1).reshape(1, 1, 36, D_t), atol=1e-6)
    assert grid_side(49, "x") == 7
    with pytest.raises(ValueError, match="not a square grid"):
        resample(torch.randn(1, 1, 6, D_t), 4)


# --- the frozen projector in the policy ---

@pytest.fixture(scope="module")
def tiny():
    return Backbone("tiny")


def test_projector_is_frozen_seeded_outside_the_optimizer_and_only_in_training(tiny, synthetic):
    torch.manual_seed(0)
    base = Policy(make_config(image_size=32), backbone=tiny)
    torch.manual_seed(0)
    policy = Policy(make_config(image_size=32, align_dim=24), backbone=tiny)
    for (n, a), (_, b_) in zip(base.named_parameters(), (kv for kv in policy.named_parameters() if "align_proj" not in kv[0])):
        assert torch.equal(a, b_), n                                   # P drew nothing from the run's RNG stream
    torch.manual_seed(5)
    again = Policy(make_config(image_size=32, align_dim=24), backbone=tiny)
    other = Policy(make_config(image_size=32, align_dim=24, align_seed=1), backbone=tiny)
    P = policy.align_proj.state_dict()
    assert all(torch.equal(P[k], v) for k, v in again.align_proj.state_dict().items())   # the seed fixes P
    assert not torch.equal(P["1.weight"], other.align_proj.state_dict()["1.weight"])
    assert [type(m).__name__ for m in policy.align_proj] == ["LayerNorm", "Linear", "SiLU", "Linear", "SiLU", "Linear"]
    assert policy.align_proj[1].in_features == 128 and policy.align_proj[1].out_features == 512   # tiny: hidden 512
    trainable = {id(p) for p in policy.parameters() if p.requires_grad}   # what train.py gives the optimizer
    assert not any(id(p) in trainable for p in policy.align_proj.parameters())
    policy.train()
    assert not policy.align_proj.training

    b, feats, mask, views, q, A = batch_of(policy, synthetic)
    n = tiny.tokens_per_view(32)
    t = torch.randn(4, 3 * n, 24)
    torch.manual_seed(1)
    out = policy(feats, mask, views, q, A, teacher=t)
    torch.manual_seed(1)
    assert torch.equal(out["loss_fm"], policy(feats, mask, views, q, A)["loss_fm"])   # the action path is untouched
    assert "loss_align" not in policy(feats, mask, views, q, A)                       # no teacher, no alignment
    out["loss_align"].backward()
    assert all(p.grad is None for p in policy.align_proj.parameters())               # frozen: no gradient
    assert policy.adapter.blocks[-1].mlp[0].weight.grad.abs().max() > 0             # ... but through it, to h
    assert policy.dit.head.weight.grad is None                                        # the DiT is not in its path
    policy.zero_grad(set_to_none=True)
    # the value: P(h) at each view's tokens against t, by hand
    policy.eval()
    h, _ = policy.adapter(feats, mask)
    hv = torch.stack([h[b, s:e] for b in range(4) for s, e in views[b].tolist()]).view(4, 3 * n, -1)
    cos = F.cosine_similarity(policy.align_proj(hv), t, dim=-1)
    out = policy(feats, mask, views, q, A, teacher=t)
    assert torch.allclose(out["loss_align"], -cos.mean(), atol=1e-6) and torch.equal(out["align_cos"], -out["loss_align"])
    with torch.no_grad():                                              # exactly -1 when the teacher is P(h) itself
        assert abs(float(policy(feats, mask, views, q, A, teacher=policy.align_proj(hv))["align_cos"]) - 1) < 1e-6


def test_checkpoint_round_trip_restores_the_projector_exactly(tiny, synthetic, tmp_path):
    from dataclasses import asdict
    policy = Policy(make_config(image_size=32, align_dim=24, align_seed=3), backbone=tiny)
    with torch.no_grad():
        policy.align_proj[3].weight.add_(1.0)                          # not what the seed gives: saved weights win
    b, *_ = batch_of(policy, synthetic)                                # min-max statistics set before saving
    state = policy.trainable_state_dict()
    assert any(k.startswith("align_proj.") for k in state)
    torch.save(dict(model=state, model_config=asdict(policy.cfg)), tmp_path / "c.pt")
    back = Policy.from_checkpoint(str(tmp_path / "c.pt"), backbone=tiny)
    assert back.cfg.align_dim == 24 and back.cfg.align_seed == 3
    for k, v in policy.align_proj.state_dict().items():
        assert torch.equal(back.align_proj.state_dict()[k], v), k
    assert not any(p.requires_grad for p in back.align_proj.parameters())
    torch.manual_seed(3); a1 = policy.eval().predict(b["images"], b["q"], b["instructions"])
    torch.manual_seed(3); a2 = back.predict(b["images"], b["q"], b["instructions"])
    assert torch.equal(a1, a2)                                         # inference never reads P
    with pytest.raises(ValueError, match="does not fit"):              # a checkpoint without P does not fit
        Policy(make_config(image_size=32), backbone=tiny).load_trainable(state)


# --- the feature cache ---

def test_cache_holds_the_teachers_targets_and_is_keyed_by_the_teacher(tiny, synthetic, tmp_path):
    ds = DemoDataset(synthetic, CAMS, horizon=16, split="val")
    teacher = Backbone("dinov2-s")                                     # 32 px -> 28: 2 x 2 patches per view
    keys = {cache_key(tiny, ds, "val")[0], cache_key(tiny, ds, "val", teacher)[0],
            cache_key(tiny, ds, "val", Backbone("dinov2-s", layer=6, weights=False))[0]}
    assert len(keys) == 3                                              # no teacher, this teacher, another layer
    cache = build_cache(tiny, ds, str(tmp_path), "val", 8, teacher)
    n, m = tiny.tokens_per_view(32), teacher.tokens_per_view(32)
    assert (n, m) == (1, 4)
    meta = json.load(open(os.path.join(tmp_path, os.listdir(tmp_path)[0], "meta.json")))
    assert meta["teacher"]["name"] == "dinov2-s" and meta["teacher_shape"] == [len(ds), 3 * n, 384]
    items = [ds[i] for i in range(0, len(ds), 5)]
    live = collate(items)
    feats, mask, views = tiny(live["images"], live["instructions"])
    t_live = batch_targets(live, feats, views, tiny, teacher, 32)     # the teacher run on the images
    t_cached = batch_targets(collate([cache[i] for i in range(0, len(ds), 5)]), feats, views, tiny, teacher, 32)
    assert t_live.shape == t_cached.shape == (len(items), 3, 384)
    assert torch.allclose(t_cached, t_live, atol=2e-2 * float(t_live.abs().max()))   # 16-bit storage
    tf, _, tv = teacher(live["images"], live["instructions"])          # 2 x 2 patches of a view -> their mean
    assert torch.allclose(t_live[:, 1], tf[:, 4:8].float().mean(1), atol=1e-5)
    assert torch.equal(batch_targets(live, feats, views, tiny, tiny, 32), feats[:, [7, 10, 13]].float())   # self


# --- train.py ---

def test_train_with_align_and_rscl(synthetic, tmp_path):
    # the teacher is another encoder, run live beside the backbone (its cached form: the test above)
    run = str(tmp_path / "run")
    r = train("--data", synthetic, "--align", "--rscl", "--teacher", "dinov2-s", "--max-iters", "3", "--out", run, *FAST)
    assert r.returncode == 0, r.stderr
    log = rows(run)
    assert [row["step"] for row in log] == [1, 2, 3]
    for row in log:
        assert -1 <= row["align_cos"] <= 1 and row["loss_align"] == -row["align_cos"] and "loss_rscl" in row
    evals = [json.loads(l) for l in open(os.path.join(run, "log.jsonl")) if "val_loss_fm" in l]
    assert "val_align_cos" in evals[0]
    ckpt = torch.load(os.path.join(run, "ckpt.pt"), weights_only=True)
    assert ckpt["config"]["teacher"] == "dinov2-s" and ckpt["config"]["align_weight"] == 0.2
    assert ckpt["model_config"]["align_dim"] == 384 and ckpt["model_config"]["align_seed"] == 0
    assert any(k.startswith("align_proj.") for k in ckpt["model"])
    policy = Policy.from_checkpoint(os.path.join(run, "ckpt.pt"))
    in_opt = sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"])
    assert in_opt == sum(1 for p in policy.parameters() if p.requires_grad)       # P is not in the optimizer
    assert in_opt == len([k for k in ckpt["model"] if not k.startswith("align_proj.") and k not in
                          ("q_min", "q_max", "a_min", "a_max")])


def test_train_with_a_cached_teacher_matches_the_live_teacher(synthetic, tmp_path):
    live, cached = str(tmp_path / "live"), str(tmp_path / "cached")
    common = ["--data", synthetic, "--align", "--teacher", "dinov2-s", "--demos-per-task", "1", "--max-iters", "2",
              *FAST, "--cache-dir", str(tmp_path / "cache")]
    assert train(*common, "--out", live).returncode == 0
    r = train(*common, "--out", cached, "--cache-features")
    assert r.returncode == 0, r.stderr
    meta = [json.load(open(os.path.join(tmp_path, "cache", d, "meta.json"))) for d in os.listdir(tmp_path / "cache")]
    assert len(meta) == 2 and all(m["teacher"]["name"] == "dinov2-s" for m in meta)   # train and val, keyed by it
    for a, b in zip(rows(live), rows(cached)):   # the same batches; only the 16-bit storage differs
        assert abs(a["loss_align"] - b["loss_align"]) < 1e-2                 # a cosine: an absolute tolerance
        assert abs(a["loss_fm"] - b["loss_fm"]) < 1e-2 * a["loss_fm"]
    assert any(a["loss_align"] != b["loss_align"] for a, b in zip(rows(live), rows(cached)))   # really from the cache


def test_bad_align_flags(synthetic, tmp_path):
    out = ["--out", str(tmp_path / "r")]
    bad(train("--data", synthetic, "--align", "--align-weight", "-1", *out), "--align-weight", "-1")
    bad(train("--data", synthetic, "--align-weight", "0.5", *out), "--align-weight", "--align is not")
    bad(train("--data", synthetic, "--teacher", "dinov2-s", *out), "--teacher", "--align is not")
    bad(train("--data", synthetic, "--align", "--teacher", "clip", *out), "clip", "dinov2-s")
    wide = str(tmp_path / "wide.hdf5")                                 # 32 x 24 images: no square grid
    shutil.copy(synthetic, wide)
    with h5py.File(wide, "a") as f:
        for demo in f["data"].values():
            for k in [k for k in demo["obs"] if k.endswith("_image")]:
                crop = np.ascontiguousarray(demo["obs"][k][:, :, :24])
                del demo["obs"][k]
                demo["obs"][k] = crop
    bad(train("--data", wide, "--align", *out), "square")
    assert not (tmp_path / "r").exists()
