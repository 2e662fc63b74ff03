"""--train-vision and --dual-encoder (vision.py): which weights learn, the dual's start, checkpoints, train.py.
    python -m pytest -q tests/test_vision.py"""
import json
import os
from dataclasses import asdict

import numpy as np
import pytest
import torch

from backbone import Backbone
from model import Policy, make_config
from test_policy import CAMS, batch_of
from test_train import FAST, bad, rows, train


def float32(name, **kw):
    """A backbone without the CPU's bf16 autocast (RSCL_CPU_BF16=0): E and E' then compute in the same precision."""
    old = os.environ.get("RSCL_CPU_BF16")
    os.environ["RSCL_CPU_BF16"] = "0"
    try:
        return Backbone(name, **kw)
    finally:
        os.environ.pop("RSCL_CPU_BF16") if old is None else os.environ.__setitem__("RSCL_CPU_BF16", old)


@pytest.fixture(scope="module")
def tiny():
    return float32("tiny")


@pytest.fixture(scope="module")
def dino():   # the real dinov2-s architecture, random weights: no file needed
    return float32("dinov2-s", weights="random")


def grads_after_one_step(policy, synthetic, **kw):
    policy.train()
    b, feats, mask, views, q, A = batch_of(policy, synthetic)
    out = policy(feats, mask, views, q, A, pixels=(b["images"], b["instructions"]), **kw)
    (out["loss_fm"] + out.get("loss_rscl", 0.0)).backward()
    return out


@pytest.mark.parametrize("mode", ["train", "dual"])
@pytest.mark.parametrize("family", ["tiny", "dino"])
def test_only_the_copy_learns_and_the_frozen_encoder_gets_no_gradient(mode, family, tiny, dino, synthetic):
    backbone = {"tiny": tiny, "dino": dino}[family]
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    torch.manual_seed(0)
    policy = Policy(make_config(backbone=backbone.name, image_size=32, token_pool=backbone.pool, vision=mode),
                    backbone=backbone)
    grads_after_one_step(policy, synthetic, rscl="proprio")
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())      # E: frozen
    enc = list(policy.vision.encoder.parameters())
    assert all(p.requires_grad for p in enc) and sum(p.grad is not None and p.grad.abs().max() > 0 for p in enc) > len(enc) // 2
    if mode == "dual":
        assert policy.vision.fuse.weight.grad.abs().max() > 0
    else:
        assert policy.vision.fuse is None
    # E' is a copy (its own tensors), started from E's weights; E is unchanged by the step
    src = backbone.model.visual if family == "tiny" else backbone.model
    copy_sd = policy.vision.encoder.state_dict()
    assert all(torch.equal(copy_sd[k].float(), v.float()) for k, v in src.state_dict().items())
    assert not any(a.data_ptr() == b.data_ptr() for a, b in zip(enc, src.parameters()))
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())
    # the frozen encoder's own path is back in place after the trainable pass (Qwen2.5-VL swaps its tower)
    assert backbone.model.visual is src if family == "tiny" else backbone.model is src
    policy.zero_grad(set_to_none=True)


@pytest.mark.parametrize("family", ["tiny", "dino"])
def test_dual_encoder_starts_from_exactly_the_frozen_features(family, tiny, dino, synthetic):
    backbone = {"tiny": tiny, "dino": dino}[family]
    policy = Policy(make_config(backbone=backbone.name, image_size=32, token_pool=backbone.pool, vision="dual"),
                    backbone=backbone).eval()
    b, feats, mask, views, q, A = batch_of(policy, synthetic)
    with torch.no_grad():
        f, m, v = policy.vision(backbone, b["images"], b["instructions"], frozen=(feats, mask, views))
        f1, m1, v1 = policy.vision.features(backbone, b["images"], b["instructions"])     # E' alone
    assert torch.equal(m, mask) and torch.equal(v, views) and torch.equal(m1, mask)
    assert torch.allclose(f1, feats, atol=1e-5)                        # E' = E at step 0 (same layout, too)
    assert torch.allclose(f, feats, atol=1e-5)                         # W [f ; f] = f: the baseline's input
    W = policy.vision.fuse.weight
    assert torch.equal(W, torch.eye(backbone.dim).repeat(1, 2) / 2) and not policy.vision.fuse.bias.any()
    with torch.no_grad():                                              # the rule, on other inputs: [a ; c] -> (a + c) / 2
        a, c = torch.randn(3, backbone.dim), torch.randn(3, backbone.dim)
        assert torch.allclose(policy.vision.fuse(torch.cat([a, c], -1)), (a + c) / 2, atol=1e-6)


