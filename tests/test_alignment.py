"""Tests for the layer sweep (alignment.py, run as `python cknna.py --layers`): every layer's score equals
cknna on that layer's features computed separately (a backbone cut there), the shuffled baseline sits at chance,
the rank statistics match their definitions.  python -m pytest tests/test_alignment.py -q"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import alignment as al
import cknna as ck
import stats
from backbone import Backbone
from data import DemoDataset, collate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cut_copy(full, k):
    """The backbone cut after layer k, holding exactly full's weights (not a fresh seeded init)."""
    cut = Backbone(full.name, layer=k, pool=full.pool)
    cut.cpu_bf16 = full.cpu_bf16
    prefix = "language_model.layers." if full.family == "qwen2.5-vl" else "encoder.layer."
    cut.model.load_state_dict({n: p for n, p in full.model.state_dict().items()
                               if not n.startswith(prefix) or int(n[len(prefix):].split(".")[0]) < k})
    return cut


def pooled_forward(backbone, batch):
    """Backbone.forward's features, mean over every view's image tokens: (B, D), the separate computation."""
    feats, _, views = backbone(batch["images"], batch["instructions"])
    return torch.stack([torch.cat([feats[b, s:e] for s, e in views[b].tolist()]).float().mean(0) for b in range(len(feats))])


@pytest.fixture(scope="module")
def few(synthetic):
    ds = DemoDataset(synthetic, split="all")
    idx = list(range(0, len(ds), 5))                                      # 24 samples from 6 demos
    return ds, idx, collate([ds[i] for i in idx])


# --- the sweep equals separate computations ---

def test_tiny_every_llm_layer_equals_cknna_of_the_backbone_cut_there(few):
    ds, idx, batch = few
    full = Backbone("tiny", layer=4)
    full.cpu_bf16 = False   # exact float32 here (bf16 autocast, where the CPU has it, is checked below)
    feats = al.layer_features(full, ds, idx, batch_size=7)                 # batches that do not divide N
    assert list(feats) == ["v0", "v1", "v2", "l0", "l1", "l2", "l3", "l4"]
    tgts = al.targets(ds, idx, ds.stats())
    rows = {(r["representation"], r["target"]): r for r in al.score(feats, tgts, 5, "layer")}
    for k in (1, 2, 3, 4):
        sep = al.unit_rows(pooled_forward(cut_copy(full, k), batch))
        assert torch.allclose(feats[f"l{k}"], sep, atol=1e-6)
        for t, Y in tgts.items():
            assert rows[f"l{k}", t]["cknna"] == pytest.approx(ck.cknna(sep, Y, 5), abs=1e-9)
            assert rows[f"l{k}", t]["mutual_knn"] == pytest.approx(ck.mutual_knn(sep, Y, 5), abs=1e-12)
    assert len({round(rows[f"l{k}", "q"]["cknna"], 6) for k in range(1, 5)}) > 1   # the layers do differ


def test_tiny_vision_blocks_and_llm_inputs_match_transformers_hidden_states(few):
    _, _, batch = few
    bb = Backbone("tiny")
    bb.cpu_bf16 = False
    got = bb.layer_features(batch["images"], batch["instructions"])
    B, V = batch["images"].shape[:2]
    inputs = bb.prepare(batch["images"], batch["instructions"])
    with torch.no_grad():
        vis = bb.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"], output_hidden_states=True)
        llm = bb.model(**inputs, use_cache=False, output_hidden_states=True)
    for i, h in enumerate(vis.hidden_states):                              # v0 .. v2 (transformers' own recorder)
        assert torch.allclose(got[f"v{i}"], h.view(B * V, -1, h.shape[-1]).mean(1).view(B, V, -1).mean(1), atol=1e-6)
    img = inputs["mm_token_type_ids"].bool()                                # (B, T) image-pad positions
    x = bb.model.language_model.norm(llm.hidden_states[0])                  # the LLM's input, normed
    assert torch.allclose(got["l0"], torch.stack([x[b][img[b]].mean(0) for b in range(B)]), atol=1e-5)


