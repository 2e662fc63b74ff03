"""The policy's parts: RS-CL loss, cutoff, frozen backbone, adapter, DiT init, Euler, checkpoints."""
import math

import pytest
import torch
import torch.nn.functional as F

from backbone import Backbone
from data import DemoDataset, collate
from loss import cutoff, cutoff_mask, rscl_diagnostics, rscl_lambda, rscl_loss, soft_weights, weight_entropy
from attention import Block, cutoff_layout
from model import Policy, euler, flow_path, make_config

CAMS = ["agentview", "frontview", "robot0_eye_in_hand"]


# --- RS-CL loss ---

def test_rscl_with_identity_weights_is_plain_infonce():
    torch.manual_seed(0)
    z, zt = torch.randn(8, 16), torch.randn(8, 16)
    logits = F.normalize(z, dim=-1) @ F.normalize(zt, dim=-1).T / 0.2
    expected = F.cross_entropy(logits, torch.arange(8))        # InfoNCE: the positive of i is j = i
    assert torch.allclose(rscl_loss(z, zt, None, tau=0.2), expected, atol=1e-6)


def test_rscl_matches_the_formula_written_out():
    torch.manual_seed(1)
    B, beta, tau = 6, 0.7, 0.3
    z, zt, q = torch.randn(B, 5).double(), torch.randn(B, 5).double(), torch.randn(B, 10).double()
    total = 0.0
    for i in range(B):
        d = [math.sqrt(sum((q[i, k] - q[j, k]) ** 2 for k in range(10))) for j in range(B)]
        w = [math.exp(-dj / beta) / sum(math.exp(-dk / beta) for dk in d) for dj in d]
        cos = [float(z[i] @ zt[j] / (z[i].norm() * zt[j].norm())) for j in range(B)]
        log_den = math.log(sum(math.exp(c / tau) for c in cos))
        total += -sum(w[j] * (cos[j] / tau - log_den) for j in range(B))
    assert abs(float(rscl_loss(z, zt, q, beta=beta, tau=tau)) - total / B) < 1e-9


def test_soft_weight_rows_sum_to_one_and_favour_near_states():
    q = torch.tensor([[0.0], [0.1], [5.0]])
    W = soft_weights(q, beta=1.0)
    assert torch.allclose(W.sum(-1), torch.ones(3))
    assert W[0, 1] > W[0, 2] and W[0, 0] > W[0, 1]                    # self included, nearest next


def test_lambda_schedule_is_cosine_from_one_to_zero():
    assert rscl_lambda(0, 100) == 1.0 and abs(rscl_lambda(50, 100) - 0.5) < 1e-12 and rscl_lambda(100, 100) < 1e-12
    assert rscl_lambda(0, 100, 0.2) == 1.0 and abs(rscl_lambda(50, 100, 0.2) - 0.6) < 1e-12
    assert abs(rscl_lambda(100, 100, 0.2) - 0.2) < 1e-12 and abs(rscl_lambda(500, 100, 0.2) - 0.2) < 1e-12


def test_median_scaled_weights_are_scale_free():
    torch.manual_seed(2)
    q = torch.rand(16, 10) * 2 - 1
    W = soft_weights(q, 0.3, scale="median")
    assert torch.allclose(W, soft_weights(100 * q, 0.3, scale="median"), atol=1e-6)   # any unit of q
    assert not torch.allclose(soft_weights(q, 0.3), soft_weights(100 * q, 0.3))       # the paper's is not
    d = torch.cdist(q.double(), q.double())
    med = d[~torch.eye(16, dtype=torch.bool)].median()
    assert torch.allclose(W.double(), torch.softmax(-d / med / 0.3, -1), atol=1e-6)
    with pytest.raises(ValueError, match="median"):
        soft_weights(q, 1.0, scale="mean")


