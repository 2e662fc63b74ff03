"""
RS-CL, the paper's contribution, in torch only: soft-weighted InfoNCE, the soft weights, the
cutoff augmentations (view / token / span) and the lambda schedule; and the alignment loss of the
related method "Don't Blind Your VLA" (align.py holds its projector and the teacher's grid).

    w_ij   = softmax_j( -||q_i - q_j||_2 / beta )                       (self pair included)
    L_RSCL = -(1/B) sum_i sum_j w_ij * log softmax_j( cos(z_i, z_tilde_j) / tau )
    L      = L_FM + lambda(step) * L_RSCL,   lambda = 0.5 * (1 + cos(pi * step / max_steps))
    L_align = -(1/M) sum_m cos(P(h_m), t_m)   over the M real image tokens   (--align, weight 0.2)

Anchors are the clean z_i, candidates the cut-off z_tilde_j. The loss is one-directional and both
branches get gradients (the paper states neither; this is the plainest reading of its formula).
"""
import math

import torch
import torch.nn.functional as F


# --- RS-CL: soft InfoNCE ---
def rscl_loss(z, z_tilde, q, beta=1.0, tau=0.2, scale="none"):
    """z, z_tilde (B, d) embeddings of the clean and cut-off views; q (B, k) the robot state that
    sets the soft targets (None = identity targets, i.e. plain InfoNCE) -> scalar loss."""
    return soft_infonce(z, z_tilde, soft_weights(q, beta, z.shape[0], z.device, scale), tau)


def soft_infonce(z, z_tilde, W, tau=0.2):
    """rscl_loss with its soft targets W (B, B) given (rows sum to 1): the policy computes W once for the loss
    and its diagnostics."""
    sim = F.normalize(z, dim=-1) @ F.normalize(z_tilde, dim=-1).T          # (B, B) cos(z_i, z_tilde_j)
    log_p = F.log_softmax(sim / tau, dim=-1)                                # (B, B) over candidates j
    return -(W.to(z.dtype) * log_p).sum(dim=-1).mean()


def soft_weights(q, beta, B=None, device=None, scale="none"):
    """q (B, k) -> W (B, B) with W_ij = softmax_j(-||q_i - q_j|| / beta); q None -> identity.
    scale "median" divides the distances by their median over the pairs i != j first, so beta counts in
    units of the batch's typical distance (a scale-free temperature: the same sharpness whatever the
    state's dimension and range); "none" is the paper's."""
    if q is None:
        return torch.eye(B, device=device)
    q = q.to(torch.promote_types(q.dtype, torch.float32))                 # float64 stays float64
    d = (q[:, None, :] - q[None, :, :]).norm(dim=-1)                       # (B, B) exact, no cdist tricks
    if scale == "median":
        off = ~torch.eye(len(q), dtype=torch.bool, device=q.device)
        d = d / d[off].median().clamp_min(1e-12)
    elif scale != "none":
        raise ValueError(f"unknown distance scale '{scale}': choose none or median")
    return F.softmax(-d / beta, dim=-1)


def weight_entropy(W):
    """Mean entropy (nats) of the soft-target rows. exp(entropy) is the effective number of
    positives: 1 = one-hot (plain InfoNCE), B = uniform (the loss cannot go below log B, it teaches nothing)."""
    return -(W * W.clamp_min(1e-12).log()).sum(-1).mean()


@torch.no_grad()
def rscl_diagnostics(z, z_tilde, W, loss):
    """What tells whether RS-CL can still teach anything, as floats for the log. W (B, B) the soft targets.
      w_entropy    mean entropy of W's rows (nats): the floor of the loss (log B: uniform targets)
      n_pos        exp(entropy) of each row, averaged: effective positives per anchor (1: InfoNCE, B: uniform)
      rscl_excess  loss - w_entropy = mean_i KL(w_i || p_i) >= 0: the part of the loss left to learn
      cos_z        mean cos(z_i, z_tilde_i): the diagonal, which the loss drives up by design
      cos_off, cos_off_std  mean and spread of cos(z_i, z_tilde_j), i != j: both near 1 and 0 = collapse"""
    H = -(W * W.clamp_min(1e-12).log()).sum(-1)                             # (B,) entropy of each row
    C = F.normalize(z.float(), dim=-1) @ F.normalize(z_tilde.float(), dim=-1).T   # (B, B)
    off = 1.0 - torch.eye(len(C), device=C.device)                          # (B, B) 1 off the diagonal
    n = off.sum()                                                           # B (B - 1) pairs (no boolean
    mean = (C * off).sum() / n                                              # indexing: the FLOP count runs
    std = (((C - mean) ** 2 * off).sum() / (n - 1)).sqrt()                  # on the meta device)
    return dict(w_entropy=H.mean(), n_pos=H.exp().mean(), rscl_excess=loss.detach() - H.mean(),
                cos_z=C.diagonal().mean(), cos_off=mean, cos_off_std=std)


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


# --- alignment to a frozen teacher (Don't Blind Your VLA) ---
def align_loss(p, t, mask=None):
    """p (B, M, D_t) the frozen projector's output P(h) at the image tokens, t (B, M, D_t) the teacher's
    features there, mask (B, M) True = real token (None: all) -> scalar -mean cos(p_m, t_m), in [-1, 1]."""
    cos = (F.normalize(p, dim=-1) * F.normalize(t, dim=-1)).sum(-1)          # (B, M) per-token cosine
    m = torch.ones_like(cos) if mask is None else mask.to(cos.dtype)         # (B, M)
    return -(cos * m).sum() / m.sum().clamp_min(1)


def rscl_lambda(step, max_steps, floor=0.0):
    """The RS-CL weight: cosine from 1 at step 0 to `floor` at max_steps (the paper: floor 0)."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, max_steps) / max_steps))