def test_dinov2_layers_equal_the_cut_backbone_and_cls(synthetic):
    ds = DemoDataset(synthetic, split="all")
    batch = collate([ds[i] for i in (0, 33, 77)])
    full = Backbone("dinov2-s", pool=2)
    fast = full.layer_features(batch["images"], batch["instructions"])["12"] if full.cpu_bf16 else None
    full.cpu_bf16 = False
    got = full.layer_features(batch["images"], batch["instructions"])
    assert list(got) == [str(i) for i in range(13)] and got["12"].shape == (3, 384)
    assert torch.allclose(got["12"], pooled_forward(full, batch), atol=1e-5)   # mean of 2 x 2 pooled = mean of all
    assert torch.allclose(got["5"], pooled_forward(cut_copy(full, 5), batch), atol=1e-5)
    cls = full.layer_features(batch["images"], batch["instructions"], token="cls")["12"]
    from dinov2 import dinov2_pixels
    with torch.no_grad():
        ref = full.model(pixel_values=dinov2_pixels(full.model, batch["images"], 2)).last_hidden_state[:, 0]
    assert torch.allclose(cls, ref.view(3, 3, -1).mean(1), atol=1e-5)
    if fast is not None:   # bf16 autocast (as forward() runs on this CPU): close to the float32 features
        assert torch.nn.functional.cosine_similarity(fast, got["12"], dim=-1).min() > 0.999
    with pytest.raises(ValueError, match="not tiny with cls pooling"):
        Backbone("tiny").layer_features(batch["images"], batch["instructions"], token="cls")


# --- targets, sampling, baselines ---

def test_targets_are_minmax_then_unit_rows(few):
    ds, idx, batch = few
    minmax = ds.stats()
    t = al.targets(ds, idx, minmax)
    lo, hi = torch.tensor(minmax["q_min"]), torch.tensor(minmax["q_max"])
    scale = lambda x, lo, hi: torch.where(hi - lo < 1e-6, x - lo, 2 * (x - lo) / (hi - lo).clamp_min(1e-6) - 1)   # a
    q = scale(batch["q"].double(), lo, hi)                                        # constant dimension: x - v
    assert torch.allclose(t["q"], q / q.norm(dim=1, keepdim=True), atol=1e-9)
    assert t["action"].shape == (24, 7) and t["chunk"].shape == (24, 16 * 7)
    assert torch.allclose(t["chunk"].norm(dim=1), torch.ones(24, dtype=torch.float64))
    a_lo, a_hi = torch.tensor(minmax["a_min"]), torch.tensor(minmax["a_max"])
    a0 = scale(batch["A"][:, 0].double(), a_lo, a_hi)
    assert torch.allclose(t["action"], a0 / a0.norm(dim=1, keepdim=True), atol=1e-9)


def test_sampling(tmp_path):
    from data import write_synthetic
    path = write_synthetic(str(tmp_path / "tasks.hdf5"), n_demos=24, T=40, image_size=16, cameras=("agentview",),
                           tasks=("a", "b"))
    ds = DemoDataset(path, ["agentview"], split="all")
    paper = al.sample_index(ds, "paper", 10_000, per_task=10, stride=16)
    picked = [ds.index[i] for i in paper]
    assert [d for d, _ in picked][::3] == list(range(10)) + list(range(12, 22))   # the first 10 demos of each task
    assert {t for _, t in picked} == {0, 16, 32} and len(paper) == 20 * 3
    held = al.sample_index(ds, "heldout", 100)                            # cknna.py's draw: same samples
    assert held == sorted(torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:100].tolist())
    assert al.sample_index(ds, "heldout", 10_000) == list(range(len(ds)))


def test_shuffled_baseline_is_chance():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1200, 10, generator=g)
    X = al.unit_rows(z @ torch.randn(10, 64, generator=g) + 0.3 * torch.randn(1200, 64, generator=g))
    tgts = {"q": al.unit_rows(z), "noise": al.unit_rows(torch.randn(1200, 7, generator=g))}
    real = {r["target"]: r for r in al.score({"x": X}, tgts, 10, "layer")}
    chance = {r["target"]: r for r in al.shuffled(X, tgts, 10, "shuffled")}
    assert real["q"]["cknna"] > 0.5 and abs(real["noise"]["cknna"]) < 0.05          # related vs unrelated data
    for r in chance.values():
        assert abs(r["cknna"]) < 0.05 and r["mutual_knn"] < 0.03                     # k / (N - 1) = 0.008
    assert all(r["kind"] == "shuffled" for r in chance.values())


def test_episode_time_control_knows_only_episode_and_time(few):
    ds, idx, _ = few
    F = al.episode_time(ds, idx)
    assert F.shape == (24, 6 + 2) and torch.allclose(F.norm(dim=1), torch.ones(24, dtype=torch.float64))
    K = F @ F.T
    same = torch.tensor([[ds.index[i][0] == ds.index[j][0] for j in idx] for i in idx])
    assert (K[same] > 0.5).all() and (K[~same] <= 0.5 + 1e-9).all()          # the same episode comes first
    t = torch.tensor([ds.index[i][1] for i in idx], dtype=torch.float64)
    row = K[0][same[0]]                                                      # sample 0's episode: by distance in time
    assert torch.equal(torch.argsort(-row, stable=True), torch.argsort((t[same[0]] - t[0]).abs(), stable=True))


# --- alignment against success ---