def test_diagnostics_floor_excess_positives_and_off_diagonal_cosines():
    torch.manual_seed(3)
    B = 8
    z, zt, q = torch.randn(B, 16), torch.randn(B, 16), torch.randn(B, 10)
    W = soft_weights(q, 1.0)
    loss = rscl_loss(z, zt, q, beta=1.0)
    d = rscl_diagnostics(z, zt, W, loss)
    p = torch.softmax(F.normalize(z, dim=-1) @ F.normalize(zt, dim=-1).T / 0.2, -1)
    kl = (W * (W.log() - p.log())).sum(-1).mean()                          # KL(w_i || p_i), averaged
    assert torch.allclose(d["rscl_excess"], kl, atol=1e-5) and d["rscl_excess"] >= 0
    assert torch.allclose(d["w_entropy"], weight_entropy(W))
    assert abs(float(rscl_diagnostics(z, zt, torch.full((B, B), 1 / B), loss)["n_pos"]) - B) < 1e-4   # uniform
    assert abs(float(rscl_diagnostics(z, zt, torch.eye(B), loss)["n_pos"]) - 1) < 1e-6                # InfoNCE
    C = F.normalize(z, dim=-1) @ F.normalize(zt, dim=-1).T
    off = C[~torch.eye(B, dtype=torch.bool)]
    assert torch.allclose(d["cos_z"], C.diagonal().mean()) and torch.allclose(d["cos_off"], off.mean())
    collapsed = rscl_diagnostics(z[[0] * B], 3 * z[[0] * B], W, loss)     # every embedding alike: collapse
    assert abs(float(collapsed["cos_off"]) - 1) < 1e-6 and float(collapsed["cos_off_std"]) < 1e-6


# --- cutoff ---

def test_view_cutoff_zeroes_exactly_one_view_per_sample():
    B, N, D, V, n = 16, 40, 8, 3, 9
    feats = torch.randn(B, N, D) + 5                                   # no zeros by chance
    starts = torch.tensor([4, 14, 24])
    views = torch.stack([starts, starts + n], -1).expand(B, V, 2)
    mask = torch.ones(B, N, dtype=torch.bool)
    out = cutoff(feats, mask, views, "view", generator=torch.Generator().manual_seed(0))
    zeroed = (out == 0).all(-1)                                        # (B, N)
    chosen = set()
    for b in range(B):
        hit = [v for v in range(V) if zeroed[b, starts[v]:starts[v] + n].all()]
        assert len(hit) == 1                                           # exactly one view
        assert zeroed[b].sum() == n                                    # and nothing else
        keep = ~zeroed[b]
        assert torch.equal(out[b, keep], feats[b, keep])
        chosen.add(hit[0])
    assert chosen == {0, 1, 2}                                         # chosen per sample, at random


def test_token_and_span_cutoff_drop_about_ratio_of_real_tokens():
    feats, mask = torch.randn(4, 100, 3) + 5, torch.ones(4, 100, dtype=torch.bool)
    mask[:, 80:] = False
    views = torch.zeros(4, 1, 2, dtype=torch.long)
    span = (cutoff(feats, mask, views, "span", 0.1) == 0).all(-1)
    assert (span.sum(1) == 8).all() and not span[:, 80:].any()
    tok = (cutoff(feats, mask, views, "token", 0.5) == 0).all(-1)
    assert not tok[:, 80:].any() and 20 < tok[:, :80].sum(1).float().mean() < 60


# --- the policy ---

@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return Policy(make_config(image_size=32))


def batch_of(policy, path, B=4):
    ds = DemoDataset(path, CAMS, horizon=16, split="all")
    b = collate([ds[i] for i in range(0, 4 * B, 4)])
    policy.set_stats(ds.stats())
    feats, mask, views = policy.backbone(b["images"], b["instructions"])
    return b, feats, mask, views, policy.normalize(b["q"], "q"), policy.normalize(b["A"], "a")


def test_backbone_is_frozen_and_stays_in_eval_mode(policy, synthetic):
    policy.train()
    assert not policy.backbone.training and not any(m.training for m in policy.backbone.modules())
    assert policy.adapter.training
    assert not any(p.requires_grad for p in policy.backbone.parameters())
    b, feats, mask, views, q, A = batch_of(policy, synthetic)
    out = policy(feats, mask, views, q, A, rscl="proprio")
    (out["loss_fm"] + out["loss_rscl"]).backward()
    assert all(p.grad is None for p in policy.backbone.parameters())
    assert policy.adapter.u.grad is not None and policy.dit.head.weight.grad is not None
    policy.zero_grad(set_to_none=True)


