"""FocusVLA: what each block reads, patch focus keeps exactly the top-K of the ActionQuery scores,
cascaded attention and its residual form, gate granularity and initial values, the raw-feature
values, the Tab. 2 "mixed" arm being VLA-Adapter-Pro, training, and the agent paths."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SMALL, raw_obs, stats  # SMALL: 2 views x 2x2 patches = 8 visual tokens
from vla_agents.agent import load_agent, make_agent
from vla_agents.models.backbones import IMAGENET_MEAN, IMAGENET_STD, SIGLIP_MEAN, SIGLIP_STD, _normalize
from vla_agents.models.blocks import merge_heads, rotary, split_heads
from vla_agents.models.focusvla import FocusBlock
from vla_agents.models.vla_adapter import BridgeAttention, VLAAdapterPolicy
from vla_agents.train.auxiliary import attention_target_loss
from vla_agents.policies import build_model, load_recipe, parse_recipe

from test_models import batch, record_block_inputs, reference_layer_outputs

DIM, HEADS, T, Q, N = 16, 2, 4, 3, 12
MIXED = dict(attention_mode="mixed", topk=None, gate="none", visual_source="vlm")  # Tab. 2, first row


def inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Action latent (B, T, d), C^AQ (B, Q, d), proprio (B, 1, d), VLM visual keys and raw values (B, N, d)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, n, DIM, generator=g) for n in (T, Q, 1, N, N))


def block(**kw) -> FocusBlock:
    torch.manual_seed(0)
    return FocusBlock(DIM, HEADS, **kw)


def hand_scores(blk: FocusBlock, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Eq. 9 by hand: RoPE'd σ_q(queries) . σ_k(C^V), mean over heads and queries -> (B, N)."""
    q = rotary(split_heads(blk.q(queries), HEADS), torch.arange(queries.shape[1]))
    k = rotary(split_heads(blk.k["vision"](keys), HEADS), torch.arange(keys.shape[1]))
    return ((q @ k.transpose(-1, -2)) * (DIM // HEADS) ** -0.5).mean(dim=(1, 2))


# ------------------------------------------------------------------ Patch-level Focus
@pytest.mark.parametrize("focus_scores", ["action_query", "latent"])
def test_exactly_k_visual_keys_get_attention_and_they_are_the_top_k_scores(focus_scores: str) -> None:
    blk = block(topk=5, focus_scores=focus_scores)
    x, aq, p, keys, values = inputs()
    _, weights, kept, _ = blk.attend(x, aq, p, keys, values)
    assert kept.shape == (2, N) and torch.all(kept.sum(-1) == 5)
    nonzero = weights > 0
    assert torch.equal(nonzero, kept[:, None, None, :].expand_as(nonzero))  # masked keys: exactly zero
    scores = hand_scores(blk, aq if focus_scores == "action_query" else x, keys)
    for b in range(2):
        assert set(kept[b].nonzero().flatten().tolist()) == set(scores[b].topk(5).indices.tolist())


def test_patch_scores_follow_the_action_queries_not_the_latent() -> None:
    """Sec. 3.3: the focus ranks patches by ActionQuery-to-vision scores. The first block's latent is
    fc1(0) for every input, so a latent-scored focus could not follow the instruction there."""
    x, aq, p, keys, values = inputs()
    x2, aq2 = inputs(seed=1)[:2]
    by_query, by_latent = block(topk=4), block(topk=4, focus_scores="latent")
    by_latent.load_state_dict(by_query.state_dict())
    kept = lambda blk, x_, aq_: blk.attend(x_, aq_, p, keys, values)[2]  # noqa: E731
    assert torch.equal(kept(by_query, x, aq), kept(by_query, x2, aq))  # the latent does not choose
    assert not torch.equal(kept(by_query, x, aq), kept(by_query, x, aq2))  # the ActionQuery features do
    assert torch.equal(kept(by_latent, x, aq), kept(by_latent, x, aq2))
    assert not torch.equal(kept(by_latent, x, aq), kept(by_latent, x2, aq))


def test_topk_none_keeps_every_patch() -> None:
    _, weights, kept, _ = block(topk=None).attend(*inputs())
    assert kept.all() and torch.all(weights > 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, HEADS, T))


def test_tokens_pruned_upstream_are_never_kept() -> None:
    """BackboneOutput.visual_key_mask (e.g. DTP) removes tokens before the focus picks its top-K."""
    x, aq, p, keys, values = inputs()
    pruned = torch.zeros(2, N, dtype=torch.bool)
    pruned[:, :6] = True
    _, weights, kept, _ = block(topk=4).attend(x, aq, p, keys, values, pruned)
    assert torch.all(kept.sum(-1) == 4) and not (kept & pruned).any()
    _, weights, kept, _ = block(topk=None).attend(x, aq, p, keys, values, pruned)
    assert torch.equal(kept, ~pruned) and torch.all(weights[..., :6] == 0)


def test_values_come_from_the_value_source_and_scores_from_the_keys() -> None:
    blk = block(topk=4, gate="none")
    x, aq, p, keys, values = inputs()
    outputs, weights, kept, _ = blk.attend(x, aq, p, keys, values)
    other = torch.randn_like(values)
    outputs2, weights2, kept2, _ = blk.attend(x, aq, p, keys, other)
    assert torch.equal(kept, kept2) and torch.equal(weights, weights2)  # the selection only sees the keys
    torch.testing.assert_close(outputs2[2], weights @ split_heads(blk.v["vision"](other), HEADS))


# ------------------------------------------------------------------ cascaded attention, residual form
@pytest.mark.parametrize("cascade", ["parallel", "serial"])
def test_cascaded_output_follows_vision_with_action_queries_fixed(cascade: str) -> None:
    blk = block(cascade=cascade, topk=6)
    x, aq, p, keys, values = inputs()
    keys2, values2 = inputs(seed=1)[3:]
    out, _, _, _ = blk(x, aq, p, keys, values)
    out2, _, _, _ = blk(x, aq, p, keys2, values2)
    assert (out - out2).abs().max() > 1e-3


def test_parallel_stages_share_the_latent_serial_stages_chain() -> None:
    x, aq, p, keys, values = inputs()
    aq2 = inputs(seed=1)[1]
    parallel, serial = block(cascade="parallel", topk=None), block(cascade="serial", topk=None)
    serial.load_state_dict(parallel.state_dict())
    (p1, w1, _, _), (p2, w2, _, _) = (parallel.attend(x, a, p, keys, values) for a in (aq, aq2))
    assert torch.equal(p1[0], p2[0]) and torch.equal(p1[2], p2[2]) and torch.equal(w1, w2)  # H_V ignores C^AQ
    (s1, sw1, _, _), (s2, sw2, _, _) = (serial.attend(x, a, p, keys, values) for a in (aq, aq2))
    torch.testing.assert_close(s1[0], p1[0])  # the first stage is the same
    assert not torch.allclose(sw1, sw2)  # the vision stage queries with H_AQ


def test_each_modality_has_its_own_softmax_and_the_action_query_reads_proprio_too() -> None:
    """The shortcut removed: the visual attention is one distribution of its own, whatever the
    ActionQuery logits; and [C^AQ ; proprio] is the second source, so proprio reaches the output."""
    blk = block(topk=None, gate="none")
    x, aq, p, keys, values = inputs()
    (h1, w1, _, _), (h2, w2, _, _) = (blk.attend(x, a, p, keys, values) for a in (aq, 20 * aq))
    torch.testing.assert_close(w1.sum(-1), torch.ones(2, HEADS, T))
    assert torch.equal(w1, w2) and torch.equal(h1[2], h2[2]) and not torch.allclose(h1[1], h2[1])
    assert not torch.allclose(blk(x, aq, p, keys, values)[0], blk(x, aq, p + 1, keys, values)[0])


def test_residual_form_hand_computed() -> None:
    """Eq. 8 as read here: A' = FFN(Â) + A with Â = fusion([H_A ; H_AQ ; H_V]) one Linear(3d, d) and
    FFN VLA-Adapter's LN -> Linear -> ReLU; the residual is not taken inside the FFN."""
    blk = block(topk=5)
    x, aq, p, keys, values = inputs()
    outputs, _, _, _ = blk.attend(x, aq, p, keys, values)
    fused = torch.cat([merge_heads(o) for o in outputs], dim=-1) @ blk.fusion.weight.T + blk.fusion.bias
    ln, lin = blk.ffn[0], blk.ffn[1]
    expected = x + torch.relu(F.layer_norm(fused, (DIM,), ln.weight, ln.bias) @ lin.weight.T + lin.bias)
    torch.testing.assert_close(blk(x, aq, p, keys, values)[0], expected)
    assert blk.fusion.weight.shape == (DIM, 3 * DIM)


# ------------------------------------------------------------------ Channel-level Focus
@pytest.mark.parametrize("gate, shape", [("element", (2, HEADS, T, DIM // HEADS)), ("head", (2, HEADS, T, 1)),
                                         ("scalar", (1, 1, 1, 1)), ("none", None)])
def test_gate_granularity_and_position(gate: str, shape: tuple | None) -> None:
    blk = block(gate=gate, topk=5)
    x, aq, p, keys, values = inputs()
    outputs, weights, _, _ = blk.attend(x, aq, p, keys, values)
    ungated = weights @ split_heads(blk.v["vision"](values), HEADS)  # SDPA output per head, before fusion
    g = blk.gate_values(x)
    if shape is None:
        assert g is None and not hasattr(blk, "gate")
        torch.testing.assert_close(outputs[2], ungated)
        return
    assert g.shape == shape
    torch.testing.assert_close(outputs[2], ungated * g)
    if gate in ("element", "head"):  # σ(W_g A): in (0, 1) and query-dependent
        torch.testing.assert_close(g, split_heads(torch.sigmoid(blk.gate(x)), HEADS) if gate == "element"
                                   else torch.sigmoid(blk.gate(x)).transpose(1, 2).unsqueeze(-1))
        assert not torch.allclose(g, blk.gate_values(inputs(seed=1)[0]))
    torch.testing.assert_close(outputs[0], block(gate="none", topk=5).attend(x, aq, p, keys, values)[0][0])


def test_scalar_gate_is_vla_adapters_tanh_and_starts_shut() -> None:
    """Tab. 2's "1-param" gate: tanh(g) with g = 0 at initialisation, so H_V is exactly zero and the
    block ignores the vision until g moves."""
    blk = block(gate="scalar", topk=5)
    assert blk.gate.item() == 0.0 and blk.gate_values(inputs()[0]).item() == 0.0
    x, aq, p, keys, values = inputs()
    keys2, values2 = inputs(seed=1)[3:]
    assert torch.all(blk.attend(x, aq, p, keys, values)[0][2] == 0)
    assert torch.equal(blk(x, aq, p, keys, values)[0], blk(x, aq, p, keys2, values2)[0])
    with torch.no_grad():
        blk.gate.fill_(math.atanh(0.5))
    assert blk.gate_values(x).item() == pytest.approx(0.5)
    assert not torch.allclose(blk(x, aq, p, keys, values)[0], blk(x, aq, p, keys2, values2)[0])


# ------------------------------------------------------------------ the policy
def test_block_i_reads_llm_layer_i_plus_1_and_each_source_in_its_role(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys from the VLM at the visual positions, values from the raw encoder features, the ActionQuery
    features from the slots and the proprio token separately; block i <- LLM layer i+1."""
    torch.manual_seed(0)
    model = build_model(load_recipe("focusvla", "tiny", {**SMALL, "llm_layers": 3, "topk": 3})).eval()
    b = batch()
    calls = record_block_inputs(monkeypatch, FocusBlock)
    raw = []
    model.backbone.vision.register_forward_hook(lambda m, args, out: raw.append(out))
    layers = reference_layer_outputs(model, b)
    model(b)
    assert len(calls) == 3
    out = model.backbone(b["images"], b["input_ids"], b["attention_mask"],
                         slots=model.action_queries.weight.expand(2, -1, -1))
    visual = slice(out.visual["agentview"].start, out.visual["eye_in_hand"].stop)
    values = model.raw_projector(raw[0].reshape(2, -1, raw[0].shape[-1]))  # the tiny ViT's output: its last layer
    for i, (x, c_aq, p, keys, vals, pruned) in enumerate(calls):
        torch.testing.assert_close(keys, layers[i][:, visual])
        torch.testing.assert_close(c_aq, layers[i][:, out.slots])
        torch.testing.assert_close(p, model.proprio_projector(b["proprio"]))
        torch.testing.assert_close(vals, values)
        assert pruned is None
    first = calls[0][0]
    torch.testing.assert_close(first, model.fc1(torch.zeros_like(first[:, :, :1]).expand(2, 8, 7 * 128)))  # same for every input


def test_policy_shapes_attention_and_kept_masks() -> None:
    torch.manual_seed(0)
    model = build_model(load_recipe("focusvla", "tiny", {**SMALL, "topk": 3}))
    out = model.predict(batch())
    assert out.actions.shape == (2, 8, 7)
    assert set(out.attention) == {"agentview", "eye_in_hand"}
    kept = out.masks["kept"]
    assert set(kept) == {"agentview", "eye_in_hand"} and kept["agentview"].shape == (2, 2, 2)
    total = sum(m.flatten(1).sum(-1) for m in kept.values())
    assert torch.all(total == 3) and out.kept.shape == (2, 8)
    for view, heat in out.attention.items():
        assert heat.shape == (2, 2, 2)
        assert torch.all(heat[~kept[view]] == 0) and torch.all(heat[kept[view]] > 0)


def test_attention_loss_reaches_a_target_patch_the_top_k_dropped() -> None:
    """With K = 1 the overlay's map is one-hot on the kept patch: a target elsewhere has share 0 there and
    no gradient. The loss must then come from the focus scores that chose the patch (every block's), or
    the target can never enter the kept set (the loss sat at -log 1e-6 before this was fixed)."""
    torch.manual_seed(0)
    model = build_model(load_recipe("focusvla", "tiny", {**SMALL, "topk": 1}))
    out = model(batch(), with_attention=True)
    dropped = (~out.masks["kept"]["agentview"][0]).nonzero()[0]  # (row, col) of a patch not kept, sample 0
    uv = torch.full((2, 2, 2), -1.0)  # (B, views, uv): sample 1 and the wrist view see no target
    uv[0, 0] = torch.stack([dropped[1] + 0.5, dropped[0] + 0.5]) / 2  # that patch's centre, of the 2x2 grid
    overlay = attention_target_loss(out.attention, uv, model.backbone.views)
    assert overlay.item() == 0 and not overlay.requires_grad  # nothing movable on the overlay's map
    maps = out.grounding_maps()
    assert len(maps) == 1 + len(model.blocks) and maps[0] is out.attention
    loss = torch.stack([attention_target_loss(m, uv, model.backbone.views) for m in maps]).mean()
    loss.backward()
    for blk in model.blocks:
        assert blk.q.weight.grad.abs().sum() > 0 and blk.k["vision"].weight.grad.abs().sum() > 0
    shares = [(f["agentview"][0, dropped[0], dropped[1]] / f["agentview"][0].sum()).item() for f in out.focus]
    expected = -sum(np.log(share + 1e-6) for share in shares) / (1 + len(model.blocks))  # the overlay's term is 0
    assert all(0 < share < 1 for share in shares) and loss.item() == pytest.approx(expected, rel=1e-5)
    assert model.eval().predict(batch()).focus == []  # acting (eval mode) never pays for maps only the training loss reads


@pytest.mark.parametrize("source", ["raw", "vlm"])
def test_visual_values_source(source: str) -> None:
    torch.manual_seed(0)
    model = build_model(load_recipe("focusvla", "tiny", {**SMALL, "visual_source": source}))
    model.loss(batch())[0].backward()
    if source == "raw":  # the encoder features before the VLM projector reach the policy
        assert model.raw_projector[1].weight.shape == (model.backbone.dim, model.backbone.vision.dim)
        assert model.raw_projector[1].weight.grad.abs().sum() > 0
    else:
        assert not hasattr(model, "raw_projector")


def test_mixed_arm_is_vla_adapter_pros_own_policy() -> None:
    """Tab. 2's "mixed" row is VLA-Adapter's attention, no top-K, no gate, VLM features: the builder
    returns VLA-Adapter-Pro's policy, the very model of the vla_adapter recipe with gate_mode none."""
    torch.manual_seed(0)
    mixed = build_model(load_recipe("focusvla", "tiny", {**SMALL, **MIXED}))
    adapter = build_model(load_recipe("vla_adapter", "tiny", {**SMALL, "variant": "pro", "gate_mode": "none"}))
    assert isinstance(mixed, VLAAdapterPolicy) and all(isinstance(blk, BridgeAttention) for blk in mixed.blocks)
    assert [(blk.variant, blk.gate_mode) for blk in mixed.blocks] == [("pro", "none")] * 2
    adapter.load_state_dict(mixed.state_dict())  # strict: the same parameters
    b = batch()
    torch.testing.assert_close(mixed.eval()(b).actions, adapter.eval()(b).actions, rtol=0, atol=0)
    scalar = build_model(load_recipe("focusvla", "tiny", {**SMALL, **MIXED, "gate": "scalar"}))
    assert scalar.blocks[0].gate_mode == "logit_scale" and scalar.blocks[0].gate.item() == 0.0  # VLA-Adapter's own gate
    for bad in ({"topk": 4}, {"gate": "element"}, {"visual_source": "raw"}):
        with pytest.raises(ValueError, match="VLA-Adapter-Pro's own attention"):
            build_model(load_recipe("focusvla", "tiny", {**SMALL, **MIXED, **bad}))


def test_invalid_switches_are_rejected() -> None:
    with pytest.raises(ValueError, match="gate"):
        FocusBlock(DIM, HEADS, gate="channel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="focus_scores"):
        FocusBlock(DIM, HEADS, focus_scores="keys")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="visual_source"):
        build_model(load_recipe("focusvla", "tiny", {**SMALL, "visual_source": "dino"}))


@pytest.mark.parametrize("overrides", [{}, {"gate": "none", "topk": None, "visual_source": "vlm"}])
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


# ------------------------------------------------------------------ recipes saved before issue 37
def test_recipes_without_the_new_keys_build_the_v1_block_and_refuse_changed_arms() -> None:
    recipe = load_recipe("focusvla", "tiny", SMALL)
    old = {k: v for k, v in recipe.to_dict().items() if k not in ("layout", "focus_scores")}
    model = build_model(parse_recipe(old))
    blk = model.blocks[0]
    assert (blk.layout, blk.focus_scores) == ("v1", "latent") and set(blk.q) == {"action", "query", "vision"}
    assert isinstance(blk.fusion, torch.nn.Sequential) and len(blk.ffn) == 4
    for arm in ({**MIXED}, {"gate": "scalar"}):
        with pytest.raises(ValueError, match="predates issue 37.*retrain it"):
            build_model(parse_recipe({**old, **arm}))


# ------------------------------------------------------------------ the agent
def test_agent_acts_and_round_trips(tmp_path: Path) -> None:
    agent = make_agent("focusvla", stats=stats(), topk=4, **SMALL)
    assert agent.act(raw_obs()).shape == (7,)
    assert agent.last_attention.heatmaps["agentview"].shape == (2, 2)
    assert sum(m.sum() for m in agent.last_attention.masks["kept"].values()) == 4
    agent.save_pretrained(tmp_path / "agent")
    loaded = load_agent(tmp_path / "agent")
    np.testing.assert_array_equal(agent.act_chunk(raw_obs()), loaded.act_chunk(raw_obs()))
    assert loaded.recipe == agent.recipe and loaded.num_parameters() == agent.num_parameters()


@pytest.mark.parametrize("layout", ["pro", "v1"])
def test_paper_scale_values_are_the_towers_last_layer(layout: str, tmp_path: Path, tiny_hf_models: dict[str, str]) -> None:
    """Tiny random SigLIP + DINOv2 + Qwen2 saved locally and loaded through the paper recipe. Tab. 3:
    the raw values come from each tower's last layer, while the VLM reads the second-to-last; the v1
    block read the VLM's."""
    torch.manual_seed(0)
    agent = make_agent("focusvla", scale="paper", stats=stats(), image_size=28, topk=5, layout=layout, **tiny_hf_models)
    model = agent.model
    assert model.backbone.vision.fused and model.raw_projector[1].in_features == 64  # DINOv2 32 + SigLIP 32
    assert len(model.blocks) == 2 and model.blocks[0].heads == 8 and model.blocks[0].gate.out_features == 32
    assert agent.act(raw_obs()).shape == (7,)
    assert agent.last_attention.heatmaps["eye_in_hand"].shape == (2, 2)
    assert sum(m.sum() for m in agent.last_attention.masks["kept"].values()) == 5

    vision, pixels = model.backbone.vision, torch.rand(4, 3, 28, 28)
    vlm_features = vision(pixels)
    _, caught = model.backbone.encode_with_raw(pixels.view(2, 2, 3, 28, 28), raw_visual=model.raw_visual)
    caught = caught.reshape(4, -1, caught.shape[-1])
    if layout == "pro":
        dino = vision.dinov2(_normalize(pixels, IMAGENET_MEAN, IMAGENET_STD), output_hidden_states=True).hidden_states
        siglip = vision.siglip(_normalize(pixels, SIGLIP_MEAN, SIGLIP_STD), output_hidden_states=True).hidden_states
        torch.testing.assert_close(caught, torch.cat([dino[-1][:, 1:], siglip[-1]], dim=-1))  # CLS dropped
        torch.testing.assert_close(vlm_features, torch.cat([dino[-2][:, 1:], siglip[-2]], dim=-1))
    else:
        torch.testing.assert_close(caught, vlm_features)

    agent.enable_lora(rank=4, alpha=8)
    agent.save_pretrained(tmp_path / "agent")
    np.testing.assert_array_equal(load_agent(tmp_path / "agent").act_chunk(raw_obs()), agent.act_chunk(raw_obs()))
