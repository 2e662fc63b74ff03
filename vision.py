"""
A trainable copy of the backbone's vision encoder: the other answer to "fine-tuning for actions loses
what the pretrained encoder knew" (RS-CL and --align keep the encoder frozen and shape the adapter).

    python train.py --train-vision --vision-lr 1e-4      # the encoder fine-tuned with the policy
    python train.py --dual-encoder --rscl               # frozen + trainable, side by side

    --train-vision   feats = E'(images)                           the paper's "SigLIP2 unfrozen" setting
    --dual-encoder   feats = W [E(images) ; E'(images)] + b       "Preserving Pretrained Representations"
                                                                  (arXiv 2509.11417), per token
    E: the frozen backbone (backbone.py), untouched. E': a copy of its vision encoder, started from the same
    pretrained weights and trained with its own learning rate (--vision-lr). W (D, 2D) starts as [I/2, I/2]
    and b as 0: at step 0 both halves are equal, so a dual policy starts from exactly the frozen features.

What E' is, by backbone family:
    dinov2-s, siglip2   the whole backbone (it is a vision encoder): E' replaces it token for token
    Qwen2.5-VL          the vision tower (model.visual, with its merger). Its image tokens then pass the frozen
                        LLM layers 1..k, so the features keep the backbone's layout (text tokens included), and
                        the gradient reaches E' through them (their weights stay frozen)
No feature cache is possible (E' changes at every step): train.py refuses --cache-features with these flags.
"""
import copy
from contextlib import contextmanager

import torch
import torch.nn as nn

from backbone import siglip_features
from dinov2 import dinov2_features


class TrainableVision(nn.Module):
    """E' (and, with dual, the fusion W) for a frozen Backbone. It keeps no reference to the backbone (whose
    weights are not in checkpoints): the backbone is passed to forward."""

    def __init__(self, backbone, dual):
        super().__init__()
        self.family, self.dual = backbone.family, dual
        src = backbone.model.visual if self.family == "qwen2.5-vl" else backbone.model
        if any(p.is_meta for p in src.parameters()):
            raise ValueError("--train-vision/--dual-encoder need the backbone's weights (built without them here)")
        self.encoder = copy.deepcopy(src).float().requires_grad_(True)   # fp32 master weights, like the adapter
        D = backbone.dim
        self.fuse = nn.Linear(2 * D, D) if dual else None               # init: Policy.init_weights

    def forward(self, backbone, images, instructions, frozen=None):
        """images (B, V, H, W, 3) uint8, instructions list[str], frozen: the backbone's (feats, mask, views)
        (needed with dual) -> (feats (B, N, D), mask (B, N), views (B, V, 2)), differentiable in E' (and W)."""
        feats, mask, views = self.features(backbone, images, instructions)        # (B, N, D) from E'
        if not self.dual:
            return feats, mask, views
        f0 = frozen[0].to(feats.dtype)                                            # (B, N, D) from E, no grad
        return self.fuse(torch.cat([f0, feats], dim=-1)), mask, views            # (B, N, 2D) -> (B, N, D)

    def features(self, backbone, images, instructions):
        """E' in the backbone's place: the same preprocessing and output layout as backbone(images, ...)."""
        if self.family == "dinov2":
            return dinov2_features(self.encoder, images, backbone.pool)
        if self.family == "siglip":
            px = backbone.prepare(images, instructions)["pixel_values"].to(next(self.encoder.parameters()).device)
            return siglip_features(self.encoder, px, len(instructions), images.shape[1])
        with tower(backbone.model, self.encoder):                                 # Qwen2.5-VL: E' -> frozen LLM
            return backbone._forward(images, instructions)                        # (grad on: not under no_grad)


@contextmanager
def tower(vlm, encoder):
    """The VLM with `encoder` as its vision tower for the duration (get_image_features calls vlm.visual), then
    its own frozen tower back. The frozen tower's weights are neither changed nor given gradients."""
    frozen = vlm.visual
    vlm.visual = encoder
    try:
        yield
    finally:
        vlm.visual = frozen