def test_rscl_on_pooled_h_trains_the_adapter_tokens(policy, synthetic):
    b, feats, mask, views, q, A = batch_of(policy, synthetic)
    torch.manual_seed(0)
    out = policy(feats, mask, views, q, A, rscl="proprio", rscl_on="pooled-h", beta_scale="median")
    out["loss_rscl"].backward()                                           # RS-CL alone: no flow-matching gradient
    assert policy.adapter.blocks[-1].mlp[0].weight.grad.abs().max() > 0
    assert policy.dit.head.weight.grad is None                           # the DiT is not in the RS-CL path
    policy.zero_grad(set_to_none=True)
    assert {"n_pos", "rscl_excess", "cos_off", "cos_off_std"} <= set(out)


def test_adapter_position_embedding_is_per_slot_and_only_for_fixed_token_counts(policy):
    bb = Backbone("dinov2-s", pool=2)
    cams = ["agentview", "robot0_eye_in_hand"]
    with_pos = Policy(make_config(backbone="dinov2-s", token_pool=2, adapter_pos=True, cameras=cams), backbone=bb)
    assert with_pos.adapter.pos.shape == (2 * 25, 128) and "adapter.pos" in with_pos.trainable_state_dict()
    feats, mask = torch.randn(3, 50, 384), torch.ones(3, 50, dtype=torch.bool)
    h, _ = with_pos.adapter(feats, mask)
    with torch.no_grad():
        with_pos.adapter.pos[7] += 1.0                                     # move one slot's embedding
    h2, _ = with_pos.adapter(feats, mask)
    assert not torch.allclose(h, h2)                                      # the slot is seen by the adapter
    assert "adapter.pos" not in Policy(make_config(backbone="dinov2-s", token_pool=2, cameras=cams),
                                       backbone=bb).trainable_state_dict()   # off by default (GR00T has none)
    with pytest.raises(ValueError, match="fixed token count"):
        Policy(make_config(adapter_pos=True, image_size=32), backbone=policy.backbone)


def test_views_locate_each_cameras_tokens(policy, synthetic):
    b, feats, mask, views, q, A = batch_of(policy, synthetic)
    n = policy.backbone.tokens_per_view(32)
    ids = policy.backbone.prepare(b["images"], b["instructions"])["input_ids"]
    pad = policy.backbone.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert views.shape == (4, 3, 2) and ((views[..., 1] - views[..., 0]) == n).all()
    for i in range(4):
        for v in range(3):
            s, e = views[i, v].tolist()
            assert (ids[i, s:e] == pad).all() and ids[i, e] != pad


def test_dit_gets_h_without_the_summarization_token(policy, synthetic):
    b, feats, mask, views, q, A = batch_of(policy, synthetic)
    seen = {}
    hook = policy.dit.register_forward_hook(lambda m, inp, out: seen.update(h=inp[2]))
    policy.eval()
    policy(feats, mask, views, q, A)
    hook.remove()
    x = torch.cat([policy.adapter.ln(feats), policy.adapter.u.expand(4, 1, -1)], 1)    # [feats | u]
    m = torch.cat([mask, torch.ones(4, 1, dtype=torch.bool)], 1)
    for block in policy.adapter.blocks:
        x = block(x, m)
    assert seen["h"].shape == feats.shape                              # N positions, not N + 1
    assert torch.allclose(seen["h"], x[:, :-1], atol=1e-5)
    assert torch.allclose(policy.adapter(feats, mask)[1], x[:, -1], atol=1e-5)


def two_full_passes(adapter, feats, mask, drop):
    """What Adapter.pair computes, by its definition: the clean pass and the cut-off pass, each in full."""
    h, w = adapter(feats, mask)
    return h, w, adapter(feats.masked_fill(drop[..., None], 0.0), mask)[1]


