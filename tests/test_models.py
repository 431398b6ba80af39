"""Policy models: shapes, OFT's zero action slots and single pass, VLA-Adapter's bridge: which LLM
layer and which features each block reads, the released Pro and original blocks, the gate."""
from __future__ import annotations

import math
from typing import get_args

import pytest
import torch
from torch import nn

from conftest import SMALL
from vla_agents.models.blocks import ACTION_LOSSES, action_loss, merge_heads, rotary, split_heads
from vla_agents.models.vla_adapter import SOURCES, BridgeAttention
from vla_agents.policies import build_model, load_recipe
from vla_agents.recipe import ActionLoss



def batch(b: int = 2, views: int = 2, size: int = 32, length: int = 7) -> dict[str, torch.Tensor]:
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, 1:3] = 0  # left-padded rest of prompt
    return {
        "images": torch.rand(b, views, 3, size, size),
        "proprio": torch.randn(b, 8),
        "input_ids": torch.randint(2, 200, (b, length)),
        "attention_mask": mask,
        "actions": torch.randn(b, 8, 7),
        "action_is_pad": torch.zeros(b, 8, dtype=torch.bool),
    }


def record_block_inputs(monkeypatch: pytest.MonkeyPatch, cls: type[nn.Module]) -> list[tuple]:
    """The positional arguments of every `cls.forward` call, in call order."""
    calls, original = [], cls.forward

    def spy(self, *args):
        calls.append(args)
        return original(self, *args)

    monkeypatch.setattr(cls, "forward", spy)
    return calls


def reference_layer_outputs(model: nn.Module, b: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """What each Qwen2 decoder layer outputs (the last one after the final norm, as transformers'
    hidden_states), caught by hooks on the layers themselves while the backbone runs."""
    layers = model.backbone.llm.model.layers
    outputs: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda m, args, out: outputs.append(out[0] if isinstance(out, tuple) else out))
               for layer in layers]
    slots = model.action_queries.weight.expand(len(b["images"]), -1, -1)
    model.backbone(b["images"], b["input_ids"], b["attention_mask"], slots=slots)
    for handle in handles:
        handle.remove()
    return [*outputs[:-1], model.backbone.llm.model.norm(outputs[-1])]


@pytest.mark.parametrize("policy", ["oft", "vla_adapter"])
def test_policy_shapes_and_loss(policy: str) -> None:
    torch.manual_seed(0)
    model = build_model(load_recipe(policy, "tiny", SMALL))
    out = model.predict(batch())
    assert out.actions.shape == (2, 8, 7)
    assert set(out.attention) == {"agentview", "eye_in_hand"}
    for heat in out.attention.values():
        assert heat.shape == (2, 2, 2) and torch.all(heat >= 0)
    kind = load_recipe(policy, "tiny").training.loss
    loss, metrics = model.loss(batch(), kind)
    loss.backward()
    assert loss.item() > 0 and kind == "mse" and metrics["mse"] == loss.item()  # the tiny recipe's loss

    model.eval()  # no latent noise: both losses see the same predictions
    b = batch()
    err = model.predict(b).actions - b["actions"]
    assert model.loss(b, "mse")[0].item() == pytest.approx(err.square().mean().item(), rel=1e-5)
    assert model.loss(b, "l1")[1]["l1"] == pytest.approx(err.abs().mean().item(), rel=1e-5)


def test_loss_ignores_padded_steps() -> None:
    torch.manual_seed(0)
    model = build_model(load_recipe("oft", "tiny", SMALL)).eval()
    b = batch()
    b["action_is_pad"][:, 4:] = True
    loss_a, _ = model.loss(b)
    b["actions"][:, 4:] += 100.0
    loss_b, _ = model.loss(b)
    assert torch.allclose(loss_a, loss_b)


def test_action_loss_l1_and_mse_hand_computed() -> None:
    pred = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])  # (B=1, T=2, A=2)
    target = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    pad = torch.tensor([[False, True]])  # the second step runs past the demonstration
    assert action_loss(pred, target, pad).item() == pytest.approx((0.5 + 2.0) / 2)
    assert action_loss(pred, target, pad, "mse").item() == pytest.approx((0.25 + 4.0) / 2)
    assert action_loss(pred, target, None, "mse").item() == pytest.approx((0.25 + 4.0 + 4.0 + 0.0) / 4)
    with pytest.raises(ValueError, match="unknown action loss 'huber'; expected one of l1, mse"):
        action_loss(pred, target, pad, "huber")
    assert set(get_args(ActionLoss)) == set(ACTION_LOSSES)  # the recipe accepts exactly the losses there are
    with pytest.raises(ValueError, match="oft-tiny.yaml: recipe key 'loss' is 'huber'; expected one of 'l1', 'mse'"):
        load_recipe("oft", "tiny", {**SMALL, "loss": "huber"})  # when the recipe is loaded, before any training


