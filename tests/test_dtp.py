"""DTP: each stage checked on hand-built attention maps, then the wrapped policies end to end."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from vla_agents.agent import load_agent, make_agent
from vla_agents.models.backbones import BackboneOutput
from vla_agents.models.dtp import (
    DTP, DTPPolicy, action_attention, can_wrap, distracting_tokens, relevance, smooth, suppress_corners,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_agent import SMALL, raw_obs, stats  # noqa: E402

# Hand-built sequence: [start 0, 4x4 patches 1..16, prompt 17 18, action slots 19 20]
GRID, VIS, PROMPT, SLOTS, S = (4, 4), slice(1, 17), slice(17, 19), slice(19, 21), 21


def fake_output(attentions: list[torch.Tensor]) -> BackboneOutput:
    return BackboneOutput(hidden_states=(), attentions=tuple(attentions), visual={"cam": VIS},
                          extra=slice(17, 17), slots=SLOTS, grid=GRID)


def layer(prompt: dict[int, float], action: dict[int, float], heads: int = 2) -> torch.Tensor:
    """(1, heads, S, S) attention: prompt rows and action rows put the given weight on patch index
    -> visual key, the rest on the start token."""
    a = torch.zeros(1, heads, S, S)
    for rows, weights in ((PROMPT, prompt), (SLOTS, action)):
        for patch, w in weights.items():
            a[:, :, rows, 1 + patch] = w
        a[:, :, rows, 0] = 1 - sum(weights.values())
    return a


@pytest.fixture(scope="module")
def oft_model() -> torch.nn.Module:
    return make_agent("oft", **SMALL).model


# ------------------------------------------------------------------ the stages on hand-built maps
def test_relevance_averages_heads_valid_prompt_tokens_and_chosen_layers() -> None:
    a0, a1 = layer({5: 0.6}, {}), layer({9: 0.4}, {})
    a0[:, 0, 17, 1 + 5], a0[:, 1, 17, 1 + 5] = 0.2, 0.6  # heads disagree on the first prompt token
    keep = torch.tensor([[True, True]])
    r = relevance([a0, a1], [0], PROMPT, keep, VIS)
    assert r[0, 5].item() == pytest.approx(((0.2 + 0.6) / 2 + 0.6) / 2) and r[0].sum().item() == pytest.approx(0.5)
    assert relevance([a0, a1], [0, 1], PROMPT, keep, VIS)[0, 9].item() == pytest.approx(0.2)
    # a padded prompt token does not count
    assert relevance([a0], [0], PROMPT, torch.tensor([[False, True]]), VIS)[0, 5].item() == pytest.approx(0.6)


def test_corner_suppression_zeroes_each_corner_block() -> None:
    maps = torch.ones(1, 5, 5)
    one = suppress_corners(maps, 1)[0]
    assert one.sum() == 21 and all(one[i, j] == 0 for i in (0, 4) for j in (0, 4))
    two = suppress_corners(maps, 2)[0]
    assert two.sum() == 25 - 16 and two[2].sum() == 5 and two[:, 2].sum() == 5
    assert torch.equal(suppress_corners(maps, 0), maps) and maps.sum() == 25  # input untouched


def test_smoothing_is_scipy_reflect_gaussian_on_the_patch_grid() -> None:
    sigma = 0.65
    delta = torch.zeros(2, 5, 5, dtype=torch.float64)
    delta[0, 2, 2] = 1.0
    out = smooth(delta, sigma)
    g = np.exp(-np.arange(-3, 4) ** 2 / (2 * sigma**2))  # radius = int(4 * sigma + 0.5) = 3
    g /= g.sum()
    g0, g2, g3 = g[3], g[5], g[6]
    assert out[0, 2, 2].item() == pytest.approx(g0 * g0)
    # 'reflect' folds the tail back at the border: row 0 gets offsets +2 and -3 (-> index 2)
    assert out[0, 0, 2].item() == pytest.approx((g2 + g3) * g0)
    assert out[0].sum().item() == pytest.approx(1.0) and torch.all(out[1] == 0)  # batch axes are not mixed
    rand = torch.rand(1, 4, 6)
    assert np.allclose(smooth(rand, 1.3)[0].numpy(), gaussian_filter(rand[0].double().numpy(), 1.3, mode="reflect"))
    assert smooth(rand, 0.0) is rand


def test_action_attention_weights_layers_by_visual_mass_share() -> None:
    a0 = layer({}, {0: 0.4, 1: 0.2})  # visual mass 0.6
    a1 = layer({}, {2: 0.1, 3: 0.1})  # visual mass 0.2
    a1[:, 0, 19, 1 + 2], a1[:, 1, 19, 1 + 2] = 0.0, 0.2  # head and slot averaging keep the mean at 0.1
    a1[:, 0, 20, 1 + 2], a1[:, 1, 20, 1 + 2] = 0.1, 0.1
    a1[:, 0, 19, 1 + 3], a1[:, 1, 19, 1 + 3] = 0.05, 0.15
    got = action_attention([a0, a1], SLOTS, VIS)[0]
    expected = torch.zeros(16)
    expected[:4] = torch.tensor([0.75 * 0.4, 0.75 * 0.2, 0.25 * 0.1, 0.25 * 0.1])
    assert torch.allclose(got, expected)


def test_distracting_tokens_rule() -> None:
    attention = torch.tensor([[0.30, 0.10, 0.06, 0.04, 0.05]])
    important = torch.tensor([[False, True, False, False, True]])  # max inside = 0.10
    assert distracting_tokens(attention, important, 0.5).tolist() == [[True, False, True, False, False]]
    assert distracting_tokens(attention, important, 1.0).tolist() == [[True, False, False, False, False]]
    assert not distracting_tokens(attention, important, 3.0).any()


def test_detect_prunes_exactly_the_distracting_tokens(oft_model) -> None:
    # relevance (layer 0 only): patches 5, 6, 9 (and a decoy on layer 1, which is not in C)
    a0 = layer({5: 0.3, 6: 0.2, 9: 0.1}, {5: 0.2, 0: 0.3, 15: 0.05, 10: 0.15})
    a1 = layer({12: 0.9}, {5: 0.2, 0: 0.3, 15: 0.05, 10: 0.15})
    dtp = DTPPolicy(oft_model, layers=[0], k=3, tau=0.5, sigma=0.0, corners=0)
    step, pruned = dtp.detect(fake_output([a0, a1]), torch.ones(1, 3, dtype=torch.long))
    assert set(step.important["cam"][0].flatten().nonzero().flatten().tolist()) == {5, 6, 9}
    # inside max = 0.2 (patch 5); outside: 0 (0.3) and 10 (0.15) exceed 0.1, 15 (0.05) does not
    assert set(pruned[0].nonzero().flatten().tolist()) == {0, 10}
    assert torch.equal(step.pruned["cam"].flatten(1), pruned)
    dtp.tau = 1.0
    assert set(dtp.detect(fake_output([a0, a1]), torch.ones(1, 3, dtype=torch.long))[1][0].nonzero().flatten().tolist()) == {0}


def test_corner_suppression_keeps_the_sink_out_of_the_region(oft_model) -> None:
    a = layer({0: 0.5, 5: 0.3, 6: 0.1}, {0: 0.4, 5: 0.1})  # the corner patch 0 is the sink
    mask = torch.ones(1, 3, dtype=torch.long)
    plain = DTPPolicy(oft_model, layers=[0], k=2, tau=0.5, sigma=0.0, corners=0).detect(fake_output([a]), mask)
    assert plain[0].important["cam"][0].flatten().nonzero().flatten().tolist() == [0, 5] and not plain[1].any()
    fixed = DTPPolicy(oft_model, layers=[0], k=2, tau=0.5, sigma=0.0, corners=1).detect(fake_output([a]), mask)
    assert fixed[0].important["cam"][0].flatten().nonzero().flatten().tolist() == [5, 6]
    assert fixed[1][0].nonzero().flatten().tolist() == [0]  # the sink is now pruned


@pytest.mark.parametrize("mode", ["unimportant", "all"])
def test_random_mask_ablation_prunes_as_many_random_tokens(oft_model, mode: str) -> None:
    a = layer({5: 0.3, 6: 0.2, 9: 0.1}, {5: 0.2, 0: 0.3, 15: 0.05, 10: 0.15})
    mask = torch.ones(1, 3, dtype=torch.long)
    dtp = DTPPolicy(oft_model, layers=[0], k=3, tau=0.5, sigma=0.0, corners=0, random_mask=mode, seed=1)
    picks = [dtp.detect(fake_output([a]), mask) for _ in range(20)]
    for step, pruned in picks:
        assert pruned.sum() == 2  # DTP itself prunes {0, 10}
        if mode == "unimportant":
            assert not (pruned & step.important["cam"].flatten(1)).any()
    assert len({tuple(p[0].nonzero().flatten().tolist()) for _, p in picks}) > 1
    if mode == "all":
        assert any((p & s.important["cam"].flatten(1)).any() for s, p in picks)


# ------------------------------------------------------------------ wrapped policies
def capture_backbone(model: torch.nn.Module) -> list[BackboneOutput]:
    """Every backbone pass, with its attention weights."""
    seen: list[BackboneOutput] = []
    model.backbone.register_forward_pre_hook(lambda m, a, kw: (a, {**kw, "output_attentions": True}), with_kwargs=True)
    model.backbone.register_forward_hook(lambda m, a, kw, out: seen.append(out), with_kwargs=True)
    return seen


@pytest.mark.parametrize("policy", ["oft", "vla_adapter"])
def test_pruned_tokens_receive_zero_attention_on_regeneration(policy: str) -> None:
    torch.manual_seed(0)
    base = make_agent(policy, stats=stats(), **SMALL)
    agent = DTP(base, tau=0.0)  # everything outside the region is distracting
    passes = capture_backbone(base.model)
    bridge: list[torch.Tensor] = []
    for block in getattr(base.model, "blocks", []):
        block.register_forward_hook(lambda m, a, out: bridge.append(out[1]))
    chunk = agent.act_chunk(raw_obs())
    assert chunk.shape == (8, 7) and len(passes) == 2  # detection, regeneration

    pruned = np.concatenate([agent.last_attention.masks["pruned"][v].reshape(-1) for v in base.views])
    important = np.concatenate([agent.last_attention.masks["important"][v].reshape(-1) for v in base.views])
    assert pruned.sum() == (~important).sum() > 0 and not (pruned & important).any()
    keys = torch.as_tensor(np.flatnonzero(pruned)) + 1  # visual tokens start after the prompt's start token
    detection, regeneration = passes
    assert torch.equal(regeneration.visual_key_mask[0].cpu(), torch.as_tensor(pruned))
    assert all((a[:, :, detection.slots][..., keys] > 0).all() for a in detection.attentions)  # slots see all
    assert all((a[..., keys] == 0).all() for a in regeneration.attentions)  # every layer, head, query
    if policy == "vla_adapter":
        n = len(base.model.blocks)
        assert all((w[..., keys - 1] > 0).all() for w in bridge[:n])
        assert all((w[..., keys - 1] == 0).all() for w in bridge[n:])
    assert not np.array_equal(chunk, base.act_chunk(raw_obs()))


@pytest.mark.parametrize("policy", ["oft", "vla_adapter"])
def test_large_tau_prunes_nothing_and_matches_the_base_bit_for_bit(policy: str) -> None:
    base = make_agent(policy, stats=stats(), **SMALL)
    agent = DTP(base, tau=1e9)
    passes = capture_backbone(base.model)
    out = agent.act_chunk(raw_obs())
    assert len(passes) == 1 and not any(m.any() for m in agent.last_attention.masks["pruned"].values())
    assert np.array_equal(out, base.act_chunk(raw_obs()))
    assert base.model is agent.model.policy and not isinstance(base.model, DTPPolicy)


@pytest.mark.parametrize("policy", ["oft+dtp", "vla_adapter+dtp", "oft-tiny+dtp"])
def test_make_agent_with_dtp_suffix_acts(policy: str) -> None:
    agent = make_agent(policy, stats=stats(), tau=0.25, **SMALL)
    assert isinstance(agent.model, DTPPolicy) and agent.model.tau == 0.25 and agent.model.sigma == 0.65
    assert agent.policy_name == policy.replace("-tiny", "")  # what evaluation reports and labels its progress with
    actions = [agent.act(raw_obs()) for _ in range(9)]
    assert all(a.shape == (7,) for a in actions)
    masks = agent.last_attention.masks
    assert set(masks) == {"important", "pruned"} and masks["pruned"]["agentview"].shape == (2, 2)
    assert masks["important"]["agentview"].sum() == 2  # k = 0.426 of a 2x2 grid
    with pytest.raises(ValueError, match="unknown wrapper"):
        make_agent("oft+nope", **SMALL)


def test_a_policy_without_prompt_attention_is_refused_by_name(oft_model) -> None:
    vat = make_agent("vat", image_size=32, vit_depth=1, backbone_path=None)
    assert can_wrap(oft_model) and can_wrap(DTPPolicy(oft_model)) and not can_wrap(vat.model)
    with pytest.raises(TypeError, match="DTP cannot wrap VATPolicy: it has no language model"):
        DTP(vat)


def test_wrapping_a_saved_and_reloaded_agent(tmp_path: Path) -> None:
    base = make_agent("vla_adapter", stats=stats(), **SMALL)
    base.save_pretrained(tmp_path / "base")
    loaded = load_agent(tmp_path / "base")
    wrapped = DTP(loaded, tau=0.0, k=1)
    assert np.array_equal(wrapped.act_chunk(raw_obs()), DTP(base, tau=0.0, k=1).act_chunk(raw_obs()))
    assert wrapped.last_attention.masks["pruned"]["agentview"].sum() == 3

    # a wrapped agent saves the base weights and reloads wrapped, with the same settings
    wrapped.save_pretrained(tmp_path / "dtp")
    again = load_agent(tmp_path / "dtp")
    assert isinstance(again.model, DTPPolicy) and again.model.settings() == wrapped.model.settings()
    assert np.array_equal(again.act_chunk(raw_obs()), wrapped.act_chunk(raw_obs()))
    assert not isinstance(load_agent(tmp_path / "base").model, DTPPolicy)
    assert math.isclose(DTP(again, tau=2.0).model.tau, 2.0)