@pytest.mark.parametrize("layers, separate", [(2, False), (1, False), (3, False), (2, True)])
def test_pair_equals_two_full_passes(synthetic, layers, separate):
    # Adapter.pair (both RS-CL passes as one packed sequence, or the cut-off pass on its own where dropout would
    # make the zeroed tokens differ) against the definition: every cutoff kind, padding in the mask, a sample with
    # nothing zeroed, adapters of 1 to 3 blocks; float64, so any slip shows
    torch.manual_seed(0)
    policy = Policy(make_config(image_size=32, adapter_layers=layers, adapter_dropout=0.0)).double()
    policy.adapter.dropout = 0.1 if separate else 0.0    # the separate path's switch; its Dropout layers draw nothing
    b, feats, mask, views, q, A = batch_of(policy, synthetic)
    feats, mask = feats.double(), mask.clone()
    mask[0, :5] = False
    g = torch.Generator().manual_seed(0)
    for kind in ("view", "token", "span"):
        drop = cutoff_mask(feats, mask, views, kind, ratio=0.3, generator=g)
        drop[1] = False
        got = policy.adapter.pair(policy.adapter.embed(feats), mask, drop)
        want = two_full_passes(policy.adapter, feats, mask, drop)
        assert [t.shape for t in got] == [t.shape for t in want]
        for a, b_ in zip(got, want):
            assert torch.allclose(a, b_, atol=1e-6, rtol=0), kind    # log n is a float32 bias: 1e-6, not 1e-12
        assert not torch.allclose(got[2], got[1], atol=1e-3)       # the cutoff does change w


def test_block_computes_chosen_rows_alone():
    # Block(rows=...): the outputs at the given positions (repeats allowed), each query with its own mask
    torch.manual_seed(0)
    block = Block(16, 2, 0.0).double()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    mask = torch.rand(3, 7) < 0.7
    mask[:, -1] = True
    full = block(x, mask)
    rows = torch.tensor([[6], [0], [3]]).expand(3, 1).contiguous()
    rows = torch.cat([rows, torch.tensor([[2, 2], [6, 1], [0, 5]])], 1)          # (3, 3)
    assert torch.allclose(block(x, mask, rows=rows), full.gather(1, rows[..., None].expand(-1, -1, 16)), atol=1e-12)
    bias = torch.where(mask, 0.0, -math.inf).double()                            # a float bias, one row per query
    per_query = bias[:, None].expand(3, 3, 7).clone()
    per_query[:, 1, :] = torch.where(torch.arange(7) == 6, 0.0, -math.inf)       # query 1: u's key alone
    out = block(x, per_query, rows=rows)
    assert torch.allclose(out[:, 0], full.gather(1, rows[:, :1, None].expand(-1, -1, 16))[:, 0], atol=1e-12)
    pair = torch.stack([x.gather(1, rows[:, 1:2, None].expand(-1, -1, 16))[:, 0], x[:, 6]], 1)   # [x_r, x_6]
    to_u = block(pair, torch.tensor([[False, True]]).expand(3, 2), rows=torch.zeros(3, 1, dtype=torch.long))
    assert torch.allclose(out[:, 1], to_u[:, 0], atol=1e-12)


def test_pair_with_slot_embeddings(monkeypatch):
    # --adapter-pos: a zeroed token's input differs per slot, so the cut-off pass runs on its own (it once
    # failed here with a shape error: RS-CL with --adapter-pos at dropout 0, main.sh's setting)
    monkeypatch.setenv("RSCL_CPU_BF16", "0")
    torch.manual_seed(0)
    backbone = Backbone("dinov2-s", weights="random")
    policy = Policy(make_config(backbone="dinov2-s", image_size=28, cameras=["a", "b"], adapter_pos=True,
                                adapter_dropout=0.0), backbone=backbone).eval()
    feats, mask, views = backbone(torch.randint(0, 255, (3, 2, 28, 28, 3), dtype=torch.uint8), [""] * 3)
    drop = cutoff_mask(feats, mask, views, "view")
    got = policy.adapter.pair(policy.adapter.embed(feats), mask, drop)
    for a, b_ in zip(got, two_full_passes(policy.adapter, feats, mask, drop)):
        assert torch.allclose(a, b_, atol=1e-5, rtol=0)
    out = policy.train()(feats, mask, views, torch.rand(3, 10), torch.rand(3, 16, 7), rscl="proprio")
    assert torch.isfinite(out["loss_rscl"])