def test_oft_zero_action_slots_and_one_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model(load_recipe("oft", "tiny", SMALL)).eval()
    calls = []
    llm_forward = model.backbone.llm.forward

    def spy(embeds, mask, position_ids, output_attentions=False):
        calls.append((embeds, mask))
        return llm_forward(embeds, mask, position_ids, output_attentions)

    monkeypatch.setattr(model.backbone.llm, "forward", spy)
    model.predict(batch())
    assert len(calls) == 1  # the whole 8x7 chunk in one pass
    embeds, mask = calls[0]
    assert torch.all(embeds[:, -56:] == 0)  # empty action embeddings
    assert torch.all(mask[0] == 0)  # bidirectional: an unpadded sample masks nothing
    assert (mask[1] < 0).sum() > 0  # padding is masked


def _identity_bridge(dim: int, gate_mode: str, variant: str) -> BridgeAttention:
    block = BridgeAttention(dim, heads=1, gate_mode=gate_mode, variant=variant)
    with torch.no_grad():
        for lin in block.modules():
            if isinstance(lin, nn.Linear):
                lin.weight.copy_(torch.eye(dim))
                lin.bias.zero_()
    return block


@pytest.mark.parametrize("variant", ["pro", "original"])
def test_logit_scale_gate_zero_mean_pools_raw_vision_hand_checked(variant: str) -> None:
    """g=0: raw-vision logits are 0, so C^R is mean-pooled inside the shared softmax."""
    dim = 4
    block = _identity_bridge(dim, "logit_scale", variant)
    assert block.gate.item() == 0.0
    x = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])  # T=1 at position 0: RoPE is the identity
    aq = torch.tensor([[[0.0, 2.0, 0.0, 0.0]]])  # one ActionQuery token, position 0
    raw = torch.randn(1, 3, dim)
    new_x, w = block(x, aq, raw)

    scale = 1 / math.sqrt(dim)
    logits = torch.tensor([1.0 * scale, 0.0, 0.0, 0.0, 0.0])  # self, aq, 3 raw keys (gated to 0)
    weights = logits.softmax(0)
    o = weights[0] * x[0, 0] + weights[1] * aq[0, 0] + weights[2:].sum() * raw[0].mean(0)
    expected = torch.relu(nn.functional.layer_norm(o + x[0, 0], (dim,), block.norm.weight, block.norm.bias))
    assert torch.allclose(w[0, 0, 0], torch.full((3,), weights[2].item()), atol=1e-6)  # uniform over C^R
    assert torch.allclose(new_x[0, 0], expected, atol=1e-5)


def test_output_scale_gate_zero_removes_raw_vision() -> None:
    torch.manual_seed(0)
    block = BridgeAttention(16, heads=2, gate_mode="output_scale")
    x, aq = torch.randn(2, 8, 16), torch.randn(2, 5, 16)
    raw = torch.randn(2, 12, 16)
    out_a, _ = block(x, aq, raw)
    out_b, _ = block(x, aq, torch.randn(2, 12, 16))
    assert torch.equal(out_a, out_b)  # tanh(0) = 0 multiplies the C^R attention output
    assert not torch.allclose(out_a, block(x, torch.randn(2, 5, 16), raw)[0])  # the gate is on C^R, not on C^AQ
    with torch.no_grad():
        block.gate.fill_(0.5)
    out_c, _ = block(x, aq, torch.randn(2, 12, 16))
    assert not torch.allclose(out_a, out_c)


def test_logit_scale_gate_zero_keeps_raw_vision() -> None:
    torch.manual_seed(0)
    block = BridgeAttention(16, heads=2, gate_mode="logit_scale")
    x, aq = torch.randn(2, 8, 16), torch.randn(2, 5, 16)
    out_a, _ = block(x, aq, torch.randn(2, 12, 16))
    out_b, _ = block(x, aq, torch.randn(2, 12, 16))
    assert not torch.allclose(out_a, out_b)  # mean-pooled, not removed


