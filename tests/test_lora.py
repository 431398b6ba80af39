"""Paper-scale trainable set: LoRA on every linear layer of the whole VLM, vision towers and projector
included (VLA-Adapter's finetune.py: `target_modules="all-linear"` on the VLA), their own weights
frozen, everything outside the VLM trained in full; agents saved before issue 37 keep LoRA on the
language model only."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from peft.tuners.lora import LoraLayer
from torch import nn

from vla_agents.agent import load_agent, make_agent

from test_agent import raw_obs, stats


def linear_layers(module: nn.Module) -> set[str]:
    inside_mha = [n for n, m in module.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return {n for n, m in module.named_modules()
            if isinstance(m, nn.Linear) and not any(n.startswith(f"{mha}.") for mha in inside_mha)}


def test_lora_adapts_every_linear_layer_of_the_vlm(tmp_path: Path, tiny_hf_models: dict[str, str]) -> None:
    agent = make_agent("vla_adapter", scale="paper", stats=stats(), image_size=28, film=True, **tiny_hf_models)
    backbone = agent.model.backbone
    parts = {"llm": backbone.llm.model, "siglip": backbone.vision.siglip, "dinov2": backbone.vision.dinov2,
             "projector": backbone.projector}
    before = {name: linear_layers(part) for name, part in parts.items()}
    assert all(before.values())
    agent.enable_lora(rank=4, alpha=8)
    for name, part in parts.items():
        adapted = {n for n, m in part.named_modules() if isinstance(m, LoraLayer)}
        assert adapted == before[name], name
        assert all(p.requires_grad == ("lora_" in n) for n, p in part.named_parameters()), name
    outside = [p for n, p in agent.model.named_parameters() if not n.startswith("backbone.")]
    assert outside and all(p.requires_grad for p in outside)  # ActionQueries, policy, proprio projector
    assert all(p.requires_grad for p in backbone.film.parameters())  # OFT+'s FiLM is new, trained in full
    agent.save_pretrained(tmp_path / "agent")
    loaded = load_agent(tmp_path / "agent")
    assert loaded.lora == {"rank": 4, "alpha": 8, "scope": "vlm"}
    np.testing.assert_array_equal(loaded.act_chunk(raw_obs()), agent.act_chunk(raw_obs()))


def test_agents_saved_before_issue_37_load_lora_on_the_language_model_only(tmp_path: Path, tiny_hf_models: dict[str, str]) -> None:
    agent = make_agent("vla_adapter", scale="paper", stats=stats(), image_size=28, **tiny_hf_models)
    agent.enable_lora(rank=4, alpha=8, scope="llm")
    backbone = agent.model.backbone
    assert not any("lora_" in n for n, _ in backbone.vision.named_parameters())
    assert not any(p.requires_grad for p in backbone.vision.parameters())
    assert all(p.requires_grad for p in backbone.projector.parameters())  # trained in full, as before
    agent.save_pretrained(tmp_path / "agent")
    config = json.loads((tmp_path / "agent" / "config.json").read_text())
    config["lora"] = {"rank": 4, "alpha": 8}  # as saved before the scope was recorded
    (tmp_path / "agent" / "config.json").write_text(json.dumps(config))
    loaded = load_agent(tmp_path / "agent")
    assert loaded.lora["scope"] == "llm"
    np.testing.assert_array_equal(loaded.act_chunk(raw_obs()), agent.act_chunk(raw_obs()))
    with pytest.raises(ValueError, match="scope"):
        agent.enable_lora(4, 8, scope="vision")
