"""
The transformer layers the policy is built from (model.py): attention through SDPA, the MLP, the adapter's
pre-LN block (which can compute the outputs of chosen positions alone), and cutoff_layout, which lays RS-CL's
cut-off pass beside the clean one so that both run as one packed sequence (see Adapter.pair in model.py). On a
CPU in bf16 the attention is written out (math_attention): faster there than SDPA's fused kernel.
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
        mask = kv_mask if kv_mask is None or kv_mask.dim() == 3 else kv_mask[:, None]   # (B, S) for every query
        mask = None if mask is None else mask[:, None]                          # (B, 1, 1 or T, S): True = attend
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

    def forward(self, x, mask, rows=None):
        """x (B, S, D), mask (B, S) or (B, T, S) per query -> (B, T, D): the outputs at `rows` (B, T) long, positions
        of x (a position may come twice), each query attending to the S tokens (keys and values from all S,
        attention and MLP for the T rows); rows None: every position (T = S)."""
        y = self.ln1(x)
        if rows is not None:                                                  # the queries' rows
            x, q = (t.gather(1, rows[..., None].expand(-1, -1, t.shape[-1])) for t in (x, y))   # (B, T, D)
        else:
            q = y
        x = x + self.drop(self.attn(q, kv=y, kv_mask=mask))
        return x + self.drop(self.mlp(self.ln2(x)))


def cutoff_layout(mask, drop):
    """Where RS-CL's cut-off pass sits beside the clean one when the adapter runs both as one sequence (Adapter.pair),
    for a cutoff whose zeroed tokens are all one vector. mask (B, N) real tokens, drop (B, N) the tokens the cutoff
    zeroes. The first block reads a source of N + 2 rows, [the N tokens | u | the fill (a zeroed token)]. Returns
      rows (B, T2) long: the cut-off pass's positions in the source: the kept tokens first (they are the clean
        pass's own rows), then the fill, then unused positions (masked), then u; T2 = N - min_b n_b + 2 (a shape:
        one host sync), n_b the zeroed real tokens of sample b;
      clean, cut (B, N + 2): the attention biases of the clean pass's queries and of the cut-off pass's (0 attend,
        -inf not) over the source's keys. A sample's n zeroed tokens are one key with bias log n, since n copies of
        a key weigh n e^s / Z = e^(s + log n) / Z. cut.gather(1, rows) is the cut-off pass's bias over its own rows."""
    B, N = mask.shape
    drop = drop & mask                                                          # zeroed real tokens
    n = drop.sum(1, keepdim=True)                                               # (B, 1)
    K = N if n.is_meta else min(N, N - int(n.min()) + 1)   # the meta device (FLOP counts) has no values
    order = torch.sort(drop.to(torch.uint8), dim=1, stable=True).indices[:, :K]   # (B, K) kept first
    pos = torch.arange(K, device=mask.device)[None]                             # (1, K)
    rows = torch.where(pos == N - n, N + 1, order)                              # the fill at N - n; after it, the
    u = torch.zeros(B, 1, device=mask.device)                                  # zeroed tokens (masked in cut)
    clean = torch.cat([torch.where(mask, 0.0, -math.inf), u, u - math.inf], 1)   # (B, N + 2): no fill
    cut = torch.cat([torch.where(mask & ~drop, 0.0, -math.inf), u, n.float().log()], 1)   # log 0 = -inf: no fill
    return torch.cat([rows, torch.full_like(u, N, dtype=torch.long)], 1), clean, cut