def test_pro_block_hand_computed() -> None:
    """Released MLPResNetBlock_Pro: one query projection, a key and a value projection per source, RoPE
    on the queries and on each source's keys from position 0, tanh(g) on the raw-vision logits inside
    one softmax, then x = ReLU(W_f LN(W_o o + x))."""
    torch.manual_seed(0)
    block = BridgeAttention(8, heads=2, gate_mode="logit_scale", variant="pro")
    with torch.no_grad():
        block.gate.fill_(0.7)
    x, aq, raw = torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 5, 8)
    q = rotary(split_heads(block.q(x), 2), torch.arange(3))
    keys = [rotary(split_heads(block.k[s](t), 2), torch.arange(t.shape[1])) for s, t in zip(SOURCES, (x, aq, raw))]
    values = [split_heads(block.v[s](t), 2) for s, t in zip(SOURCES, (x, aq, raw))]
    logits = [q @ k.transpose(-1, -2) for k in keys]
    logits[2] = math.tanh(0.7) * logits[2]
    weights = (torch.cat(logits, dim=-1) / 2.0).softmax(dim=-1)  # head_dim 4
    o = block.o(merge_heads(weights @ torch.cat(values, dim=2)))
    expected = torch.relu(block.ffn(nn.functional.layer_norm(o + x, (8,), block.norm.weight, block.norm.bias)))
    new_x, raw_weights = block(x, aq, raw)
    torch.testing.assert_close(new_x, expected)
    torch.testing.assert_close(raw_weights, weights[..., -5:])
    original = BridgeAttention(8, heads=2, variant="original")
    assert all(isinstance(getattr(original, n), nn.Linear) for n in "qkvo")
    assert set(block.k) == set(block.v) == {"action", "query", "vision"}


def test_gate_mode_none_leaves_the_raw_logits_unscaled() -> None:
    torch.manual_seed(0)
    ungated = BridgeAttention(16, heads=2, gate_mode="none")
    assert not hasattr(ungated, "gate")
    gated = BridgeAttention(16, heads=2, gate_mode="logit_scale")
    gated.load_state_dict({**ungated.state_dict(), "gate": torch.full((1,), 20.0)})  # tanh(20) is 1.0 in float32
    x, aq, raw = torch.randn(2, 8, 16), torch.randn(2, 5, 16), torch.randn(2, 12, 16)
    assert torch.equal(ungated(x, aq, raw)[0], gated(x, aq, raw)[0])


@pytest.mark.parametrize("variant", ["pro", "original"])
def test_block_i_reads_llm_layer_i_plus_1_raw_vision_and_action_queries_in_their_roles(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block i gets LLM layer i+1's hidden states (the released head's `h_t[:, i+1]`): at the visual
    positions as the gated raw source, at the ActionQuery slots (+ the proprio token) as the other."""
    torch.manual_seed(0)
    model = build_model(load_recipe("vla_adapter", "tiny", {**SMALL, "llm_layers": 3, "variant": variant})).eval()
    b = batch()
    calls = record_block_inputs(monkeypatch, BridgeAttention)
    layers = reference_layer_outputs(model, b)
    model(b)
    out = model.backbone(b["images"], b["input_ids"], b["attention_mask"], slots=model.action_queries.weight.expand(2, -1, -1))
    visual = slice(out.visual["agentview"].start, out.visual["eye_in_hand"].stop)
    assert len(calls) == 3 and all(blk.variant == variant for blk in model.blocks)
    for i, (x, action_queries, raw, pruned) in enumerate(calls):
        torch.testing.assert_close(raw, layers[i][:, visual])
        torch.testing.assert_close(action_queries[:, :-1], layers[i][:, out.slots])
        torch.testing.assert_close(action_queries[:, -1:], model.proprio_projector(b["proprio"]))
        assert pruned is None


def test_vla_adapter_queries_zero_init_and_latent_noise_train_only() -> None:
    torch.manual_seed(0)
    model = build_model(load_recipe("vla_adapter", "tiny", SMALL))
    assert torch.all(model.action_queries.weight == 0)
    assert model.action_queries.weight.shape[0] == 16 and len(model.blocks) == 2
    b = batch()
    model.eval()
    assert torch.equal(model(b).actions, model(b).actions)
    model.train()
    assert not torch.equal(model(b).actions, model(b).actions)


@pytest.mark.parametrize("std", [0.02, 0.2])
def test_tiny_llm_initialised_with_recipe_std(std: float) -> None:
    """`llm_init_std` sets the from-config Qwen2's initializer_range, which its weights then follow."""
    torch.manual_seed(0)
    model = build_model(load_recipe("oft", "tiny", {**SMALL, "llm_init_std": std}))
    llm = model.backbone.llm
    assert llm.config.initializer_range == std
    weights = torch.cat([layer.self_attn.q_proj.weight.flatten() for layer in llm.model.layers])
    assert weights.std().item() == pytest.approx(std, rel=0.05)
    assert torch.all(llm.model.layers[0].self_attn.q_proj.bias == 0)


@pytest.mark.parametrize("std", [0.02, 1.0])
def test_tiny_vit_position_embedding_follows_recipe_std(std: float) -> None:
    torch.manual_seed(0)
    model = build_model(load_recipe("oft", "tiny", {**SMALL, "image_size": 128, "vit_pos_std": std}))
    pos = model.backbone.vision.pos_embed
    assert pos.shape == (1, 64, 128)
    assert pos.std().item() == pytest.approx(std, rel=0.05)


