"""
Qwen2.5-VL built without the hub: the `tiny` model's config and byte-level tokenizer, and the published
3B / 7B architectures for --random-init (seeded random weights: benchmarks, FLOP counts, no download).
Used by backbone.py's build_qwen; nothing happens at import time.
"""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]


# the published architectures (the hub repos' config.json), for --random-init where nothing can be downloaded
ARCH = {
    "qwen2.5-vl-3b": dict(text=dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                                    intermediate_size=11008, vocab_size=151936, tie_word_embeddings=True),
                          vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048)),
    "qwen2.5-vl-7b": dict(text=dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                    intermediate_size=18944, vocab_size=152064),
                          vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584)),
}


def random_init_qwen_config(name):
    """The real architecture of `name` with the tiny tokenizer's special-token ids (random weights)."""
    from transformers import Qwen2_5_VLConfig
    a = ARCH[name]
    return Qwen2_5_VLConfig(
        text_config=dict(**a["text"], rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24]),
                         bos_token_id=256, eos_token_id=258, pad_token_id=256),
        vision_config=dict(**a["vision"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
        image_token_id=261, video_token_id=262, vision_start_token_id=259, vision_end_token_id=260)


def tiny_qwen_config():
    """A 4-layer Qwen2.5-VL (text width 128, vision width 64) whose token ids match tiny_tokenizer()."""
    from transformers import Qwen2_5_VLConfig
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=263, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 6, 6]),
                         bos_token_id=256, eos_token_id=258, pad_token_id=256),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           out_hidden_size=128, fullatt_block_indexes=[1]),
        image_token_id=261, video_token_id=262, vision_start_token_id=259, vision_end_token_id=260)


def tiny_tokenizer():
    """Byte-level tokenizer (256 byte tokens, no merges) plus Qwen's special tokens: ids 256..262."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=SPECIAL_TOKENS,
                                   pad_token="<|endoftext|>")
