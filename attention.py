"""
The transformer layers the policy is built from (model.py): attention through SDPA, the MLP, the adapter's
pre-LN block (with a path that computes the last position's output alone), and merge_zeroed, which lets
RS-CL's second adapter pass keep a sample's zeroed tokens once (see Adapter.summary in model.py). On a CPU in
bf16 the attention is written out (math_attention): faster there than SDPA's fused kernel.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Multi-head attention through SDPA; self-attention when kv is None, else cross-attention to kv."""

    def __init__(self, dim, heads, kv_dim=None, dropout=0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, kv=None, kv_mask=None):
        B, T, C = x.shape
        kv = x if kv is None else kv
        q = self.q(x).view(B, T, self.heads, -1).transpose(1, 2)                # (B, nh, T, hd)
        k, v = self.kv(kv).view(B, kv.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # (B, nh, S, hd)
        mask = None if kv_mask is None else kv_mask[:, None, None, :]           # (B, 1, 1, S): True = attend
        if mask is not None and mask.is_floating_point():                       # or a bias added to the logits
            mask = mask.to(q.dtype)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16 and (self.dropout == 0 or not self.training):
            y = math_attention(q, k, v, mask)
        else:
            y = sdpa(q, k, v, mask, self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, C))                     # (B, T, C)


def sdpa(q, k, v, mask=None, dropout=0.0):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


def math_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(hd) + mask) v, written out: what SDPA computes. Used on a CPU in bf16 (train.py's autocast
    on CPUs with native bf16): at the policy's sizes (a few dozen tokens) SDPA's fused bf16 CPU backward is several
    times slower than this (bench.py's attention case); in float32 SDPA is as fast, and it is kept there."""
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5                         # (B, nh, T, S)
    if mask is not None:
        s = s + mask if mask.is_floating_point() else s.masked_fill(~mask, -math.inf)
    return s.softmax(-1) @ v                                                    # (B, nh, T, hd)


class MLP(nn.Sequential):
    def __init__(self, dim, hidden, out=None, dropout=0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                         nn.Linear(hidden, out or dim))


class Block(nn.Module):
    """Pre-LN transformer block (the adapter's): x + attn(LN(x)), x + mlp(LN(x))."""

    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.mlp = MLP(dim, 4 * dim, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask, last_only=False):
        """x (B, T, D), mask (B, T) -> (B, T, D); last_only: the last position's output alone (B, 1, D),
        its query attending to every token (keys and values from all T, attention and MLP for 1)."""
        y = self.ln1(x)
        x, q = (x[:, -1:], y[:, -1:]) if last_only else (x, y)                # (B, 1 or T, D): the queries' rows
        x = x + self.drop(self.attn(q, kv=y, kv_mask=mask))
        return x + self.drop(self.mlp(self.ln2(x)))


def merge_zeroed(feats, mask, drop, fill=None):
    """Each sample's `drop` tokens replaced by one vector and kept once (Adapter.summary): feats (B, N, D), mask,
    drop (B, N) bool, fill (D,) what a dropped token becomes (None: zeros) -> feats (B, K, D), the other tokens
    then one `fill` token, and a bias (B, K) on the attention logits: 0 attend, -inf not (padding, the other
    copies), log n for the fill token, since n copies of a key weigh n e^s / Z = e^(s + log n) / Z.
    K = N - min_b n_b + 1 (a shape: one host sync)."""
    B, N, D = feats.shape
    drop = drop & mask                                                                     # zeroed real tokens
    n = drop.sum(1, keepdim=True)                                                          # (B, 1)
    K = N if n.is_meta else min(N, N - int(n.min()) + 1)   # the meta device (FLOP counts) has no values: no merge
    order = torch.sort(drop.to(torch.uint8), dim=1, stable=True).indices[:, :K]            # (B, K) kept first
    pos = torch.arange(K, device=feats.device)[None]                                       # (1, K)
    feats = feats.gather(1, order[..., None].expand(-1, -1, D))                              # (B, K, D) kept first
    filled = (pos >= N - n)[..., None]                                                     # (B, K, 1)
    feats = feats.masked_fill(filled, 0.0) if fill is None else torch.where(filled, fill.to(feats.dtype), feats)
    bias = torch.where(mask.gather(1, order) & (pos < N - n), 0.0, -math.inf)
    return feats, torch.where(pos == N - n, n.float().log(), bias)                        # (B, K, D), (B, K)
