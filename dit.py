"""
D_theta, the action decoder (GR00T N1.5's DiT): tokens [state | future tokens | H noisy actions] -> the
velocity of the action chunk, conditioned on the adapter's h by cross-attention (even blocks) and on the
flow time by adaLN-Zero. Its weights are initialised in model.Policy.init_weights (every init decision there).
"""
import math

import torch
import torch.nn as nn

from attention import MLP, Attention


def timestep_embedding(t, dim):
    """Sinusoidal embedding of integer flow time t (B,) in [0, 1000) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                        # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)   # (B, dim)


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero: the flow time sets shift, scale and gate of both sub-layers,
    so a block whose modulation is zero-initialised starts as the identity. Cross-attention to the
    condition h when `cross` (the even blocks), self-attention otherwise (the odd blocks)."""

    def __init__(self, W, heads, cond_dim, cross):
        super().__init__()
        self.cross = cross
        self.ln1 = nn.LayerNorm(W, elementwise_affine=False)
        self.ln2 = nn.LayerNorm(W, elementwise_affine=False)
        self.attn = Attention(W, heads, kv_dim=cond_dim if cross else None)
        self.mlp = MLP(W, 4 * W)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(W, 6 * W))

    def forward(self, x, temb, h, h_mask):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(temb)[:, None].chunk(6, dim=-1)  # 6 x (B, 1, W)
        y = self.ln1(x) * (1 + scale1) + shift1
        y = self.attn(y, kv=h, kv_mask=h_mask) if self.cross else self.attn(y)
        x = x + gate1 * y
        return x + gate2 * self.mlp(self.ln2(x) * (1 + scale2) + shift2)


class DiT(nn.Module):
    """D_theta: tokens [state | future tokens | H action tokens] -> velocity (B, H, action_dim)."""

    def __init__(self, cfg, cond_dim):
        super().__init__()
        W = cfg.dit_width
        self.state_enc = nn.Sequential(nn.Linear(cfg.state_dim, cfg.state_hidden), nn.SiLU(),
                                       nn.Linear(cfg.state_hidden, W))
        self.future = nn.Parameter(torch.zeros(cfg.future_tokens, W))
        self.action_in = nn.Linear(cfg.action_dim, W)
        self.action_mix = nn.Sequential(nn.Linear(2 * W, W), nn.SiLU(), nn.Linear(W, W))
        self.action_pos = nn.Parameter(torch.zeros(cfg.horizon, W))
        self.time_mlp = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W))
        self.blocks = nn.ModuleList([DiTBlock(W, cfg.dit_heads, cond_dim, cross=(i % 2 == 0))
                                     for i in range(cfg.dit_layers)])
        self.ln_out = nn.LayerNorm(W, elementwise_affine=False)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.head = nn.Linear(W, cfg.action_dim)

    def forward(self, x, t, h, h_mask, q):
        """x (B, H, a) noisy chunk, t (B,) integer flow time in [0, 1000), h (B, N, D) condition,
        h_mask (B, N), q (B, state_dim) normalised state -> velocity (B, H, a)."""
        B, H, _ = x.shape
        tsin = timestep_embedding(t, self.action_in.out_features)                  # (B, W)
        a = self.action_in(x)                                                      # (B, H, W)
        a = self.action_mix(torch.cat([a, tsin[:, None].expand(-1, H, -1)], -1)) + self.action_pos
        tokens = torch.cat([self.state_enc(q)[:, None], self.future.expand(B, -1, -1), a], 1)  # (B, 1+F+H, W)
        temb = self.time_mlp(tsin)                                                 # (B, W)
        for block in self.blocks:
            tokens = block(tokens, temb, h, h_mask)
        shift, scale = self.ada_out(temb)[:, None].chunk(2, dim=-1)
        return self.head(self.ln_out(tokens[:, -H:]) * (1 + scale) + shift)       # (B, H, a)
