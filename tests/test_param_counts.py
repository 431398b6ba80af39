"""Policy sizes, pinned: at paper width (Qwen2.5-0.5B shapes, DINOv2-L + SigLIP-so400m, built on the
meta device from configs, nothing downloaded) FocusVLA's policy is the paper's 239.1M (Tab. 3), and
VLA-Adapter's two released blocks give what their code gives; at tiny scale, the sizes the ablation
tables report. "Policy" is everything outside the VLM: action head, blocks, proprio and raw-feature
projectors (the ActionQuery embeddings count with the VLM, as VLA-Adapter trains them there)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vla_agents.policies import build_model, load_recipe

QWEN25_05B = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32768, tie_word_embeddings=True)
SIGLIP_SO400M = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                     num_attention_heads=16, patch_size=14, image_size=224)
DINOV2_L_REG = dict(model_type="dinov2_with_registers", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                    patch_size=14, image_size=518, num_register_tokens=4)
PAPER_WIDTH = {"llm": QWEN25_05B, "vision": {"siglip": SIGLIP_SO400M, "dinov2": DINOV2_L_REG}}


def policy_parameters(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.") and n != "action_queries.weight")


def paper_width(policy: str, **overrides) -> nn.Module:
    with torch.device("meta"):
        return build_model(load_recipe(policy, "paper", overrides), PAPER_WIDTH)


def test_focusvla_policy_matches_the_papers_239_1m_at_paper_width() -> None:
    model = paper_width("focusvla")
    assert model.backbone.dim == 896 and len(model.blocks) == 24 and model.raw_projector[1].in_features == 2176
    total = policy_parameters(model)
    proprio = sum(p.numel() for p in model.proprio_projector.parameters())
    assert total == 239_876_999 and total - proprio == 239_065_223  # fc1 + 24 blocks + fc2 + raw projector: 239.07M
    assert abs(total - 239.1e6) / 239.1e6 < 0.02
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    assert per_block == 12 * 896 * 896 + 10 * 896 + 2 * 896  # 12 d x d matrices, their biases, the FFN's LayerNorm


@pytest.mark.parametrize("variant, expected", [("pro", 180_097_823), ("original", 102_941_471)])
def test_vla_adapter_sizes_at_paper_width(variant: str, expected: int) -> None:
    """Pro: q, o and K/V per source (the released block's unused `film_gen` left out, 38.6M); original:
    shared q, k, v, o. Both with fc1, fc2 and the proprio projector."""
    model = paper_width("vla_adapter", variant=variant)
    assert policy_parameters(model) == expected


def test_v1_focusvla_layout_was_317m() -> None:
    assert policy_parameters(paper_width("focusvla", layout="v1")) == 317_033_351


@pytest.mark.parametrize("policy, overrides, expected", [
    ("vla_adapter", {"variant": "pro"}, 730_891), ("vla_adapter", {"variant": "original"}, 466_699),
    ("focusvla", {}, 944_775), ("focusvla", {"layout": "v1"}, 1_208_967),
])
def test_tiny_sizes(policy: str, overrides: dict, expected: int) -> None:
    with torch.device("meta"):
        # the architecture alone: random init with the byte-level vocabulary, not the shipped backbone's words
        model = build_model(load_recipe(policy, "tiny", {**overrides, "backbone_path": None}))
    assert policy_parameters(model) == expected
