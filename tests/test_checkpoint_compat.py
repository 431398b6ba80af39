"""Issue 37 changed mechanisms of four policies. Agents saved before it have no key for the new
switches, load with the old mechanism, and act exactly as they did; arms whose weights no longer fit
are refused with a message that names the change."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_agents.agent import load_agent

CHECKPOINTS = Path(__file__).resolve().parents[1] / "policies" / "checkpoints"
DROP = "<not in the saved recipe>"  # a key an agent saved before issue 37 does not have

# An agent saved before issue 37, per policy whose mechanism changed: the old mechanism's values, which its
# recipe lacks (they were the only mechanism then), and how the loaded model shows it runs the old one. The
# agents shipped then were all replaced by grounded ones (issue 33), so each is emulated: made with the old
# values, saved, and its recipe stripped of the keys.
OLD = {
    "vla_adapter": ({"variant": "original"}, lambda m: {blk.variant for blk in m.blocks} == {"original"}),
    "focusvla": ({"layout": "v1", "focus_scores": "latent"},
                 lambda m: {(blk.layout, blk.focus_scores) for blk in m.blocks} == {("v1", "latent")}),
    "vat": ({"kv_norm": "action"}, lambda m: m.kv_norm == "action"),
    "deepvision": ({"shared_attention": "one_way", "expert_cls_token": False},
                   lambda m: m.backbone.shared_attention == "one_way" and m.backbone.expert.prefix == 0),
}


def observation(size: int = 128) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(37)
    return {"agentview_image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
            "robot0_eef_pos": np.array([0.05, -0.02, 0.9]), "robot0_eef_quat": np.array([1.0, 0.0, 0.0, 0.0]),
            "robot0_gripper_qpos": np.array([0.02, -0.02]),
            "robot0_eye_in_hand_image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8)}


@pytest.mark.parametrize("policy", sorted(OLD))
def test_an_agent_saved_before_issue_37_loads_the_old_mechanism_and_acts_as_before(policy: str, tmp_path: Path) -> None:
    from conftest import small, stats
    from vla_agents.agent import make_agent

    values, runs_old_mechanism = OLD[policy]
    torch.manual_seed(0)
    agent = make_agent(policy, stats=stats(), **small(policy), **values)
    agent.save_pretrained(tmp_path / policy)
    config = json.loads((tmp_path / policy / "config.json").read_text())
    assert {key: config["recipe"].pop(key) for key in values} == values
    (tmp_path / policy / "config.json").write_text(json.dumps(config))
    old = load_agent(tmp_path / policy)
    assert runs_old_mechanism(old.model)
    obs = observation(agent.recipe.backbone.image_size)
    np.testing.assert_array_equal(old.act_chunk(obs, "pick up the red cube"), agent.act_chunk(obs, "pick up the red cube"))


@pytest.mark.parametrize("policy, change, message", [
    ("focusvla", {"attention_mode": "mixed", "topk": None, "gate": "none", "visual_source": "vlm", "layout": DROP,
                  "focus_scores": DROP}, "'mixed' arm is now"),
    ("focusvla", {"gate": "scalar", "layout": DROP, "focus_scores": DROP}, "tanh"),
    ("vat", {"action_layers": "last", "kv_norm": DROP}, "last-layer ablation was one action block"),
])
def test_agents_saved_with_a_redefined_arm_are_refused(policy: str, change: dict, message: str, tmp_path: Path) -> None:
    """A saved agent of an arm whose definition changed: its recipe lacks the new key."""
    folder = tmp_path / "agent"
    shutil.copytree(CHECKPOINTS / f"{policy}-tiny-embedded", folder)
    config = json.loads((folder / "config.json").read_text())
    config["recipe"].update(change)
    config["recipe"] = {k: v for k, v in config["recipe"].items() if v != DROP}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"predates issue 37.*{message}"):
        load_agent(folder)