def test_cutoff_layout_keeps_one_fill_per_sample():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    drop = torch.tensor([[0, 1, 1, 0, 0, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)  # 2 and 3 zeroed real tokens
    rows, clean, cut = cutoff_layout(mask, drop)
    # source rows: tokens 0..5, u = 6, the fill = 7; T2 = 6 - 2 + 2: the kept tokens, the fill, unused, u
    assert torch.equal(rows, torch.tensor([[0, 3, 4, 5, 7, 6], [3, 4, 5, 7, 1, 6]]))
    inf = float("-inf")
    assert torch.equal(clean, torch.tensor([[0, 0, 0, 0, 0, inf, 0, inf], [0, 0, 0, 0, 0, 0, 0, inf]]))
    assert torch.allclose(cut, torch.tensor([[0, inf, inf, 0, 0, inf, 0, math.log(2)],
                                             [inf, inf, inf, 0, 0, 0, 0, math.log(3)]]))
    own = cut.gather(1, rows)   # the cut-off pass's bias over its own rows: padding and unused masked, u attended
    assert torch.allclose(own, torch.tensor([[0, 0, 0, inf, math.log(2), 0], [0, 0, 0, math.log(3), inf, 0]]))
    _, _, none = cutoff_layout(mask, torch.zeros_like(drop))   # nothing zeroed: no fill key
    assert none[:, -1].eq(inf).all()


def test_math_attention_is_sdpa_for_every_mask_kind():
    # the CPU path (attention.math_attention) against torch's SDPA: no mask, a bool mask, cutoff_layout's float bias
    from attention import math_attention
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, T, 8, dtype=torch.float64, requires_grad=True) for T in (5, 7, 7))
    bool_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)[:, None, None]
    bias = torch.tensor([[0, 0, math.log(3), -math.inf, 0, 0, 0]] * 3, dtype=torch.float64)[:, None, None]
    for mask in (None, bool_mask, bias):
        ours, ref = math_attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert torch.allclose(ours, ref, atol=1e-12), mask
        g_ours = torch.autograd.grad(ours.square().sum(), (q, k, v))
        g_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
        assert all(torch.allclose(a, b_, atol=1e-12) for a, b_ in zip(g_ours, g_ref))


@pytest.mark.parametrize("rscl, cut, dropout, train", [("proprio", "view", 0.0, True), ("action", "token", 0.0, True),
                                                        ("infonce", "span", 0.2, False)])
def test_rscl_losses_equal_the_two_pass_code(synthetic, rscl, cut, dropout, train):
    # the previous code ran the second adapter pass in full on the zeroed features and kept u's output;
    # same seeds -> same losses and gradients (dropout 0, main.sh's setting, or eval mode)
    torch.manual_seed(0)
    policy = Policy(make_config(image_size=32, adapter_dropout=dropout))
    b, feats, mask, views, q, A = batch_of(policy, synthetic)
    policy.train(train)
    results = []
    for second_pass in ("pair", "two-pass"):
        if second_pass == "two-pass":
            policy.adapter.pair = lambda x, m, d: two_full_passes(policy.adapter, feats, m, d)
        torch.manual_seed(1)
        out = policy(feats, mask, views, q, A, rscl=rscl, cutoff_kind=cut)
        (out["loss_fm"] + out["loss_rscl"]).backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        policy.zero_grad(set_to_none=True)
        results.append((out, grads))
    (new, g_new), (old, g_old) = results
    for key in ("loss_fm", "loss_rscl", "cos_z", "w_entropy"):
        assert torch.allclose(new[key], old[key], atol=1e-6, rtol=0), key
    assert g_new.keys() == g_old.keys() and len(g_new) > 20
    for n in g_new:
        assert torch.allclose(g_new[n], g_old[n], atol=1e-6, rtol=1e-4), n


def test_fresh_dit_blocks_are_identity_and_initial_velocity_is_zero(policy, synthetic):
    fresh = Policy(make_config(image_size=32), backbone=policy.backbone)
    b, feats, mask, views, q, A = batch_of(fresh, synthetic)
    h, _ = fresh.adapter(feats, mask)
    x, temb = torch.randn(4, 21, 128), torch.randn(4, 128)
    for block in fresh.dit.blocks:                                     # adaLN-Zero: gates start at 0
        assert torch.equal(block(x, temb, h, mask), x)
    v = fresh.dit(torch.randn(4, 16, 7), torch.randint(1000, (4,)), h, mask, q)
    assert torch.equal(v, torch.zeros_like(v))


