"""Tiny decoders of the three supported RoPE families, built from configs (random weights).

Llama (the text side of LLaVA, Idefics3/SmolVLM), Qwen2-VL (3-D mrope) and Gemma 3 (mixed
sliding-window and full-attention layers). fp32, eval mode, 2-4 layers.
"""
from __future__ import annotations

import torch


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [4, 2, 2]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=1, in_channels=3),
        image_token_id=120, video_token_id=121, vision_start_token_id=122)
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(cfg).eval()


def gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                           layer_types=["sliding_attention", "full_attention"] * 2,
                           max_position_embeddings=512)
    torch.manual_seed(0)
    return Gemma3ForCausalLM(cfg).eval()


BUILDERS = {"llama": llama, "qwen2_vl": qwen2_vl, "gemma3": gemma3}


def positions(model, start: int, n: int, mrope_offsets: bool = False) -> torch.Tensor:
    """Position ids for n tokens from ``start``: [1, n], or [3, 1, n] for mrope.

    With ``mrope_offsets`` the h and w components differ from t inside the chunk, as image
    tokens' do, so the test exercises the three bands separately.
    """
    p = torch.arange(start, start + n)[None]
    if "qwen2_vl" not in model.config.model_type:
        return p
    pos = p[None].expand(3, 1, n).clone()
    if mrope_offsets:
        pos[1] = start + torch.arange(n) // 2
        pos[2] = start + torch.arange(n) % 2
    return pos
