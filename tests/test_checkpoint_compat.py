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

# Normalised first and last actions of each shipped checkpoint on `observation()`, computed with the
# code before issue 37 (commit e7ecb1b). The oft, VAT and FocusVLA shipped then were replaced by grounded ones
# (issue 33); a VAT and a FocusVLA saved before issue 37 are emulated below by recipes without the new keys
# (oft's mechanism did not change).
BEFORE_ISSUE_37 = {
    "deepvision-tiny-embedded": [[-0.16276, -0.03337, 0.23423, -0.87006, -0.90625, -0.80627, 0.77702],
                                 [-0.2759, 0.02558, 0.44723, -0.90384, -0.97485, -0.86556, 0.88584]],
    "vla_adapter-tiny-embedded": [[-0.36587, -0.13417, 0.8673, -1.04596, -0.91535, -1.00293, 0.71886],
                                  [-0.34378, -0.10197, 0.78317, -1.00523, -0.92522, -0.96166, 0.81887]],
}
OLD_MECHANISM = {
    "vla_adapter-tiny-embedded": lambda m: {blk.variant for blk in m.blocks} == {"original"},
    "deepvision-tiny-embedded": lambda m: m.backbone.shared_attention == "one_way" and m.backbone.expert.prefix == 0,
}


def observation() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(37)
    return {"agentview_image": rng.integers(0, 255, (128, 128, 3), dtype=np.uint8),
            "robot0_eef_pos": np.array([0.05, -0.02, 0.9]), "robot0_eef_quat": np.array([1.0, 0.0, 0.0, 0.0]),
            "robot0_gripper_qpos": np.array([0.02, -0.02]),
            "robot0_eye_in_hand_image": rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)}


@pytest.mark.parametrize("name", sorted(BEFORE_ISSUE_37))
def test_shipped_checkpoint_loads_the_old_mechanism_and_acts_as_before(name: str) -> None:
    agent = load_agent(CHECKPOINTS / name)
    assert OLD_MECHANISM[name](agent.model)
    obs = agent.adapter.observation(observation(), "pick up the red cube")
    item = {"images": obs.images, "proprio": agent.stats.normalize_proprio(obs.proprio).astype(np.float32),
            "instruction": obs.instruction, "task_index": obs.task_id}
    with torch.no_grad():
        actions = agent.model.eval().predict(agent.collate([item], train=False)).actions[0]
    np.testing.assert_allclose(actions[[0, -1]].numpy(), BEFORE_ISSUE_37[name], atol=2e-5, rtol=0)


def test_a_vat_saved_before_issue_37_keeps_the_action_layernorm(tmp_path: Path) -> None:
    from vla_agents.agent import make_agent

    make_agent("vat", image_size=32, vit_depth=1, backbone_path=None).save_pretrained(tmp_path / "vat")
    config = json.loads((tmp_path / "vat" / "config.json").read_text())
    assert config["recipe"].pop("kv_norm") == "vision"
    (tmp_path / "vat" / "config.json").write_text(json.dumps(config))
    assert load_agent(tmp_path / "vat").model.kv_norm == "action"


def test_a_focusvla_saved_before_issue_37_keeps_its_block_and_scores(tmp_path: Path) -> None:
    """Without `layout` / `focus_scores` in its recipe, a FocusVLA gets the v1 block and latent scores it
    was trained with (the pro block's weights would not even fit), and acts as it did."""
    from vla_agents.agent import make_agent

    torch.manual_seed(0)
    agent = make_agent("focusvla", image_size=32, vit_depth=1, llm_layers=2, backbone_path=None,
                       layout="v1", focus_scores="latent")
    agent.save_pretrained(tmp_path / "focusvla")
    config = json.loads((tmp_path / "focusvla" / "config.json").read_text())
    assert (config["recipe"].pop("layout"), config["recipe"].pop("focus_scores")) == ("v1", "latent")
    (tmp_path / "focusvla" / "config.json").write_text(json.dumps(config))
    old = load_agent(tmp_path / "focusvla")
    assert {(blk.layout, blk.focus_scores) for blk in old.model.blocks} == {("v1", "latent")}
    obs = {**observation(), "agentview_image": observation()["agentview_image"][:32, :32],
           "robot0_eye_in_hand_image": observation()["robot0_eye_in_hand_image"][:32, :32]}
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