def test_euler_with_a_constant_velocity_is_exact():
    x0, c = torch.randn(3, 16, 7), torch.randn(3, 16, 7)
    for K in (1, 4, 7):
        assert torch.allclose(euler(lambda x, tau: c, x0, K), x0 + c, atol=1e-6)
    taus = []
    euler(lambda x, tau: taus.append(tau) or c, x0, 4)
    assert taus == [0.0, 0.25, 0.5, 0.75]                              # tau = 0 is noise


def test_flow_path_convention_and_euler_on_it():
    """tau = 0 is noise, tau = 1 is data, v = A - eps; Euler along v from noise lands on the data."""
    A, eps = torch.randn(2, 16, 7), torch.randn(2, 16, 7)
    x0, v = flow_path(A, eps, 0.0)
    x1, _ = flow_path(A, eps, 1.0)
    assert torch.equal(x0, eps) and torch.equal(x1, A) and torch.equal(v, A - eps)
    xa, _ = flow_path(A, eps, 0.3)
    xb, _ = flow_path(A, eps, 0.3 + 1e-3)
    assert torch.allclose((xb - xa) / 1e-3, v, atol=1e-2)
    assert torch.allclose(euler(lambda x, tau: flow_path(A, eps, tau)[1], eps, 4), A, atol=1e-5)


def test_checkpoint_round_trip(policy, synthetic, tmp_path):
    from dataclasses import asdict
    b, feats, mask, views, q, A = batch_of(policy, synthetic)
    with torch.no_grad():
        policy.dit.head.weight.normal_()                                # a non-trivial velocity
    torch.save(dict(model=policy.trainable_state_dict(), model_config=asdict(policy.cfg)), tmp_path / "c.pt")
    back = Policy.from_checkpoint(str(tmp_path / "c.pt"))
    assert not back.training and not any(k.startswith("backbone.") for k in torch.load(tmp_path / "c.pt")["model"])
    policy.eval()
    torch.manual_seed(3); a1 = policy.predict(b["images"], b["q"], b["instructions"])
    torch.manual_seed(3); a2 = back.predict(b["images"], b["q"], b["instructions"])
    assert torch.equal(a1, a2) and a1.shape == (4, 16, 7)
    other = Policy(make_config(image_size=32, size="tiny", dit_width=64), backbone=policy.backbone)
    with pytest.raises(ValueError, match="does not fit"):
        other.load_trainable(torch.load(tmp_path / "c.pt")["model"])


# --- constant action dimensions ---

def test_a_constant_action_dimension_comes_out_as_its_constant_through_predict():
    torch.manual_seed(3)
    policy = Policy(make_config(image_size=32, horizon=4, action_dim=7, state_dim=10)).eval()
    for p in policy.dit.parameters():                  # a decoder that outputs anything but zero velocity
        torch.nn.init.normal_(p, std=0.5)
    A = torch.rand(30, 7) * 2 - 1
    A[:, 3], A[:, 4] = 0.0, 0.25                        # dax = 0, day = 0.25 in every demo (Lift: dax = day = 0)
    q = torch.rand(30, 10)
    from layouts import minmax_stats
    policy.set_stats(minmax_stats(q.numpy(), A.numpy()))
    images = torch.randint(0, 255, (3, 3, 32, 32, 3), dtype=torch.uint8)
    out = policy.predict(images, q[:3], ["lift the cube"] * 3)      # (3, H, 7)
    assert torch.all(out[..., 3] == 0.0) and torch.all(out[..., 4] == 0.25)
    free = out[..., [0, 1, 2, 5, 6]]
    assert free.std() > 0.05 and torch.isfinite(free).all()         # the other dimensions are the decoder's
    assert policy.normalize(A, "a")[:, 3:5].abs().max() == 0        # trained towards 0: the same as before


def test_one_demo_one_sample_stats_divide_by_nothing():
    from layouts import minmax_stats
    torch.manual_seed(4)
    policy = Policy(make_config(image_size=32, horizon=4, action_dim=7, state_dim=10)).eval()
    q, A = torch.rand(1, 10), torch.rand(1, 7)          # a file with a single sample: every dimension constant
    policy.set_stats(minmax_stats(q.numpy(), A.numpy()))
    assert torch.all(policy.normalize(q, "q") == 0)
    out = policy.predict(torch.zeros(2, 3, 32, 32, 3, dtype=torch.uint8), q.repeat(2, 1), ["x"] * 2)
    assert torch.equal(out, A.expand(2, 4, 7))