def test_film_block_rescales_the_stream_between_attention_and_mlp_hand_computed() -> None:
    from vla_agents.models.blocks import TransformerBlock

    torch.manual_seed(0)
    block, x = TransformerBlock(8, 2), torch.randn(2, 5, 8)
    gamma, beta = torch.randn(2, 8), torch.randn(2, 8)
    after_attention = x + block.attn(block.norm1(x))[0]
    modulated = after_attention * (1 + gamma[:, None]) + beta[:, None]  # the same for every token
    expected = modulated + block.mlp(block.norm2(modulated))
    torch.testing.assert_close(block(x, film=(gamma, beta))[0], expected)
    zero = torch.zeros(2, 8)
    torch.testing.assert_close(block(x, film=(zero, zero))[0], block(x)[0])  # zero FiLM is the identity


def test_film_makes_visual_tokens_depend_on_the_instruction_and_ignores_padding() -> None:
    torch.manual_seed(0)
    plain = build_model(load_recipe("oft", "tiny", SMALL)).backbone
    film = build_model(load_recipe("oft", "tiny", {**SMALL, "film": True})).backbone
    assert plain.film is None and len(film.film.scale) == SMALL["vit_depth"]
    images = torch.rand(1, 2, 3, 32, 32)
    ids = {word: torch.tensor([[1, *word.encode()]]) for word in ("red", "blue")}

    def visual(backbone, input_ids, mask):
        out = backbone(images, input_ids, mask, slots=torch.zeros(1, 2, backbone.dim))
        return out.hidden_states[0][:, out.visual["agentview"]]  # layer 1 at the patches: the tokens' own content

    def embeds(backbone, word, pad=0):
        input_ids = torch.cat([ids[word][:, :1], torch.zeros(1, pad, dtype=torch.long), ids[word][:, 1:]], dim=1)
        mask = torch.ones_like(input_ids)
        mask[:, 1 : 1 + pad] = 0
        text = backbone.llm.embed(input_ids)
        return backbone.encode_images(images, (text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)) \
            if backbone.film is not None else backbone.encode_images(images)

    assert torch.equal(embeds(plain, "red"), embeds(plain, "blue"))  # no FiLM: vision never reads the prompt
    assert (embeds(film, "red") - embeds(film, "blue")).abs().max() > 1e-3
    torch.testing.assert_close(embeds(film, "red", pad=3), embeds(film, "red"))  # left padding is not language
    left_padded = torch.tensor([[1, 0, 0, *b"red"]])
    mask = torch.tensor([[1, 0, 0, 1, 1, 1]])
    torch.testing.assert_close(visual(film, left_padded, mask)[0, :4, :4],
                               visual(film, ids["red"], torch.ones_like(ids["red"]))[0, :4, :4], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="needs the mean prompt embedding"):
        film.encode_images(images)


def test_film_inside_transformers_towers_matches_the_block_equation(tiny_hf_models) -> None:
    from vla_agents.models.backbones import SIGLIP_MEAN, SIGLIP_STD, HFVisionTower, _normalize

    torch.manual_seed(0)
    tower = HFVisionTower.from_pretrained(tiny_hf_models["siglip_path"], tiny_hf_models["dinov2_path"], 28).eval()
    assert tower.film_dims == [32, 32, 32, 32]  # DINOv2's two layers, then SigLIP's
    pixels = torch.rand(2, 3, 28, 28)
    plain = tower(pixels)
    identity = [(torch.zeros(2, 32), torch.zeros(2, 32))] * 4
    torch.testing.assert_close(tower(pixels, film=identity), plain)
    film = [(torch.randn(2, 32), torch.randn(2, 32)) for _ in range(4)]
    out = tower(pixels, film=film)
    # SigLIP's first layer (its features are the second-to-last hidden state of two), by hand
    model = getattr(tower.siglip, "vision_model", tower.siglip)
    layer = model.encoder.layers[0]
    x = model.embeddings(_normalize(pixels, SIGLIP_MEAN, SIGLIP_STD))
    gamma, beta = film[2]
    x = (x + layer.self_attn(layer.layer_norm1(x))[0]) * (1 + gamma[:, None]) + beta[:, None]
    torch.testing.assert_close(out[..., 32:], x + layer.mlp(layer.layer_norm2(x)))
    # DINOv2: gamma -1 flattens the stream after attention to beta at every patch
    flatten = [(-torch.ones(2, 32), torch.randn(2, 32))] + film[1:]
    dino = tower(pixels, film=flatten)[..., :32]
    torch.testing.assert_close(dino, dino[:, :1].expand_as(dino))
    torch.testing.assert_close(tower(pixels), plain)  # the hooks came off
