"""Every registered policy, through everything the package does with one: each test is parametrized
over `list_policies()`, so a new policy is covered by adding it to the registry (docs/add_a_policy.md).
What a policy does not declare (DTP and residual RL need a language model) is checked to be refused
by name, never with an AttributeError."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import raw_obs, small, stats

from vla_agents.agent import load_agent, make_agent
from vla_agents.models.blocks import PolicyOutput
from vla_agents.models.policy import Policy
from vla_agents.policies import list_policies
from vla_agents.residual import ResidualAgent

POLICIES = list_policies()
# Paper recipes name hub models; these point them at tiny random ones saved by `tiny_hf_models`. A
# paper VAT conditions on a task id that a raw observation does not carry, so it reads the instruction.
PAPER = {"vat": dict(image_size=28, task_conditioning="instruction"),
         "deepvision": dict(image_size=56, vla_image_size=28, coupled_layers=1, agvp_layers=[0, 0])}


@pytest.fixture(scope="module", params=POLICIES)
def agent(request):
    torch.manual_seed(0)
    return make_agent(request.param, stats=stats(), **small(request.param))


def test_every_policy_keeps_the_contract(agent) -> None:
    assert isinstance(agent.model, Policy)
    batch = agent.collate([{"images": (obs := agent.adapter.observation(raw_obs())).images,
                            "proprio": obs.proprio.astype(np.float32), "instruction": obs.instruction}], train=False)
    out = agent.model.predict(batch)
    assert isinstance(out, PolicyOutput) and out.actions.shape == (1, agent.chunk, agent.action_dim)
    assert out.features is not None and out.features.shape[0] == 1
    assert (out.backbone is not None) == (agent.model.language_model is not None)


def test_acts_on_a_raw_observation_with_attention_maps(agent) -> None:
    agent.reset()
    action = agent.act(raw_obs())
    assert action.shape == (7,) and np.isfinite(action).all()
    maps = agent.last_attention.heatmaps
    assert set(maps) == set(agent.views)
    for m in maps.values():
        assert m.shape == (2, 2) and np.isfinite(m).all() and (m >= 0).all() and m.sum() > 0


def test_save_load_round_trip(agent, tmp_path: Path) -> None:
    agent.save_pretrained(tmp_path / "agent")
    loaded = load_agent(tmp_path / "agent")
    assert loaded.policy_name == agent.policy_name and loaded.recipe == agent.recipe
    np.testing.assert_array_equal(loaded.act_chunk(raw_obs()), agent.act_chunk(raw_obs()))


def test_dtp_wraps_what_has_prompt_tokens_and_refuses_the_rest(agent) -> None:
    from vla_agents.models.dtp import DTP

    if agent.model.language_model is None:
        with pytest.raises(TypeError, match="has no language model"):
            DTP(agent)
        return
    wrapped = DTP(agent, tau=0.0)
    assert wrapped.policy_name == f"{agent.policy_name}+dtp"
    assert wrapped.act(raw_obs()).shape == (7,)
    assert {"important", "pruned"} <= set(wrapped.last_attention.masks)
    assert agent.policy_name == agent.recipe.policy  # the wrapped agent is not changed


def test_residual_rl_wiring(agent) -> None:
    if agent.model.language_model is None:
        with pytest.raises(ValueError, match="residual RL .* needs a policy with a language model"):
            ResidualAgent(agent)
        return
    residual = ResidualAgent(agent)
    residual.reset()
    base_action, obs = residual.observe(raw_obs())
    assert base_action.shape == (7,) and obs.shape == residual.observation_space.shape
    assert np.abs(residual.features()).sum() > 0  # the VLA's pooled state reached the observation


@pytest.mark.parametrize("policy", POLICIES)
def test_paper_scale_build_from_tiny_saved_hf_models(policy: str, tmp_path: Path, tiny_hf_models: dict[str, str]) -> None:
    """The paper recipe's `from_pretrained` path, on tiny random models saved to disk; the saved agent
    then loads without them."""
    import shutil

    from transformers import Dinov2Config, Dinov2Model

    models = dict(tiny_hf_models)
    if policy == "deepvision":  # its vision expert is a third tower
        expert = Path(models["llm_path"]).parent / "expert"
        Dinov2Model(Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=3,
                                 num_attention_heads=2, intermediate_size=64)).save_pretrained(expert)
        models["expert_path"] = str(expert)
    if policy == "vat":  # a ViT only: SigLIP
        models = {"siglip_path": models["siglip_path"]}
    torch.manual_seed(0)
    agent = make_agent(policy, scale="paper", stats=stats(), **{"image_size": 28, **models, **PAPER.get(policy, {})})
    assert agent.act(raw_obs()).shape == (7,)
    assert all(m.shape == (2, 2) for m in agent.last_attention.heatmaps.values())
    agent.save_pretrained(tmp_path / "agent")
    for path in models.values():
        shutil.rmtree(path)
    np.testing.assert_array_equal(load_agent(tmp_path / "agent").act_chunk(raw_obs()), agent.act_chunk(raw_obs()))
