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
