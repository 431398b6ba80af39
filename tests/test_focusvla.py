"""FocusVLA: patch focus keeps exactly the top-K patches, cascaded vs mixed attention, gate
granularity, the raw-feature values, training, and the agent paths (tiny and paper scale)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vla_agents.agent import load_agent, make_agent
from vla_agents.models.blocks import rotary, split_heads
from vla_agents.models.focusvla import FocusBlock
from vla_agents.policies import build_model, load_recipe

from test_agent import raw_obs, stats
from test_models import batch

SMALL = dict(image_size=32, vit_depth=1, llm_layers=2)  # 2 views x 2x2 patches = 8 visual tokens
DIM, HEADS, T, Q, N = 16, 2, 4, 3, 12


def inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Action latent (B, T, d), [C^AQ ; proprio] (B, Q, d), VLM visual keys and raw values (B, N, d)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, n, DIM, generator=g) for n in (T, Q, N, N))


def block(**kw) -> FocusBlock:
    torch.manual_seed(0)
    return FocusBlock(DIM, HEADS, **kw)


# ------------------------------------------------------------------ Patch-level Focus
@pytest.mark.parametrize("mode", ["cascaded", "mixed"])
def test_exactly_k_visual_keys_get_attention_and_they_are_the_top_k_scores(mode: str) -> None:
    blk = block(topk=5, attention_mode=mode)
    x, aq, keys, values = inputs()
    _, weights, kept = blk.attend(x, aq, keys, values)
    assert kept.shape == (2, N) and torch.all(kept.sum(-1) == 5)
    nonzero = weights > 0
    assert torch.all(nonzero.sum(-1) == 5)
    assert torch.equal(nonzero, kept[:, None, None, :].expand_as(nonzero))  # masked keys: exactly zero
    # Scores recomputed by hand: action-latent queries against VLM keys, mean over heads and latents.
    q = rotary(split_heads(blk.q["vision"](x), HEADS), torch.arange(T))
    k = rotary(split_heads(blk.k["vision"](keys), HEADS), torch.arange(N))
    scores = ((q @ k.transpose(-1, -2)) * (DIM // HEADS) ** -0.5).mean(dim=(1, 2))
    for b in range(2):
        assert set(kept[b].nonzero().flatten().tolist()) == set(scores[b].topk(5).indices.tolist())


def test_topk_none_keeps_every_patch() -> None:
    _, weights, kept = block(topk=None).attend(*inputs())
    assert kept.all() and torch.all(weights > 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, HEADS, T))


def test_tokens_pruned_upstream_are_never_kept() -> None:
    """BackboneOutput.visual_key_mask (e.g. DTP) removes tokens before the focus picks its top-K."""
    x, aq, keys, values = inputs()
    pruned = torch.zeros(2, N, dtype=torch.bool)
    pruned[:, :6] = True
    _, weights, kept = block(topk=4).attend(x, aq, keys, values, pruned)
    assert torch.all(kept.sum(-1) == 4) and not (kept & pruned).any()
    _, weights, kept = block(topk=None).attend(x, aq, keys, values, pruned)
    assert torch.equal(kept, ~pruned) and torch.all(weights[..., :6] == 0)


def test_values_come_from_the_value_source_and_scores_from_the_keys() -> None:
    blk = block(topk=4, gate="none")
    x, aq, keys, values = inputs()
    outputs, weights, kept = blk.attend(x, aq, keys, values)
    other = torch.randn_like(values)
    outputs2, weights2, kept2 = blk.attend(x, aq, keys, other)
    assert torch.equal(kept, kept2) and torch.equal(weights, weights2)  # the selection only sees the keys
    torch.testing.assert_close(outputs2[2], weights @ split_heads(blk.v["vision"](other), HEADS))


# ------------------------------------------------------------------ cascaded vs mixed attention
@pytest.mark.parametrize("cascade", ["parallel", "serial"])
def test_cascaded_output_follows_vision_with_action_queries_fixed(cascade: str) -> None:
    blk = block(cascade=cascade, topk=6)
    x, aq, keys, values = inputs()
    _, keys2, values2 = inputs(seed=1)[1:]
    out, _, _ = blk(x, aq, keys, values)
    out2, _, _ = blk(x, aq, keys2, values2)
    assert (out - out2).abs().max() > 1e-3


def test_parallel_stages_share_the_latent_serial_stages_chain() -> None:
    x, aq, keys, values = inputs()
    aq2 = inputs(seed=1)[1]
    parallel, serial = block(cascade="parallel"), block(cascade="serial")
    serial.load_state_dict(parallel.state_dict())
    (p1, w1, _), (p2, w2, _) = (parallel.attend(x, a, keys, values) for a in (aq, aq2))
    assert torch.equal(p1[0], p2[0]) and torch.equal(p1[2], p2[2]) and torch.equal(w1, w2)  # H_V ignores C^AQ
    (s1, sw1, _), (s2, sw2, _) = (serial.attend(x, a, keys, values) for a in (aq, aq2))
    torch.testing.assert_close(s1[0], p1[0])  # the first stage is the same
    assert not torch.allclose(sw1, sw2)  # the vision stage queries with H_AQ


def test_mixed_softmax_couples_the_sources_cascaded_does_not() -> None:
    """The shortcut: in one shared softmax, sharper ActionQuery logits take attention mass from the
    visual keys; with separate softmaxes the visual attention cannot see the ActionQuery at all."""
    x, aq, keys, values = inputs()
    cascaded, mixed = block(topk=None), block(topk=None, attention_mode="mixed")
    mixed.load_state_dict(cascaded.state_dict())
    (c1, cw1, _), (c2, cw2, _) = (cascaded.attend(x, a, keys, values) for a in (aq, 20 * aq))
    (m1, mw1, _), (m2, mw2, _) = (mixed.attend(x, a, keys, values) for a in (aq, 20 * aq))

    torch.testing.assert_close(cw1.sum(-1), torch.ones(2, HEADS, T))
    assert torch.equal(cw1, cw2) and torch.equal(c1[2], c2[2])
    mass1, mass2 = mw1.sum(-1), mw2.sum(-1)
    assert torch.all(mass1 < 1) and (mass1 - mass2).abs().max() > 0.1  # visual mass depends on C^AQ logits
    assert not torch.allclose(m1[2], m2[2])
    # Rescaling the visual weights by their mass recovers the cascaded distribution: same logits, one shared normaliser.
    torch.testing.assert_close(mw1 / mass1.unsqueeze(-1), cw1)


def test_mixed_with_serial_cascade_is_rejected() -> None:
    with pytest.raises(ValueError, match="serial"):
        FocusBlock(DIM, HEADS, cascade="serial", attention_mode="mixed")
    with pytest.raises(ValueError, match="gate"):
        FocusBlock(DIM, HEADS, gate="channel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="visual_source"):
        build_model(load_recipe("focusvla", "tiny", {**SMALL, "visual_source": "dino"}))


# ------------------------------------------------------------------ Channel-level Focus
@pytest.mark.parametrize("gate, shape", [("element", (2, HEADS, T, DIM // HEADS)), ("head", (2, HEADS, T, 1)),
                                         ("scalar", (1, 1, 1, 1)), ("none", None)])
def test_gate_granularity_and_position(gate: str, shape: tuple | None) -> None:
    blk = block(gate=gate, topk=5)
    x, aq, keys, values = inputs()
    outputs, weights, _ = blk.attend(x, aq, keys, values)
    ungated = weights @ split_heads(blk.v["vision"](values), HEADS)  # SDPA output per head, before fusion
    g = blk.gate_values(x)
    if shape is None:
        assert g is None and not hasattr(blk, "gate")
        torch.testing.assert_close(outputs[2], ungated)
        return
    assert g.shape == shape and torch.all((g > 0) & (g < 1))
    torch.testing.assert_close(outputs[2], ungated * g)
    if gate == "element":  # query-dependent: a different latent gives different channel gates
        assert not torch.allclose(g, blk.gate_values(inputs(seed=1)[0]))
    torch.testing.assert_close(outputs[0], block(gate="none", topk=5).attend(x, aq, keys, values)[0][0])


# ------------------------------------------------------------------ the policy
def test_policy_shapes_attention_and_kept_masks() -> None:
    torch.manual_seed(0)
    model = build_model(load_recipe("focusvla", "tiny", {**SMALL, "topk": 3}))
    out = model.predict(batch())
    assert out.actions.shape == (2, 8, 7)
    assert set(out.attention) == {"agentview", "eye_in_hand"}
    kept = out.masks["kept"]
    assert set(kept) == {"agentview", "eye_in_hand"} and kept["agentview"].shape == (2, 2, 2)
    total = sum(m.flatten(1).sum(-1) for m in kept.values())
    assert torch.all(total == 3) and model.last_kept.shape == (2, 8)
    for view, heat in out.attention.items():
        assert heat.shape == (2, 2, 2)
        assert torch.all(heat[~kept[view]] == 0) and torch.all(heat[kept[view]] > 0)


@pytest.mark.parametrize("source", ["raw", "vlm"])
def test_visual_values_source(source: str) -> None:
    torch.manual_seed(0)
    model = build_model(load_recipe("focusvla", "tiny", {**SMALL, "visual_source": source}))
    model.loss(batch())[0].backward()
    if source == "raw":  # the encoder features before the VLM projector reach the policy
        assert model.raw_projector[1].weight.shape == (model.backbone.dim, model.backbone.vision.dim)
        assert model.raw_projector[1].weight.grad.abs().sum() > 0 and model._raw is None
    else:
        assert not hasattr(model, "raw_projector")


@pytest.mark.parametrize("overrides", [{}, {"attention_mode": "mixed", "gate": "none", "topk": None}])
def test_loss_decreases_on_a_fixed_batch(overrides: dict) -> None:
    torch.manual_seed(0)
    model = build_model(load_recipe("focusvla", "tiny", {**SMALL, "topk": 4, **overrides}))
    data = batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss, metrics = model.loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.85 * losses[0]  # random targets: a slow but steady fit
    assert metrics["kept_fraction"] == (0.5 if overrides == {} else 1.0)


# ------------------------------------------------------------------ the agent
def test_agent_acts_and_round_trips(tmp_path: Path) -> None:
    agent = make_agent("focusvla", stats=stats(), topk=4, **SMALL)
    assert agent.act(raw_obs()).shape == (7,)
    assert agent.last_attention.heatmaps["agentview"].shape == (2, 2)
    assert agent.model.last_kept.sum().item() == 4
    agent.save_pretrained(tmp_path / "agent")
    loaded = load_agent(tmp_path / "agent")
    np.testing.assert_array_equal(agent.act_chunk(raw_obs()), loaded.act_chunk(raw_obs()))
    assert loaded.recipe == agent.recipe and loaded.num_parameters() == agent.num_parameters()


def test_paper_scale_construction(tmp_path: Path, tiny_hf_models: dict[str, str]) -> None:
    """Tiny random SigLIP + DINOv2 + Qwen2 saved locally and loaded through the paper recipe."""
    paths = tiny_hf_models

    agent = make_agent("focusvla", scale="paper", stats=stats(), image_size=28, topk=5, **paths)
    model = agent.model
    assert model.backbone.vision.fused and model.raw_projector[1].in_features == 64  # DINOv2 32 + SigLIP 32
    assert len(model.blocks) == 2 and model.blocks[0].heads == 8 and model.blocks[0].gate.out_features == 32
    assert agent.act(raw_obs()).shape == (7,)
    assert agent.last_attention.heatmaps["eye_in_hand"].shape == (2, 2) and model.last_kept.sum().item() == 5
    agent.enable_lora(rank=4, alpha=8)
    agent.save_pretrained(tmp_path / "agent")
    assert load_agent(tmp_path / "agent").act_chunk(raw_obs()).shape == (8, 7)
