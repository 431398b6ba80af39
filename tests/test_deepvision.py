"""DeepVision-VLA: VL-MoT shared attention (both ways), the expert updated through it, AGVP dropping
exactly the pruned expert tokens, the guidance ablations, reduction to the QwenVLA-OFT base, agent paths."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transformers.models.qwen2.modeling_qwen2 import repeat_kv

from conftest import DEEPVISION_SMALL as SMALL, raw_obs, stats
from vla_agents.agent import load_agent, make_agent
from vla_agents.models import deepvision
from vla_agents.models.blocks import split_heads
from vla_agents.models.deepvision import (
    TinyExpert, additive, coupled_expert_layers, joint_mask, qwenvla_mask, shared_attention,
)

# expert 48 px -> 3x3 patches (K = 4 at keep_ratio 0.5); VLA branch 32 px -> 2x2


def agent_and_batch(batch_size: int = 2, **overrides):
    torch.manual_seed(0)
    agent = make_agent("deepvision", **{**SMALL, **overrides})
    rng = np.random.default_rng(0)
    items = [{
        "images": {v: rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for v in agent.views},
        "proprio": rng.normal(size=8).astype(np.float32),
        "instruction": ["pick up the red cube", "open the drawer"][i % 2],
        "actions": rng.uniform(-1, 1, (8, 7)).astype(np.float32),
        "action_is_pad": np.arange(8) >= 6 - i,
    } for i in range(batch_size)]
    return agent, agent.collate(items, train=False)


def run_backbone(model, batch, **kwargs):
    slots = batch["proprio"].new_zeros(batch["proprio"].shape[0], model.chunk, model.backbone.dim)
    return model.backbone(batch["images"], batch["input_ids"], batch["attention_mask"], slots,
                          extra=model.proprio_projector(batch["proprio"]), **kwargs)


def test_coupling_picks_expert_layers() -> None:
    assert coupled_expert_layers(6, 3, "last") == [3, 4, 5]
    assert coupled_expert_layers(6, 3, "first") == [0, 1, 2]
    assert coupled_expert_layers(6, 3, "uniform") == [0, 3, 5]
    assert coupled_expert_layers(6, 0, "last") == []
    with pytest.raises(ValueError):
        coupled_expert_layers(2, 3, "last")
    for coupling, expected in (("last", [1, 2]), ("first", [0, 1]), ("uniform", [0, 2])):
        backbone = make_agent("deepvision", coupling=coupling, **SMALL).model.backbone
        assert backbone.expert_layers == expected and backbone.first_coupled == 2  # LLM layers 2, 3


@pytest.mark.parametrize("joint", [True, False])
def test_shared_attention_is_one_softmax_over_both_branches(joint: bool) -> None:
    torch.manual_seed(0)
    ne, s, heads, kv, dh = 2, 3, 2, 1, 4  # 2 expert tokens, 3 LLM tokens, GQA 2:1
    q, k, v = torch.randn(1, heads, ne + s, dh), torch.randn(1, kv, ne + s, dh), torch.randn(1, kv, ne + s, dh)
    keys = torch.ones(1, s, dtype=torch.bool)
    llm = qwenvla_mask(keys, n_actions=1)
    allowed = joint_mask(llm, keys, n_views=1, per_view=ne, expert_reads_llm=joint)
    expert = [True, True, True, True, True] if joint else [True, True, False, False, False]  # joint: Q_E meets K_Z
    expected = [expert, expert,
                [True, True, True, False, False], [True, True, True, True, False],     # prompt: causal
                [True, True, True, True, True]]                                        # action token
    assert allowed[0, 0].tolist() == expected
    out, weights = shared_attention(q, k, v, additive(allowed, q.dtype), scaling=dh ** -0.5)
    for h in range(heads):
        for i in range(ne + s):
            keys = [j for j in range(ne + s) if expected[i][j]]
            scores = [math.exp(float(q[0, h, i] @ k[0, 0, j]) / math.sqrt(dh)) for j in keys]
            total = sum(scores)
            hand = sum(w / total * v[0, 0, j] for w, j in zip(scores, keys))
            torch.testing.assert_close(out[0, i, h * dh : (h + 1) * dh], hand, atol=1e-6, rtol=1e-5)
            assert weights[0, h, i, keys].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_zero_coupled_layers_is_the_qwenvla_oft_base() -> None:
    agent, batch = agent_and_batch(coupled_layers=0)
    model = agent.model
    assert model.backbone.expert is None and not any("bridges" in n or "expert" in n for n, _ in model.named_parameters())
    seen = {}
    model.backbone.llm.model.rotary_emb.register_forward_hook(lambda m, args, out: seen.update(args=args))
    out = run_backbone(model, batch, output_attentions=True)
    embeds, position_ids = seen["args"]
    am = batch["attention_mask"].bool()
    keys = torch.cat([am[:, :1], am.new_ones(2, embeds.shape[1] - am.shape[1] - model.chunk), am[:, 1:],
                      am.new_ones(2, model.chunk)], dim=1)
    mask = additive(qwenvla_mask(keys, model.chunk), embeds.dtype)
    hidden, attentions = model.backbone.llm(embeds, mask, position_ids, output_attentions=True)  # transformers' Qwen2
    for mine, ref in zip(out.hidden_states + out.attentions, hidden + attentions, strict=True):
        torch.testing.assert_close(mine, ref, atol=1e-6, rtol=0)

    # the coupled model with the same base weights changes only the deep (coupled) layers
    coupled, _ = agent_and_batch(coupled_layers=2)
    missing, unexpected = coupled.model.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("backbone.expert", "backbone.bridges")) for k in missing)
    deep = run_backbone(coupled.model, batch)
    torch.testing.assert_close(deep.hidden_states[:2], out.hidden_states[:2], atol=1e-6, rtol=0)
    assert not torch.allclose(deep.hidden_states[-1], out.hidden_states[-1])


def test_joint_mask_keeps_views_apart_among_expert_tokens_and_padding_out() -> None:
    keys = torch.tensor([[True, False, True]])  # the second LLM token is padding
    allowed = joint_mask(qwenvla_mask(keys, n_actions=1), keys, n_views=2, per_view=2)[0, 0]
    assert allowed[:4, :4].tolist() == [[True, True, False, False], [True, True, False, False],
                                        [False, False, True, True], [False, False, True, True]]
    assert allowed[:4, 4:].tolist() == [[True, False, True]] * 4 and allowed[4:, :4].all()


def spy_on(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[tuple]:
    """Record the arguments of every call of `owner.name` (a method on a class, or a module function)."""
    calls, original = [], getattr(owner, name)

    def spy(*args):
        calls.append(args[1:] if isinstance(owner, type) else args)
        return original(*args)

    monkeypatch.setattr(owner, name, spy)
    return calls


def test_agvp_drops_exactly_the_pruned_expert_tokens_from_later_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """After AGVP only the CLS token and the K kept patch tokens exist: every coupled expert layer
    computes those, in token order, and the shared attention holds exactly them."""
    agent, batch = agent_and_batch()
    model = agent.model.eval()
    expert = model.backbone.expert
    assert expert.prefix == 1 and model.backbone.expert_layers == [1, 2] and model.backbone.kept_tokens == 4
    alone, coupled = spy_on(monkeypatch, TinyExpert, "layer"), spy_on(monkeypatch, TinyExpert, "qkv")
    shared = spy_on(monkeypatch, deepvision, "shared_attention")
    out = run_backbone(model, batch)
    (i, full), = alone  # expert layer 0 runs alone on all 1 + 9 tokens
    full = expert.layer(0, full)
    kept = torch.stack([out.kept_expert[v] for v in agent.views], dim=1).flatten(0, 1).flatten(1)  # (B*V, 9)
    idx = kept.nonzero()[:, 1].view(4, 4)  # 4 kept per image, in token order
    expected = torch.cat([full[:, :1], full[:, 1:].gather(1, idx[:, :, None].expand(-1, -1, 32))], dim=1)
    assert [j for j, _ in coupled] == [1, 2]
    torch.testing.assert_close(coupled[0][1], expected, rtol=0, atol=0)
    assert coupled[1][1].shape == (4, 5, 32)  # still CLS + K at the next coupled layer
    llm_tokens = out.hidden_states[0].shape[1]
    # two shallow layers on the LLM tokens, then 2 views x (CLS + K) expert tokens before them
    assert [call[0].shape[2] for call in shared] == [llm_tokens] * 2 + [2 * 5 + llm_tokens] * 2


def expert_states(model, batch, monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple], list[tuple]]:
    """The expert tokens entering each coupled expert layer, and the shared-attention calls."""
    with monkeypatch.context() as m:
        coupled, shared = spy_on(m, TinyExpert, "qkv"), spy_on(m, deepvision, "shared_attention")
        run_backbone(model, batch)
    return coupled, shared


@pytest.mark.parametrize("shared_attention", ["joint", "one_way"])
def test_expert_is_updated_through_the_shared_attention(shared_attention: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paper: Q = [Q_E; Q_Z], K = [K_E; K_Z]; the expert's share of H goes back through a linear to its
    width and on through its own o_proj and MLP, so with the joint reading the expert's next layer
    depends on the instruction the LLM read; one-way it does not."""
    agent, batch = agent_and_batch(pruning=False, shared_attention=shared_attention)
    model = agent.model.eval()
    backbone, expert = model.backbone, model.backbone.expert
    coupled, shared = expert_states(model, batch, monkeypatch)
    (j0, e0), (j1, e1) = coupled
    q, k, v, mask, scaling = shared[backbone.first_coupled]  # LLM layer 2 with expert layer 1
    ne, b = e0.shape[0] // 2 * e0.shape[1], 2
    # by hand: the expert rows of one softmax over [E; Z], mapped back and finished by expert layer j0
    logits = q[:, :, :ne] @ repeat_kv(k, q.shape[1] // k.shape[1]).transpose(-1, -2) * scaling + mask[:, :, :ne]
    attended = (logits.softmax(-1) @ repeat_kv(v, q.shape[1] // v.shape[1])).transpose(1, 2).flatten(2)
    back = backbone.bridges[0].back(attended).reshape(2 * b, -1, 32)
    torch.testing.assert_close(e1, expert.finish(j0, e0, back))
    reads_llm = mask[:, 0, :ne, ne:] == 0
    assert reads_llm.any() == (shared_attention == "joint")

    other = {**batch, "input_ids": batch["input_ids"].flip(0), "attention_mask": batch["attention_mask"].flip(0)}
    (_, e0b), (_, e1b) = expert_states(model, other, monkeypatch)[0]
    assert torch.equal(e0b, e0)  # the expert alone, before coupling: the same images
    assert torch.equal(e1b, e1) == (shared_attention == "one_way")


def test_agvp_keeps_the_top_k_of_the_guidance_map() -> None:
    agent, batch = agent_and_batch()
    backbone = agent.model.backbone
    assert backbone.kept_tokens == 4
    out = run_backbone(agent.model, batch, output_attentions=True)
    for view in agent.views:
        kept = out.kept_expert[view]
        assert kept.shape == (2, 3, 3) and kept.flatten(1).sum(1).tolist() == [4, 4]
        guide = out.guidance[view]
        # by hand: action->vision attention over layers 0-1, heads and action tokens, then bilinear to 3x3
        hand = torch.stack([out.attentions[i][:, :, out.slots, out.visual[view]].mean(dim=(1, 2)) for i in (0, 1)]).mean(0)
        torch.testing.assert_close(guide.flatten(1), hand)
        up = F.interpolate(guide[:, None], size=(3, 3), mode="bilinear", align_corners=False).flatten(1)
        top = torch.zeros_like(up, dtype=torch.bool).scatter_(1, up.topk(4, dim=1).indices, True)
        assert torch.equal(kept.flatten(1), top)


def test_cls_guidance_keeps_the_top_k_of_the_experts_own_cls_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's guidance ablation: the expert's CLS-to-patch attention in its first coupled layer
    (on every token, before pruning), averaged over heads, ranks the patches."""
    agent, batch = agent_and_batch(guidance="cls")
    model = agent.model.eval()
    expert = model.backbone.expert
    alone = spy_on(monkeypatch, TinyExpert, "layer")
    out = run_backbone(model, batch)
    full = expert.layer(0, alone[0][1])
    blk = expert.vit.blocks[1]
    x = blk.norm1(full)
    q, k = split_heads(blk.attn.q(x), 4), split_heads(blk.attn.k(x), 4)
    cls = ((q[:, :, :1] @ k.transpose(-1, -2)) / math.sqrt(8)).softmax(-1)[:, :, 0, 1:].mean(1)  # (B*V, 9)
    top = torch.zeros_like(cls, dtype=torch.bool).scatter_(1, cls.topk(4, dim=1).indices, True)
    kept = torch.stack([out.kept_expert[v] for v in agent.views], dim=1).flatten(0, 1).flatten(1)
    assert torch.equal(kept, top)
    torch.testing.assert_close(torch.stack([out.guidance[v] for v in agent.views], dim=1).flatten(0, 1).flatten(1), cls)
    with pytest.raises(ValueError, match="CLS token"):
        make_agent("deepvision", **{**SMALL, "guidance": "cls", "expert_cls_token": False})


def test_recipes_without_the_new_keys_load_the_one_way_expert_without_cls() -> None:
    new_keys = ("shared_attention", "expert_cls_token")
    recipe = {k: v for k, v in make_agent("deepvision", **SMALL).recipe.to_dict().items() if k not in new_keys}
    from vla_agents.policies import build_model, parse_recipe

    backbone = build_model(parse_recipe(recipe)).backbone
    assert backbone.shared_attention == "one_way" and backbone.expert.prefix == 0
    assert not any("cls_token" in n for n, _ in backbone.named_parameters())


def test_guidance_switches_and_output_shapes() -> None:
    results = {}
    for guidance in ("action", "instruction", "cls", "none"):
        agent, batch = agent_and_batch(guidance=guidance)
        out = agent.model.predict(batch)
        assert out.actions.shape == (2, 8, 7)
        grid = (3, 3) if guidance == "cls" else (2, 2)  # the map that chose: the expert's CLS map on its own grid
        assert set(out.attention) == set(agent.views) and out.attention["agentview"].shape == (2, *grid)
        results[guidance] = out.masks["kept_expert"]["agentview"]
        assert results[guidance].flatten(1).sum(1).tolist() == [4, 4]
    assert not torch.equal(results["action"], results["instruction"])  # different guidance, different tokens
    assert not torch.equal(results["action"], results["cls"])
    agent, batch = agent_and_batch(pruning=False)
    out = agent.model.predict(batch)
    assert agent.model.backbone.kept_tokens == 9 and out.masks == {} and out.actions.shape == (2, 8, 7)
    with pytest.raises(ValueError, match="agvp_layers"):
        make_agent("deepvision", **{**SMALL, "agvp_layers": [0, 2]})  # layer 2 is already coupled


def test_loss_decreases_on_a_fixed_batch() -> None:
    agent, batch = agent_and_batch()
    model = agent.model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss, _ = model.loss(batch)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.backbone.bridges[0].q.weight.grad is not None  # the expert is trained through the shared attention
    assert model.backbone.bridges[0].back.weight.grad.abs().sum() > 0  # and its update reaches the next coupled layer


def test_agent_acts_and_round_trips(tmp_path: Path) -> None:
    agent = make_agent("deepvision", stats=stats(), **SMALL)
    assert agent.act(raw_obs()).shape == (7,)
    assert agent.last_attention.heatmaps["eye_in_hand"].shape == (2, 2)
    assert agent.last_attention.masks["kept_expert"]["agentview"].shape == (3, 3)
    agent.save_pretrained(tmp_path / "agent")
    loaded = load_agent(tmp_path / "agent")
    np.testing.assert_array_equal(agent.act_chunk(raw_obs()), loaded.act_chunk(raw_obs()))

    dtp = make_agent("deepvision+dtp", stats=stats(), tau=0.0, **SMALL)  # tau 0: something is always pruned
    assert dtp.act(raw_obs()).shape == (7,)
    masks = dtp.last_attention.masks
    assert {"kept_expert", "important", "pruned"} <= set(masks) and masks["pruned"]["agentview"].any()


def test_paper_scale_with_tiny_hf_models(tmp_path: Path) -> None:
    """Tiny random SigLIP + DINOv2 + Qwen2 (VLA) and a DINOv2 expert, through the paper recipe."""
    from transformers import Dinov2Config, Dinov2Model, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from vla_agents.models.backbones import build_byte_tokenizer

    vit = dict(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    SiglipVisionModel(SiglipVisionConfig(**vit)).save_pretrained(tmp_path / "siglip")
    Dinov2Model(Dinov2Config(**vit)).save_pretrained(tmp_path / "dinov2")
    Dinov2Model(Dinov2Config(**{**vit, "num_hidden_layers": 3})).save_pretrained(tmp_path / "expert")
    Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "qwen")
    build_byte_tokenizer().save_pretrained(tmp_path / "qwen")
    paths = {k: str(tmp_path / d) for k, d in
             (("siglip_path", "siglip"), ("dinov2_path", "dinov2"), ("expert_path", "expert"), ("llm_path", "qwen"))}

    agent = make_agent("deepvision", scale="paper", stats=stats(), image_size=56, vla_image_size=28,
                       coupled_layers=2, agvp_layers=[0, 0], **paths)
    backbone = agent.model.backbone
    assert backbone.expert.grid == (4, 4) and backbone.expert.prefix == 1 and backbone.expert_layers == [1, 2]
    assert agent.act(raw_obs()).shape == (7,)
    assert agent.last_attention.heatmaps["agentview"].shape == (2, 2)
    assert agent.last_attention.masks["kept_expert"]["agentview"].sum() == 8
    agent.save_pretrained(tmp_path / "agent")
    for d in ("siglip", "dinov2", "expert", "qwen"):
        shutil.rmtree(tmp_path / d)  # a saved agent no longer needs the original folders
    loaded = load_agent(tmp_path / "agent")
    np.testing.assert_array_equal(agent.act_chunk(raw_obs()), loaded.act_chunk(raw_obs()))