@pytest.mark.parametrize("mode", ["train", "dual"])
def test_checkpoint_round_trip_restores_the_trained_encoder(mode, tiny, synthetic, tmp_path):
    policy = Policy(make_config(image_size=32, vision=mode), backbone=tiny)
    with torch.no_grad():
        for p in policy.vision.parameters():
            p.add_(0.01 * torch.randn_like(p))                         # "trained": no longer the backbone's copy
    b, *_ = batch_of(policy, synthetic)
    state = policy.trainable_state_dict()
    assert any(k.startswith("vision.encoder.") for k in state) and not any(k.startswith("backbone.") for k in state)
    torch.save(dict(model=state, model_config=asdict(policy.cfg)), tmp_path / "c.pt")
    back = Policy.from_checkpoint(str(tmp_path / "c.pt"), backbone=tiny)
    assert back.cfg.vision == mode
    for k, v in policy.vision.state_dict().items():
        assert torch.equal(back.vision.state_dict()[k], v), k
    torch.manual_seed(3); a1 = policy.eval().predict(b["images"], b["q"], b["instructions"])
    torch.manual_seed(3); a2 = back.predict(b["images"], b["q"], b["instructions"])
    assert torch.equal(a1, a2)
    frozen = Policy(make_config(image_size=32), backbone=tiny)
    with pytest.raises(ValueError, match="does not fit"):              # a frozen-encoder policy cannot take it
        frozen.load_trainable(state)


def test_train_and_resume_with_the_dual_encoder(synthetic, tmp_path):
    run, whole = str(tmp_path / "run"), str(tmp_path / "whole")
    common = ["--data", synthetic, "--dual-encoder", "--rscl", "--max-iters", "4", *FAST, "--vision-lr", "3e-5"]
    r = train(*common, "--out", run, "--stop-after", "2")
    assert r.returncode == 0, r.stderr
    assert train(*common, "--out", run, "--resume").returncode == 0
    assert train(*common, "--out", whole).returncode == 0
    assert [x["loss_fm"] for x in rows(run)] == [x["loss_fm"] for x in rows(whole)]   # exact resume, E' included
    ckpt = torch.load(os.path.join(run, "ckpt.pt"), weights_only=True)
    assert ckpt["model_config"]["vision"] == "dual" and ckpt["config"]["vision_lr"] == 3e-5
    groups = ckpt["optimizer"]["param_groups"]
    enc = [g for g in groups if g["lr_scale"] != 1.0]
    assert len(groups) == 4 and len(enc) == 2 and all(np.isclose(g["lr_scale"], 3e-5 / 1e-4) for g in enc)
    policy = Policy.from_checkpoint(os.path.join(run, "ckpt.pt"))
    assert sum(len(g["params"]) for g in enc) == len(list(policy.vision.encoder.parameters()))
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in policy.parameters())


def test_train_vision_run_and_its_default_lr(synthetic, tmp_path):
    run = str(tmp_path / "run")
    r = train("--data", synthetic, "--train-vision", "--max-iters", "2", *FAST, "--out", run, "--cknna-every", "2")
    assert r.returncode == 0, r.stderr
    evals = [json.loads(l) for l in open(os.path.join(run, "log.jsonl")) if "val_cknna_h_q" in l]
    assert len(evals) == 1   # CKNNA reads h through E' (it once read the skipped frozen features and failed)
    ckpt = torch.load(os.path.join(run, "ckpt.pt"), weights_only=True)
    assert ckpt["model_config"]["vision"] == "train" and ckpt["config"]["vision_lr"] == 1e-5   # --lr / 10
    assert not any(k.startswith("vision.fuse") for k in ckpt["model"])


def test_bad_vision_flags(synthetic, tmp_path):
    out = ["--out", str(tmp_path / "r")]
    bad(train("--data", synthetic, "--train-vision", "--dual-encoder", *out), "--train-vision", "--dual-encoder")
    bad(train("--data", synthetic, "--dual-encoder", "--cache-features", *out), "--cache-features", "--dual-encoder")
    bad(train("--data", synthetic, "--train-vision", "--cache-features", *out), "--cache-features", "--train-vision")
    bad(train("--data", synthetic, "--vision-lr", "1e-5", *out), "--vision-lr", "--train-vision or --dual-encoder")
    bad(train("--data", synthetic, "--dual-encoder", "--vision-lr", "-1", *out), "--vision-lr", ">= 0")
    assert not (tmp_path / "r").exists()