def test_spearman_and_its_intervals():
    assert stats.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)             # 1 - 6 * 2 / (4 * 15)
    assert stats.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert stats.ranks([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]                  # ties share the mean rank
    assert np.isnan(stats.spearman([1, 2, 3], [0.5, 0.5, 0.5]))
    x, y = [0.1, 0.4, 0.2, 0.9, 0.5, 0.3], [0.0, 0.3, 0.1, 0.6, 0.2, 0.2]
    lo, hi, used = stats.spearman_interval(x, y, 500)
    assert -1 <= lo <= stats.spearman(x, y) <= hi <= 1 and 400 < used <= 500
    assert stats.spearman_interval(x, y, 500) == (lo, hi, used)                      # seeded
    assert np.isnan(stats.spearman_interval(x[:2], y[:2])[0])                        # no interval under 3 runs
    assert stats.spearman_p([1, 2, 3], [1, 2, 3]) == pytest.approx(2 / 6)         # 2 of 3! orders give |rho| = 1
    assert stats.spearman_p([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(2 / 24)
    scipy = pytest.importorskip("scipy.stats")   # an independent implementation, where installed
    assert stats.spearman(x, y) == pytest.approx(scipy.spearmanr(x, y).statistic, abs=1e-12)


# --- the command ---

def run(*args):
    return subprocess.run([sys.executable, "cknna.py", "--layers", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def test_command_with_checkpoints_and_success(synthetic, tmp_path):
    from dataclasses import asdict
    from model import Policy, make_config
    minmax = DemoDataset(synthetic, split="train").stats()
    ckpts = []
    for i, wins in enumerate((3, 9, 14)):      # three policies (differently seeded adapters), each evaluated
        cfg = make_config(backbone="tiny", image_size=32)
        policy = Policy(cfg)                   # building the tiny backbone seeds torch with 0: seed the adapter after
        torch.manual_seed(i)
        policy.init_weights()
        policy.set_stats(minmax)
        os.makedirs(tmp_path / f"p{i}" / "eval-lift-seen")
        torch.save(dict(model=policy.trainable_state_dict(), model_config=asdict(cfg)), tmp_path / f"p{i}" / "ckpt.pt")
        json.dump(dict(appearance="seen", summary=dict(lift=dict(successes=wins, episodes=20))),
                  open(tmp_path / f"p{i}" / "eval-lift-seen" / "results.json", "w"))
        ckpts.append(tmp_path / f"p{i}" / "ckpt.pt")
    out = tmp_path / "layers"
    r = run("--data", synthetic, "--split", "all", "--n", 60, "--out", out, *ckpts)
    assert r.returncode == 0, r.stderr
    s = json.load(open(out / "scores.json"))
    kinds = {(x["kind"], x["representation"], x["run"]) for x in s["rows"]}
    assert {("layer", n, None) for n in ("v0", "v1", "v2", "l0", "l1", "l2")} < kinds
    assert {(k, k, f"p{i}") for k in ("h", "z") for i in range(3)} < kinds and len(s["rows"]) == (6 + 2 + 6) * 3
    assert s["policy_layer"] == "l2" and s["n"] == 60 and s["backbone"] == "tiny"
    assert [x["success"] for x in s["runs"]] == [0.15, 0.45, 0.7] and np.isfinite(s["success"]["spearman"])
    assert s["runs"][0]["wilson95"] == pytest.approx(stats.wilson(3, 20))
    assert (out / "layers.png").stat().st_size > 10_000 and (out / "success.png").stat().st_size > 10_000
    # CKNNA(h, q) equals cknna.py's analysis (`python cknna.py CKPT --n 60`: its draw, its extract, its q)
    policy = Policy.from_checkpoint(str(ckpts[1]))
    ds = DemoDataset(synthetic, policy.cfg.cameras, split="all")
    idx = sorted(torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:60].tolist())
    reps = ck.extract(policy, ds, idx)
    got = next(x["cknna"] for x in s["rows"] if x["kind"] == "h" and x["run"] == "p1" and x["target"] == "q")
    assert got == pytest.approx(ck.cknna(reps["h"], reps["q"], 10), abs=1e-6)   # its q is L2-normalised in float32


@pytest.mark.parametrize("args, words", [
    ((), "give --data FILE"),
    (("--backbone", "siglip2"), "the layer sweep reads dinov2-s"),
    (("--backbone", "tiny", "--token", "cls"), "(mean: no CLS token)"),
    (("--backbone", "tiny", "--topk", "0"), "--topk must be at least 1"),
    (("--backbone", "tiny", "--results", "a.json"), "name the checkpoints too"),
    (("--backbone", "tiny", "--split", "val", "--topk", "30"), "k = 30 needs at least 31"),
])
def test_bad_input_is_one_line(synthetic, tmp_path, args, words):
    out = tmp_path / "o"
    r = run(*(("--data", synthetic) if args else ()), *args, "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and not out.exists() and not list(tmp_path.glob("o.tmp*"))
