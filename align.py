"""
Visual alignment to a frozen teacher ("Don't Blind Your VLA", arXiv 2510.25616), all but the loss
(loss.align_loss): the frozen random projector, and the teacher's patch features matched to the
policy's token grid, view by view.

    python train.py --align                          # the teacher is the run's own backbone
    python train.py --align --teacher dinov2-s       # another encoder of backbone.BACKBONES

    h (B, N, D) at each view's n image tokens --> P, frozen and random:         --> (B, V*n, D_t)
        LayerNorm, Linear D -> hidden, SiLU, Linear hidden -> hidden, SiLU, Linear hidden -> D_t
    teacher's patch tokens, each view's g_t x g_t grid resampled to the policy's g x g  --> t (B, V*n, D_t)
    L_align = -mean over real image tokens of cos(P(h), t);   L = L_FM + lambda L_RSCL + 0.2 L_align

P gets no gradient (the gradient flows through it, to h) and is not in the optimizer; its weights come
from a fixed seed (PolicyConfig.align_seed) and travel in the checkpoint. Nothing here runs at inference.
Not to be confused with alignment.py (CKNNA of each backbone layer against q: a measurement).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbone import Backbone


def projector(D, hidden, D_t):
    """P: the frozen MLP D -> D_t. Its weights are drawn in Policy.init_weights from cfg.align_seed."""
    return nn.Sequential(nn.LayerNorm(D), nn.Linear(D, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, D_t)).requires_grad_(False)


def grid_side(n, who):
    """g for n = g * g tokens per view (row-major, as every backbone here lays a view out), else ValueError."""
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"--align: {who}'s {n} tokens per view are not a square grid, so the teacher's "
                         f"patches cannot be matched to them: use square images")
    return g


def view_tokens(x, views, n):
    """x (B, N, C), views (B, V, 2) [start, end) of each view's tokens, n tokens per view -> (B, V, n, C).
    The views may start at other positions in each sample (a VLM puts text before or between them)."""
    B, V, C = x.shape[0], views.shape[1], x.shape[-1]
    idx = views[..., :1] + torch.arange(n, device=x.device)                     # (B, V, n) token positions
    return x.gather(1, idx.reshape(B, V * n, 1).expand(-1, -1, C)).view(B, V, n, C)


def resample(t, n):
    """t (B, V, m, D_t) each view's teacher tokens on its g_t x g_t grid -> (B, V, n, D_t) on the policy's g x g:
    adaptive average pooling when g < g_t (a policy token gets the mean of the teacher patches it covers),
    bilinear interpolation when g > g_t, unchanged when the grids are equal. Both grids cover the whole image
    (every encoder here resizes the image, none crops it), so resampling one onto the other matches regions."""
    B, V, m, D_t = t.shape
    g_t, g = grid_side(m, "the teacher"), grid_side(n, "the backbone")
    if g == g_t:
        return t
    x = t.reshape(B * V, g_t, g_t, D_t).permute(0, 3, 1, 2)                     # (B*V, D_t, g_t, g_t)
    x = F.adaptive_avg_pool2d(x, g) if g < g_t else F.interpolate(x, size=(g, g), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(B, V, n, D_t)                          # (B, V, n, D_t)


def teacher_targets(feats, views, m, n):
    """The teacher's output feats (B, N_t, D_t) with its views (B, V, 2), m tokens per view -> the targets
    t (B, V*n, D_t), n per view, in the order of the policy's image tokens (view_tokens(h, views, n))."""
    return resample(view_tokens(feats, views, m), n).flatten(1, 2)


def make_teacher(name, backbone, image_shape, device="cpu"):
    """--teacher NAME -> the frozen teacher (a Backbone at its default layer, unpooled), checked against the images
    and the backbone's grid: ValueError (or WeightsNotFound) with one clear line. A teacher named like the backbone
    is the backbone itself, as configured: its features are the teacher's, nothing more to run or to cache."""
    teacher = backbone if name == backbone.name else Backbone(name, device=device)
    H, W = image_shape[:2]
    if H != W:
        raise ValueError(f"--align needs square images (got {H} x {W}): a view's tokens are read as a g x g grid")
    teacher.check_images(image_shape)
    grid_side(backbone.tokens_per_view(H), f"the backbone {backbone.name}")
    grid_side(teacher.tokens_per_view(H), f"the teacher {teacher.name}")
    return teacher


def batch_targets(batch, feats, views, backbone, teacher, image_size):
    """The align targets t (B, V*n, D_t) of one batch, or None without a teacher: read from the feature cache
    (batch["teacher"]), taken from the backbone's own feats (B, N, D) and views (B, V, 2) when the teacher is the
    backbone, else the teacher run on batch["images"]; matched to the backbone's grid either way."""
    if "teacher" in batch:
        return batch["teacher"].to(feats.device).float()
    if teacher is None:
        return None
    t_feats, _, t_views = (feats, None, views) if teacher is backbone else teacher(batch["images"], batch["instructions"])
    return teacher_targets(t_feats.float(), t_views, teacher.tokens_per_view(image_size), backbone.tokens_per_view(image_size))
