"""
The RS-CL policy, GR00T-N1.5 style (the DiT action decoder is in dit.py):

    images (V views) + instruction --> frozen VLM, cut after layer k --> feats (B, N, D)
        [+ learnable summarization token u appended at the end]
    --> adapter f_phi (LayerNorm + pre-LN self-attention blocks) --> h (B, N, D) and w (B, D)
    h --> DiT action decoder D_theta --> velocity of the action chunk (flow matching)
    w --> projector g_psi (2-layer MLP) --> z (B, 128)            (RS-CL only, see loss.py)
    h at the image tokens --> frozen random P --> cos to a frozen teacher   (--align only, see align.py)
    feats from a trainable copy of the vision encoder, or both side by side   (--train-vision, --dual-encoder: vision.py)

Flow-time convention, stated once (GR00T's): tau = 0 is noise, tau = 1 is data,
    x_tau = (1 - tau) * eps + tau * A,   target velocity v = A - eps,
and inference integrates dx/dtau = v from tau = 0 to 1 with K Euler steps.

The backbone file `backbone.py` holds everything transformers; this file is the trainable policy.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from align import projector, view_tokens
from attention import Block, cutoff_layout
from backbone import Backbone, BACKBONES
from dit import DiT
from loss import align_loss, cutoff_mask, rscl_diagnostics, soft_infonce, soft_weights
from runfolder import load_checkpoint
from vision import TrainableVision

# -----------------------------------------------------------------------------
# configuration: the model's shape in one dataclass, named sizes in a plain dict

SIZES = {
    # trains on a 2-core CPU in minutes
    "tiny": dict(adapter_layers=2, adapter_width=128, adapter_heads=4, dit_layers=4, dit_width=128, dit_heads=4,
                 future_tokens=4, state_hidden=128, proj_hidden=256),
    # GR00T N1.5: adapter 4 blocks at the backbone width (32 heads), DiT 16 blocks x 1536 (32 heads x 48)
    "paper": dict(adapter_layers=4, adapter_heads=32, dit_layers=16, dit_width=1536, dit_heads=32,
                  future_tokens=32, state_hidden=1024, proj_hidden=2048, align_hidden=2048),
}


@dataclass
class PolicyConfig:
    backbone: str = "tiny"           # a key of BACKBONES
    backbone_path: str = ""          # local folder with the weights ("" = the hub id)
    layer: int = -1                  # LLM layer whose output is the feature (-1 = the backbone's default)
    token_pool: int = 1              # dinov2-s: average-pool p x p patch tokens (fewer tokens, cheaper adapter)
    size: str = "tiny"               # a key of SIZES
    cameras: list = field(default_factory=lambda: ["agentview", "frontview", "robot0_eye_in_hand"])
    image_size: int = 128
    state_dim: int = 10              # q: eef xyz + 6D rotation + gripper
    action_dim: int = 7
    horizon: int = 16                # H, actions per chunk
    adapter_layers: int = 2
    adapter_width: int = 0           # 0 = the backbone width D (GR00T); else a Linear D -> width first (CPU sizes)
    adapter_heads: int = 4
    adapter_dropout: float = 0.2
    adapter_pos: bool = False        # a learned embedding per token slot (GR00T: none); vision-only backbones
    dit_layers: int = 4
    dit_width: int = 128
    dit_heads: int = 4
    future_tokens: int = 4
    state_hidden: int = 128
    proj_hidden: int = 256           # g_psi hidden width (paper: 2048)
    proj_dim: int = 128              # z dimension
    euler_steps: int = 4             # K
    align_dim: int = 0               # --align: the teacher's width D_t (0: no alignment projector)
    align_hidden: int = 512          # the frozen projector P's hidden width (paper: 2048)
    align_seed: int = 0              # P's weights are drawn from this fixed seed (and saved in the checkpoint)
    vision: str = "frozen"           # frozen | train (--train-vision) | dual (--dual-encoder): see vision.py


def make_config(**kw):
    """PolicyConfig from a size preset plus overrides (unknown size -> ValueError listing the valid ones)."""
    size = kw.get("size", "tiny")
    if size not in SIZES:
        raise ValueError(f"unknown size '{size}': choose one of {', '.join(SIZES)}")
    if kw.get("backbone", "tiny") not in BACKBONES:
        raise ValueError(f"unknown backbone '{kw['backbone']}': choose one of {', '.join(BACKBONES)}")
    if kw.get("vision", "frozen") not in ("frozen", "train", "dual"):
        raise ValueError(f"unknown vision mode '{kw['vision']}': choose frozen, train or dual")
    return PolicyConfig(**{**SIZES[size], **kw})

# -----------------------------------------------------------------------------
# the adapter and the flow


class Adapter(nn.Module):
    """f_phi: LayerNorm (+ a Linear D_in -> D when the adapter is narrower than the backbone) + pre-LN
    self-attention blocks over [feats | u]; no positional embedding of its own (the backbone's tokens carry it)."""

    def __init__(self, D_in, D, layers, heads, dropout, n_pos=0):
        super().__init__()
        self.ln = nn.LayerNorm(D_in)
        self.proj_in = nn.Linear(D_in, D) if D != D_in else nn.Identity()
        self.u = nn.Parameter(torch.zeros(D))   # the summarization token (init in Policy.init_weights)
        # optional: which slot (view, row, column) a token came from, for backbones whose tokens do not say it
        self.pos = nn.Parameter(torch.zeros(n_pos, D)) if n_pos else None
        self.blocks = nn.ModuleList([Block(D, heads, dropout) for _ in range(layers)])
        self.dropout = dropout

    def embed(self, feats):
        """feats (B, N, D_in) -> the blocks' token inputs (B, N, D): LayerNorm, the Linear to D, the slot embedding."""
        x = self.proj_in(self.ln(feats))                                                   # (B, N, D)
        return x + self.pos.to(x.dtype) if self.pos is not None else x                     # (N, D) per slot

    def tokens(self, x, mask):
        """[x | u] (B, N+1, D) and its mask (B, N+1) (bool, or a float bias: 0 = attend): the blocks' input."""
        x = torch.cat([x, self.u.expand(x.shape[0], 1, -1).to(x.dtype)], dim=1)           # (B, N+1, D)
        attend_u = mask.new_ones(x.shape[0], 1) if mask.dtype == torch.bool else mask.new_zeros(x.shape[0], 1)
        return x, torch.cat([mask, attend_u], dim=1)                                       # (B, N+1)

    def forward(self, feats, mask, x=None):
        """feats (B, N, D_in), mask (B, N) bool -> h (B, N, D) (every position but u), w (B, D) (u's).
        x: embed(feats), where the caller has it already."""
        x, mask = self.tokens(self.embed(feats) if x is None else x, mask)
        for block in self.blocks:
            x = block(x, mask)
        return x[:, :-1], x[:, -1]

    def pair(self, x, mask, drop):
        """RS-CL's two adapter passes at once: forward(feats, mask) and forward(feats.masked_fill(drop[..., None], 0),
        mask)[1], from x = embed(feats) (B, N, D) and drop (B, N) bool -> h (B, N, D), w (B, D), w_tilde (B, D).
        RS-CL reads only u's output of the cut-off pass: the last block computes it alone (its query attending to
        every token). A zeroed token enters the blocks as embed(0) and, without dropout (each copy draws its own
        mask) or slot embeddings, a sample's zeroed tokens are then one vector at every block: both passes run as
        one packed sequence (attention.cutoff_layout). Its first block reads [x | u | embed(0)]: a kept token enters
        the cut-off pass as it enters the clean one, so their LayerNorm, keys and values are shared; after it, each
        pass attends to its own rows (a block-diagonal bias). Equal to the two passes (tests/test_policy.py), faster."""
        B, N, D = x.shape
        fill = self.embed(x.new_zeros(1, 1, self.ln.normalized_shape[0]))   # (1, 1 or N, D) a zeroed token's input
        if self.training and self.dropout > 0 or self.pos is not None:    # the cut-off pass on its own
            h, w = self(None, mask, x=x)
            x, mask = self.tokens(torch.where(drop[..., None], fill, x), mask)   # (B, N+1, D)
            for block in self.blocks[:-1]:
                x = block(x, mask)
            return h, w, self.blocks[-1](x, mask, rows=torch.full((B, 1), N, device=x.device))[:, 0]   # u alone
        rows, clean, cut = cutoff_layout(mask, drop)                       # (B, T2), (B, N+2) x2
        T1, T2 = N + 1, rows.shape[1]
        x = torch.cat([self.tokens(x, mask)[0], fill.expand(B, 1, D)], 1)    # (B, N+2, D) the source
        rows = torch.cat([torch.arange(T1, device=x.device).expand(B, T1), rows], 1)   # (B, T1+T2) the queries
        bias = torch.cat([clean[:, None].expand(-1, T1, -1), cut[:, None].expand(-1, T2, -1)], 1)
        inner = bias.new_full((B, T1 + T2, T1 + T2), -math.inf)           # after the first block: block-diagonal
        inner[:, :T1, :T1], inner[:, T1:, T1:] = clean[:, None, :T1], cut.gather(1, rows[:, T1:])[:, None]
        for l, block in enumerate(self.blocks):
            if l == len(self.blocks) - 1:                                  # the clean rows and the cut-off u
                keep = torch.cat([torch.arange(T1, device=x.device), torch.tensor([T1 + T2 - 1], device=x.device)])
                rows, bias = (rows[:, keep] if rows is not None else keep.expand(B, -1)), bias[:, keep]
            x = block(x, bias, rows)                                       # (B, T1+T2 or T1+1, D)
            rows, bias = None, inner
        return x[:, :N], x[:, N], x[:, -1]


def masked_mean(x, mask):
    """x (B, N, D), mask (B, N) True = real token -> the mean over real tokens (B, D)."""
    m = mask[..., None].to(x.dtype)                                  # (B, N, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1)


def flow_path(A, eps, tau):
    """The straight path from noise (tau = 0) to data (tau = 1): x_tau and its velocity dx/dtau."""
    return (1 - tau) * eps + tau * A, A - eps


def euler(velocity, x, K):
    """Integrate dx/dtau = velocity(x, tau) from tau = 0 (noise) to tau = 1 (data) in K equal steps."""
    for k in range(K):
        x = x + velocity(x, k / K) / K
    return x

# -----------------------------------------------------------------------------
# the policy


class Policy(nn.Module):

    def __init__(self, cfg: PolicyConfig, backbone=None, device="cpu"):
        super().__init__()
        self.cfg = cfg
        # the frozen backbone (None when training from cached features, see features.py)
        self.backbone = backbone if backbone is not None else Backbone(cfg.backbone, cfg.backbone_path,
                                                                        cfg.layer, device=device, pool=cfg.token_pool)
        D = cfg.adapter_width or self.backbone.dim                       # the width of h and w
        n_pos = 0
        if cfg.adapter_pos:   # only where every sample has the same N tokens: the image-only encoders
            if self.backbone.family == "qwen2.5-vl":
                raise ValueError("--adapter-pos needs a fixed token count: use it with dinov2-s or siglip2, not a VLM")
            n_pos = self.backbone.tokens_per_view(cfg.image_size) * len(cfg.cameras)
        self.adapter = Adapter(self.backbone.dim, D, cfg.adapter_layers, cfg.adapter_heads, cfg.adapter_dropout, n_pos)
        self.projector = nn.Sequential(nn.Linear(D, cfg.proj_hidden), nn.GELU(), nn.Linear(cfg.proj_hidden, cfg.proj_dim))
        self.dit = DiT(cfg, cond_dim=D)
        # --train-vision / --dual-encoder: E', a trainable copy of the vision encoder (the backbone stays frozen)
        self.vision = TrainableVision(self.backbone, dual=cfg.vision == "dual") if cfg.vision != "frozen" else None
        # --align: P, frozen (requires_grad False: not in the optimizer) but a submodule, so it is saved and restored;
        # made without drawing from the run's RNG stream (its weights: init_weights, from cfg.align_seed)
        with torch.random.fork_rng(devices=[]):
            self.align_proj = projector(D, cfg.align_hidden, cfg.align_dim) if cfg.align_dim else None
        # min-max statistics of q and A, buffers so that they travel in the checkpoint (set by set_stats)
        for name, dim in (("q", cfg.state_dim), ("a", cfg.action_dim)):
            self.register_buffer(f"{name}_min", -torch.ones(dim))
            self.register_buffer(f"{name}_max", torch.ones(dim))
        self.init_weights()
        self.to(device)

    def init_weights(self):
        """Every init decision of the trainable parts, in one place (never touches the backbone)."""
        for name, m in self.named_modules():
            if name.startswith(("backbone", "align_proj", "vision.encoder")):   # frozen, seeded, or pretrained
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.adapter.u, std=0.02)
        if self.adapter.pos is not None:
            nn.init.normal_(self.adapter.pos, std=0.02)
        nn.init.normal_(self.dit.future, std=0.02)
        nn.init.normal_(self.dit.action_pos, std=0.02)
        # adaLN-Zero: every DiT block starts as the identity and the initial velocity is exactly 0
        for block in self.dit.blocks:
            nn.init.zeros_(block.ada[-1].weight); nn.init.zeros_(block.ada[-1].bias)
        nn.init.zeros_(self.dit.ada_out[-1].weight); nn.init.zeros_(self.dit.ada_out[-1].bias)
        nn.init.zeros_(self.dit.head.weight); nn.init.zeros_(self.dit.head.bias)
        if self.vision is not None and self.vision.fuse is not None:   # --dual-encoder: W = [I/2, I/2], b = 0, so
            nn.init.zeros_(self.vision.fuse.bias)                     # W [f ; f'] = f while E' equals E (step 0)
            with torch.no_grad():
                self.vision.fuse.weight.copy_(torch.eye(self.backbone.dim).repeat(1, 2) / 2)   # (D, 2D)
        # the frozen random projector P: PyTorch's default init under its own seed, so it is the same P whatever the
        # run's seed and the global RNG stream is left untouched (an align run draws the same noise as the baseline)
        if self.align_proj is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.align_seed)
                for m in self.align_proj:
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()

    def train(self, mode=True):
        super().train(mode)
        self.backbone.train(False)   # frozen means frozen: eval mode always (no dropout)
        if self.align_proj is not None:
            self.align_proj.train(False)
        return self

    def trainable_state_dict(self):
        """Everything but the frozen backbone (its weights come from the hub or --backbone-path); the frozen
        align projector P is kept (a few MB), so a checkpoint restores it exactly."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    # --- normalisation: min-max to [-1, 1] ---
    def get_stats(self):
        """The min-max statistics in use (its buffers: on resume, the checkpoint's, not the file's)."""
        return {k: getattr(self, k).tolist() for k in ("q_min", "q_max", "a_min", "a_max")}

    def set_stats(self, stats):
        for k in ("q_min", "q_max", "a_min", "a_max"):
            getattr(self, k).copy_(torch.as_tensor(stats[k], dtype=torch.float32))

    def normalize(self, x, name):
        """x (..., d) raw -> [-1, 1] over the training range; a constant dimension (min == max) -> x - v."""
        lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
        flat = hi - lo < 1e-6
        return torch.where(flat, x - lo, 2 * (x - lo) / (hi - lo).clamp_min(1e-6) - 1)

    def unnormalize(self, x, name):
        """The inverse of normalize, except that a dimension constant in the training data comes out as exactly its
        constant v: the decoder's error there never reaches the robot (Lift's expert never turns about x or y)."""
        lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
        flat = hi - lo < 1e-6
        return torch.where(flat, lo.expand_as(x), (x + 1) / 2 * (hi - lo).clamp_min(1e-6) + lo)

    # --- the training objective ---
    def forward(self, feats, mask, views, q, A, rscl="none", cutoff_kind="view", beta=1.0, tau=0.2, beta_scale="none",
                rscl_on="u", teacher=None, pixels=None):
        """feats (B, N, D) backbone features, mask (B, N), views (B, V, 2) token slice of each view,
        q (B, 10) and A (B, H, a) normalised to [-1, 1].
        rscl: 'none' (baseline), 'proprio' (RS-CL), 'infonce' (identity targets), 'action' (next-action weights).
        rscl_on: 'u' (the paper: the summarization token's output w) or 'pooled-h' (the mean of h over real
        tokens, the representation CKNNA measures). teacher (B, V*n, D_t): a frozen teacher's features at the n image
        tokens of each view (align.teacher_targets), or None (no alignment). pixels: (images, instructions), which
        the trainable vision encoder reads (--train-vision, --dual-encoder: feats are then computed here).
        Returns a dict of scalars: loss_fm, loss_rscl and its diagnostics, loss_align and align_cos."""
        feats, mask, views = self.inputs(feats, mask, views, pixels)    # E' runs inside forward (DDP sees it)
        # --- the random draws: the flow time and noise (tau = 0 noise, tau = 1 data), then RS-CL's cutoff ---
        B = A.shape[0]
        one = torch.ones((), device=A.device)                            # sampled on the device: no host sync
        u = torch.distributions.Beta(1.5 * one, one).sample((B,))
        tau_fm = (0.999 - u) / 0.999                                     # (B,), skewed towards noise
        x, v_target = flow_path(A, torch.randn_like(A), tau_fm[:, None, None])
        drop = cutoff_mask(feats, mask, views, cutoff_kind) if rscl != "none" else None   # (B, N) tokens zeroed
        # --- the adapter; RS-CL's second pass on the cut-off features (no second backbone pass) ---
        e = self.adapter.embed(feats)                                    # (B, N, D) the blocks' token inputs
        if drop is not None and rscl_on == "u":                          # on u: only u's output is needed, and
            h, w, w_tilde = self.adapter.pair(e, mask, drop)             # both passes run as one (B, N, D), (B, D) x2
        else:
            h, w = self.adapter(feats, mask, x=e)                        # (B, N, D), (B, D)
        if drop is not None and rscl_on == "pooled-h":                   # on mean-pooled h: every token's output
            h_tilde, _ = self.adapter(feats.masked_fill(drop[..., None], 0.0), mask)
            w, w_tilde = masked_mean(h, mask), masked_mean(h_tilde, mask)   # (B, D) each
        # --- flow matching ---
        v = self.dit(x, (tau_fm * 1000).long(), h, mask, q)              # (B, H, a)
        out = {"loss_fm": F.mse_loss(v.float(), v_target.float())}
        if teacher is not None:   # --- alignment to a frozen teacher: h at each view's n image tokens, through P ---
            if self.align_proj is None:
                raise ValueError("teacher features given to a policy without an align projector (cfg.align_dim 0)")
            n = teacher.shape[1] // views.shape[1]                       # tokens per view
            p = self.align_proj(view_tokens(h, views, n).flatten(1, 2))   # (B, V*n, D_t)
            real = view_tokens(mask[..., None], views, n).flatten(1)      # (B, V*n)
            out["loss_align"] = align_loss(p.float(), teacher.float(), real)
            out["align_cos"] = -out["loss_align"].detach()               # the mean cosine, for the log
        if rscl == "none":
            return out
        # --- RS-CL: soft InfoNCE between w and w_tilde through the projector ---
        z, z_tilde = self.projector(torch.cat([w, w_tilde])).chunk(2)   # (B, 128) each, one call
        target = {"proprio": q, "action": A[:, 0], "infonce": None}[rscl]   # A[:, 0]: the next action
        W = soft_weights(target, beta, B, z.device, beta_scale)          # (B, B): loss.rscl_loss, W computed once
        out["loss_rscl"] = soft_infonce(z.float(), z_tilde.float(), W, tau)
        out.update(rscl_diagnostics(z, z_tilde, W, out["loss_rscl"]))
        return out

    def inputs(self, feats, mask, views, pixels=None):
        """The adapter's inputs from the backbone's (feats, mask, views): those, or with a trainable encoder E'
        (vision.py) its features, alone (--train-vision: the backbone's may be None) or fused with them; pixels:
        (images, instructions), which E' reads."""
        if self.vision is None:
            return feats, mask, views
        return self.vision(self.backbone, *pixels, frozen=(feats, mask, views))

    # --- inference ---
    @torch.no_grad()
    def encode(self, images, instructions):
        """images (B, V, H, W, 3) uint8, instructions list[str] -> dict(feats, mask, views, h, w, z)."""
        frozen = (None,) * 3 if self.cfg.vision == "train" else self.backbone(images, instructions)   # E' alone: no E
        feats, mask, views = self.inputs(*frozen, pixels=(images, instructions))
        h, w = self.adapter(feats, mask)
        return dict(feats=feats, mask=mask, views=views, h=h, w=w, z=self.projector(w))

    @torch.no_grad()
    def predict(self, images, q, instructions, K=None, noise=1.0):
        """images (B, V, H, W, 3) uint8, q (B, 10) raw proprio, instructions list[str]
        -> actions (B, H, action_dim) in env units. The condition h is computed once for all K steps.
        noise: the std of the starting point x0 of the Euler integration. 1 draws a sample from the learned
        chunk distribution (GR00T); 0 follows the one path that starts at the centre of the noise, the same
        chunk for the same input (deterministic)."""
        c = self.encode(images, instructions)
        qn = self.normalize(q.to(c["h"].device).float(), "q")
        B = qn.shape[0]
        x0 = noise * torch.randn(B, self.cfg.horizon, self.cfg.action_dim, device=qn.device)
        velocity = lambda x, tau: self.dit(x, torch.full((B,), int(tau * 1000), device=qn.device),
                                           c["h"], c["mask"], qn).float()
        return self.unnormalize(euler(velocity, x0, K or self.cfg.euler_steps), "a")

    # --- checkpoints: the one way to rebuild a trained policy ---
    @classmethod
    def from_checkpoint(cls, path, device="cpu", backbone=None, weights="auto"):
        """weights: raw (the trained ones), ema (train.py --ema's average; refused if absent), auto (ema if saved)."""
        ckpt = load_checkpoint(path)
        cfg = PolicyConfig(**ckpt["model_config"])
        policy = cls(cfg, backbone=backbone, device=device)
        policy.load_trainable(ckpt["model"])
        if weights == "ema" and not ckpt.get("ema"):
            raise ValueError(f"checkpoint {path} holds no EMA weights (trained without --ema): use its raw weights")
        if weights != "raw" and ckpt.get("ema"):
            with torch.no_grad():
                for n, p in policy.named_parameters():
                    if n in ckpt["ema"]:
                        p.copy_(ckpt["ema"][n])
        policy.weights = "ema" if weights != "raw" and ckpt.get("ema") else "raw"
        policy.train_config = ckpt.get("config", {})   # train.py's flags: how its data was read (layouts.run_layout)
        return policy.eval()

    def load_trainable(self, state):
        mine = self.trainable_state_dict()
        missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
        bad = [k for k in mine if k in state and mine[k].shape != state[k].shape]
        if missing or extra or bad:
            raise ValueError(f"checkpoint does not fit this configuration (missing {missing[:3]}, "
                             f"unexpected {extra[:3]}, shape mismatch {bad[:3]}): use the same --backbone/--size/--cameras")
        result = self.load_state_dict(state, strict=False)
        assert all(k.startswith("backbone.") for k in result.missing_keys)   # only the backbone is absent

