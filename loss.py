"""
RS-CL, the paper's contribution, in torch only: soft-weighted InfoNCE, the soft weights, the
cutoff augmentations (view / token / span) and the lambda schedule.

    w_ij   = softmax_j( -||q_i - q_j||_2 / beta )                       (self pair included)
    L_RSCL = -(1/B) sum_i sum_j w_ij * log softmax_j( cos(z_i, z_tilde_j) / tau )
    L      = L_FM + lambda(step) * L_RSCL,   lambda = 0.5 * (1 + cos(pi * step / max_steps))

Anchors are the clean z_i, candidates the cut-off z_tilde_j. The loss is one-directional and both
branches get gradients (the paper states neither; this is the plainest reading of its formula).
"""
import math

import torch
import torch.nn.functional as F


# --- RS-CL: soft InfoNCE ---
def rscl_loss(z, z_tilde, q, beta=1.0, tau=0.2):
    """z, z_tilde (B, d) embeddings of the clean and cut-off views; q (B, k) the robot state that
    sets the soft targets (None = identity targets, i.e. plain InfoNCE) -> scalar loss."""
    B = z.shape[0]
    W = soft_weights(q, beta, B, z.device).to(z.dtype)                      # (B, B), rows sum to 1
    sim = F.normalize(z, dim=-1) @ F.normalize(z_tilde, dim=-1).T          # (B, B) cos(z_i, z_tilde_j)
    log_p = F.log_softmax(sim / tau, dim=-1)                                # (B, B) over candidates j
    return -(W * log_p).sum(dim=-1).mean()


def soft_weights(q, beta, B=None, device=None):
    """q (B, k) -> W (B, B) with W_ij = softmax_j(-||q_i - q_j|| / beta); q None -> identity."""
    if q is None:
        return torch.eye(B, device=device)
    q = q.to(torch.promote_types(q.dtype, torch.float32))                 # float64 stays float64
    d = (q[:, None, :] - q[None, :, :]).norm(dim=-1)                       # (B, B) exact, no cdist tricks
    return F.softmax(-d / beta, dim=-1)


def weight_entropy(W):
    """Mean entropy (nats) of the soft-target rows. exp(entropy) is the effective number of
    positives: 1 = one-hot (plain InfoNCE), B = uniform (the loss cannot go below log B, it teaches nothing)."""
    return -(W * W.clamp_min(1e-12).log()).sum(-1).mean()


# --- cutoff: representation-level augmentation after the frozen backbone ---
def cutoff(feats, mask, views, kind="view", ratio=0.1, generator=None):
    """Zero part of the backbone output, per sample, before the second adapter pass.
    feats (B, N, D), mask (B, N) real tokens, views (B, V, 2) [start, end) of each camera's tokens.
      view : one randomly chosen view's token slice           (RS-CL's choice)
      token: a random `ratio` of the real tokens, anywhere    (cutoff paper's token cutoff)
      span : one contiguous span of `ratio` of the real tokens (cutoff paper's span cutoff)
    Returns a new tensor; feats is not modified."""
    return feats.masked_fill(cutoff_mask(feats, mask, views, kind, ratio, generator)[..., None], 0.0)


def cutoff_mask(feats, mask, views, kind="view", ratio=0.1, generator=None):
    """The tokens cutoff() zeroes: (B, N) bool, same arguments and random draws."""
    B, N, _ = feats.shape
    pos = torch.arange(N, device=feats.device)[None]                        # (1, N)
    if kind == "view":
        V = views.shape[1]
        v = torch.randint(V, (B,), device=feats.device, generator=generator)   # (B,) the view to drop
        sl = views[torch.arange(B, device=feats.device), v]                 # (B, 2)
        drop = (pos >= sl[:, :1]) & (pos < sl[:, 1:])                       # (B, N)
    elif kind == "token":
        r = torch.rand(B, N, device=feats.device, generator=generator)
        drop = (r < ratio) & mask
    elif kind == "span":
        n = mask.sum(1, keepdim=True)                                       # (B, 1) real tokens
        length = (n.float() * ratio).ceil().long().clamp_min(1)
        start = (torch.rand(B, 1, device=feats.device, generator=generator) * (n - length + 1)).long()
        drop = (pos >= start) & (pos < start + length)
    else:
        raise ValueError(f"unknown cutoff '{kind}': choose view, token or span")
    return drop


def rscl_lambda(step, max_steps):
    """The RS-CL weight: cosine from 1 at step 0 to 0 at max_steps."""
    return 0.5 * (1 + math.cos(math.pi * min(step, max_steps) / max_steps))
