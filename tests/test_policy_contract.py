"""The policy contract (`vla_agents.models.policy`): wrappers and trainers ask a policy what it has and
refuse up front, by name, what it lacks; features leave the forward pass as outputs, not through hooks;
wrapping an agent leaves the wrapped one as it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SMALL, raw_obs, stats

from vla_agents.agent import make_agent
from vla_agents.models.dtp import DTP
from vla_agents.models.policy import Policy

VAT_SMALL = dict(image_size=32, vit_depth=1, backbone_path=None)


def hooks(module: torch.nn.Module) -> list[str]:
    """Every module under `module` with a forward or pre-forward hook of this package's (transformers
    installs its own to collect attentions)."""
    return [name for name, m in module.named_modules()
            if any(getattr(h, "__module__", "").startswith("vla_agents")
                   for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()])]


@pytest.fixture(scope="module")
def vat():
    return make_agent("vat", stats=stats(), **VAT_SMALL)


def test_a_policy_must_define_forward() -> None:
    with pytest.raises(TypeError, match="Incomplete subclasses Policy but does not define forward"):
        type("Incomplete", (Policy,), {})


def test_dtp_refuses_vat_by_name(vat) -> None:
    with pytest.raises(TypeError, match="DTP cannot wrap VATPolicy: it has no language model"):
        DTP(vat)


def test_residual_rl_refuses_vat_by_name(vat) -> None:
    from vla_agents.residual import ResidualAgent

    with pytest.raises(ValueError, match="residual RL .* needs a policy with a language model.* VATPolicy has none"):
        ResidualAgent(vat)


def test_full_rl_refuses_vat_by_name(vat) -> None:
    from vla_agents.train.full_rl import VLAActorCriticPolicy

    with pytest.raises(ValueError, match="full RL .* needs a policy with a language model.* VATPolicy has none"):
        VLAActorCriticPolicy(None, None, lambda progress: 3e-6, agent=vat, instructions=["pick up the red cube"])


def test_lora_refuses_vat_by_name(vat) -> None:
    with pytest.raises(ValueError, match="LoRA .* needs a policy with a language model.* VATPolicy has none"):
        vat.enable_lora(4, 8)


def test_vat_refuses_what_it_cannot_do_when_asked_directly(vat) -> None:
    obs = vat.adapter.observation(raw_obs())
    batch = vat.collate([{"images": obs.images, "proprio": obs.proprio.astype(np.float32),
                          "instruction": obs.instruction}], train=False)
    with pytest.raises(ValueError, match="VAT has no language model"):
        vat.model.predict(batch, llm_attentions=True)


def test_dtp_leaves_the_wrapped_agent_unchanged() -> None:
    """A fused-attention agent stays fused after DTP wrapped it and acted; no hook is left anywhere."""
    torch.manual_seed(0)
    agent = make_agent("vla_adapter", stats=stats(), attn_implementation="sdpa", **SMALL)
    before = agent.act_chunk(raw_obs())
    wrapped = DTP(agent, tau=0.0)  # tau 0 prunes every token outside the region: the regeneration pass runs
    wrapped.act_chunk(raw_obs())
    assert wrapped.model.last.pruned["agentview"].any()
    assert agent.model.language_model.config._attn_implementation == "sdpa"
    assert hooks(agent.model) == []
    np.testing.assert_array_equal(agent.act_chunk(raw_obs()), before)


@pytest.mark.parametrize("policy", ["oft", "focusvla"])
def test_residual_rl_reads_the_pooled_state_without_hooks(policy: str) -> None:
    from vla_agents.residual import ResidualAgent

    torch.manual_seed(0)
    base = make_agent(policy, stats=stats(), **SMALL)
    residual = ResidualAgent(base)
    assert hooks(base.model) == []
    residual.observe(raw_obs())
    assert base.last_pooled.shape == (base.model.language_model.hidden_size,)
    expected = torch.from_numpy(base.last_pooled) @ residual._projection
    np.testing.assert_allclose(residual.features(), expected.numpy())
    assert np.abs(residual.features()).sum() > 0
