"""VAT: the mechanisms the paper and the released code rely on, not only shapes: FiLM on the query
path only, keys/values through the pretrained ViT LayerNorm, the last-layer ablation at full depth."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel

from vla_agents.models.backbones import SIGLIP_MEAN, SIGLIP_STD, _normalize
from vla_agents.models.blocks import merge_heads, split_heads
from vla_agents.models.vat import ActionBlock, VATPolicy, build_vat
from vla_agents.policies import parse_recipe
from vla_agents.recipe import Recipe

from test_models import record_block_inputs

ROOT = Path(__file__).resolve().parents[1]
VIEWS = ["agentview", "eye_in_hand"]
T, A = 2, 3


def recipe(**overrides) -> Recipe:
    r = yaml.safe_load((ROOT / "policies" / "vat-tiny.yaml").read_text())
    r.update(image_size=32, patch_size=8, vit_dim=32, vit_depth=3, vit_heads=2, chunk=T, n_open_loop=T, action_dim=A,
             task_conditioning="task_id", film_hidden_mult=2, backbone_path=None)
    r.update(overrides)
    return parse_recipe(r)


def make_batch(b: int = 2, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.rand(b, 2, 3, size, size, generator=g),
        "proprio": torch.randn(b, 8, generator=g),
        "input_ids": torch.randint(2, 258, (b, 6), generator=g),
        "attention_mask": torch.ones(b, 6, dtype=torch.long),
        "task_index": torch.arange(b) % 3,
        "actions": torch.randn(b, T, A, generator=g).clamp(-1, 1),
        "action_is_pad": torch.zeros(b, T, dtype=torch.bool),
    }


@pytest.fixture()
def policy() -> VATPolicy:
    torch.manual_seed(0)
    return build_vat(recipe()).eval()


def token_coupling(fn, tokens: torch.Tensor) -> torch.Tensor:
    """(Q, Q) matrix whose (i, j) entry is |d (r . out_i) / d in_j| for a random r, for a map of
    (1, Q, C) tokens: exactly zero where out_i does not depend on in_j, nonzero otherwise."""
    tokens = tokens.detach().requires_grad_(True)
    out = fn(tokens)
    r = torch.randn(out.shape[-1], generator=torch.Generator().manual_seed(1))
    rows = [torch.autograd.grad(out[0, i] @ r, tokens, retain_graph=True)[0][0].abs().sum(-1) for i in range(out.shape[1])]
    return torch.stack(rows)


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    return m[~torch.eye(len(m), dtype=torch.bool)]


def test_shapes_and_attention_maps(policy: VATPolicy) -> None:
    out = policy.predict(make_batch())
    assert out.actions.shape == (2, T, A)
    assert set(out.attention) == set(VIEWS)
    assert all(m.shape == (2, 4, 4) for m in out.attention.values())
    # softmax over the patches of both views: the two maps together sum to one
    total = sum(m.sum(dim=(1, 2)) for m in out.attention.values())
    torch.testing.assert_close(total, torch.ones(2))
    assert len(out.layers) == 3 and all(set(m) == set(VIEWS) for m in out.layers)
    stacked = torch.stack([m["agentview"] for m in out.layers]).mean(0)
    torch.testing.assert_close(stacked, out.attention["agentview"])


def test_action_tokens_never_attend_to_each_other(policy: VATPolicy) -> None:
    batch = make_batch(b=1)
    cond = policy.task(batch)
    tokens = policy.action_stream(batch).detach() + 0.1 * torch.randn(1, T * A, 32)

    coupling = token_coupling(lambda t: policy.transformer(batch["images"], t, cond)[0], tokens)
    assert torch.all(off_diagonal(coupling) == 0), "an action token's output depends on another action token"
    assert torch.all(torch.diag(coupling) > 0)

    # the check has teeth: letting the same block also attend to the action tokens couples them
    block = policy.action_blocks[0]
    vision = torch.randn(1, 16, 32)
    film = policy.films[0](cond)
    cross = token_coupling(lambda t: block(t, vision, film)[0], tokens)
    selfish = token_coupling(lambda t: block(t, torch.cat([vision, t], dim=1), film)[0], tokens)
    assert torch.all(off_diagonal(cross) == 0)
    assert torch.all(off_diagonal(selfish) > 0)


def test_vision_branch_is_the_plain_vit(policy: VATPolicy) -> None:
    batch = make_batch()
    cond = policy.task(batch)
    tokens = policy.action_stream(batch)
    with torch.no_grad():
        _, vision_a, _ = policy.transformer(batch["images"], tokens, cond)
        _, vision_b, _ = policy.transformer(batch["images"], torch.randn_like(tokens) * 10, cond)
        vit = policy.backbone.model
        plain = vit(batch["images"].flatten(0, 1)).reshape(2, 2, 16, 32)  # TinyViT's own forward (+ final norm)
    assert torch.equal(vision_a, vision_b)
    torch.testing.assert_close(vit.norm(vision_a), plain, rtol=0, atol=1e-6)


def test_zero_film_is_identity() -> None:
    torch.manual_seed(0)
    block = ActionBlock(32, 2, 2.0)
    tokens, vision = torch.randn(2, 6, 32), torch.randn(2, 16, 32)
    zero = (torch.zeros(2, 1, 32), torch.zeros(2, 1, 32))
    assert torch.equal(block(tokens, vision, zero)[0], block(tokens, vision, None)[0])
    some = (torch.randn(2, 1, 32), torch.randn(2, 1, 32))
    assert not torch.allclose(block(tokens, vision, some)[0], block(tokens, vision, None)[0])


@pytest.mark.parametrize("num_extra", [0, 1])
def test_film_modulates_the_query_path_only_hand_computed(num_extra: int) -> None:
    """Released block: act = act * (gamma + 1) + beta feeds norm1_act only; the residual adds the
    attention output to the unmodulated tokens. A proprio token leading the stream is a key/value too."""
    torch.manual_seed(0)
    block = ActionBlock(32, 2, 2.0)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    tokens, vision = torch.randn(2, 6, 32), torch.randn(2, 16, 32)
    gamma, beta = torch.randn(2, 1, 32), torch.randn(2, 1, 32)
    attn = block.attn
    query = block.norm1(tokens * (1 + gamma) + beta)
    context = torch.cat([block.norm1(tokens[:, :num_extra]), vision], dim=1)
    q, k, v = (split_heads(f(t), 2) for f, t in ((attn.q, query), (attn.k, context), (attn.v, context)))
    weights = ((q @ k.transpose(-1, -2)) / 4.0).softmax(dim=-1)  # head_dim 16
    after = tokens + attn.o(merge_heads(weights @ v))  # the residual keeps the unmodulated tokens
    expected = after + block.mlp(block.norm2(after))
    out, w = block(tokens, vision, (gamma, beta), num_extra)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(w, weights)


def amplify_film(model: VATPolicy) -> None:
    """At init FiLM and the queries are near zero (N(0, 0.02) weights), so attention is almost
    uniform whatever the query; enlarge them so the query path's effect rises above float noise."""
    for film, block in zip(model.films, model.action_blocks):
        for layer in (film.net[0], film.net[-1], block.attn.q, block.attn.k):
            torch.nn.init.normal_(layer.weight, std=0.3)


def test_task_id_conditions_through_film(policy: VATPolicy) -> None:
    batch = make_batch(b=1)
    other = {**batch, "task_index": torch.tensor([2])}
    assert not torch.equal(policy.predict(batch).actions, policy.predict(other).actions)
    amplify_film(policy)
    assert (policy.predict(batch).actions - policy.predict(other).actions).abs().max() > 1e-3
    # FiLM is the only path for the task: with zero modulation the task no longer matters
    for film in policy.films:
        torch.nn.init.zeros_(film.net[-1].weight)
        torch.nn.init.zeros_(film.net[-1].bias)
    assert torch.equal(policy.predict(batch).actions, policy.predict(other).actions)


def test_instruction_conditioning() -> None:
    torch.manual_seed(0)
    model = build_vat(recipe(task_conditioning="instruction")).eval()
    amplify_film(model)
    batch = make_batch(b=1)
    del batch["task_index"]
    other = {**batch, "input_ids": batch["input_ids"].flip(-1) + 1}
    assert (model.predict(batch).actions - model.predict(other).actions).abs().max() > 1e-3
    padded = {**batch, "input_ids": torch.cat([torch.zeros(1, 3, dtype=torch.long), batch["input_ids"]], 1),
              "attention_mask": torch.cat([torch.zeros(1, 3, dtype=torch.long), batch["attention_mask"]], 1)}
    torch.testing.assert_close(model.predict(batch).actions, model.predict(padded).actions)


def pretrained_look(model: VATPolicy) -> None:
    """Fresh LayerNorms are all the identity; give the ViT's the non-trivial affines pretraining leaves."""
    for layer in model.backbone.layers:
        torch.nn.init.normal_(layer.norm1.weight, 1.0, 0.5)
        torch.nn.init.normal_(layer.norm1.bias, 0.0, 0.5)


def vision_block_inputs(model: VATPolicy, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The input of every pretrained ViT block, caught by pre-hooks while the policy runs: (B*V, S, C)."""
    inputs: list[torch.Tensor] = []
    handles = [layer.register_forward_pre_hook(lambda m, args, kwargs: inputs.append(args[0] if args else kwargs["hidden_states"]),
                                               with_kwargs=True) for layer in model.backbone.layers]
    model.predict(batch)
    for handle in handles:
        handle.remove()
    return inputs


def test_keys_and_values_are_each_blocks_input_through_its_pretrained_layernorm(
    policy: VATPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vat_modeling.py`: kv_act reads norm1_non_act(x), the ViT block's own (pretrained) norm1."""
    pretrained_look(policy)
    batch = make_batch()
    blocks = vision_block_inputs(policy, batch)
    calls = record_block_inputs(monkeypatch, ActionBlock)
    policy.predict(batch)
    assert len(calls) == len(blocks) == 3
    for i, (tokens, vision, film, num_extra) in enumerate(calls):
        norm = policy.backbone.layers[i].norm1
        torch.testing.assert_close(vision, norm(blocks[i]).reshape(2, -1, 32), rtol=0, atol=0)
        assert not torch.allclose(vision, policy.action_blocks[i].norm1(blocks[i]).reshape(2, -1, 32))


def test_last_layer_ablation_keeps_the_depth_and_reads_the_second_to_last_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """`actionmodule_modeling.py`: as many action blocks as VAT, each attending to vision_features[-2],
    the output of the ViT's second-to-last block (its last block's input)."""
    torch.manual_seed(0)
    model = build_vat(recipe(action_layers="last")).eval()
    pretrained_look(model)
    full = build_vat(recipe())
    assert len(model.action_blocks) == len(model.films) == 3
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in full.parameters())
    batch = make_batch()
    blocks = vision_block_inputs(model, batch)
    assert len(blocks) == 2  # the last block itself is never run
    calls = record_block_inputs(monkeypatch, ActionBlock)
    out = model.predict(batch)
    second_to_last = model.backbone.block(1, blocks[1])
    features = model.backbone.layers[2].norm1(second_to_last).reshape(2, -1, 32)  # as the ViT's last block reads it
    assert len(calls) == 3 and len(out.layers) == 3
    for i, (tokens, vision, film, num_extra) in enumerate(calls):
        torch.testing.assert_close(vision, features, rtol=0, atol=0)
        assert not torch.allclose(vision, model.action_blocks[i].norm1(second_to_last).reshape(2, -1, 32))


def test_recipes_without_kv_norm_keep_the_action_layernorm_and_refuse_the_old_last_layer_arm(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agents saved before issue 37 normalised keys/values with the action module's own norm1; their
    last-layer arm was a single action block, which no longer fits, so it is refused."""
    old = {k: v for k, v in recipe().to_dict().items() if k != "kv_norm"}
    model = build_vat(parse_recipe(old)).eval()
    pretrained_look(model)
    batch = make_batch()
    blocks = vision_block_inputs(model, batch)
    calls = record_block_inputs(monkeypatch, ActionBlock)
    model.predict(batch)
    for i, (tokens, vision, film, num_extra) in enumerate(calls):
        torch.testing.assert_close(vision, model.action_blocks[i].norm1(blocks[i]).reshape(2, -1, 32), rtol=0, atol=0)
    with pytest.raises(ValueError, match="predates issue 37.*retrain it"):
        build_vat(parse_recipe({**old, "action_layers": "last"}))


def test_proprio_token_is_context_not_an_action_token() -> None:
    torch.manual_seed(0)
    model = build_vat(recipe(use_proprio=True)).eval()
    batch = make_batch(b=1)
    out = model.predict(batch)
    assert out.actions.shape == (1, T, A)
    other = {**batch, "proprio": batch["proprio"] + 1.0}
    assert not torch.allclose(out.actions, model.predict(other).actions)
    cond = model.task(batch)
    tokens = model.action_stream(batch).detach()
    coupling = token_coupling(lambda t: model.transformer(batch["images"], t, cond)[0], tokens)
    assert torch.all(off_diagonal(coupling[1:, 1:]) == 0)
    assert torch.all(coupling[1:, 0] > 0) and torch.all(coupling[0, 1:] == 0)


def _tiny_hf(kind: str, path: Path) -> None:
    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8)
    if kind == "siglip":
        SiglipVisionModel(SiglipVisionConfig(intermediate_size=64, **common)).save_pretrained(path)
    else:
        Dinov2Model(Dinov2Config(mlp_ratio=2, **common)).save_pretrained(path)


@pytest.mark.parametrize("kind", ["siglip", "dinov2"])
def test_paper_scale_from_local_pretrained(kind: str, tmp_path: Path) -> None:
    _tiny_hf(kind, tmp_path)
    paper = yaml.safe_load((ROOT / "policies" / "vat-paper.yaml").read_text())
    paper.update(vision=kind, siglip_path=str(tmp_path), dinov2_path=str(tmp_path), image_size=32,
                 chunk=T, n_open_loop=T, action_dim=A, film_hidden_mult=2)
    model = build_vat(parse_recipe(paper)).eval()
    assert model.backbone.depth == 2 and len(model.action_blocks) == 2  # drop_last_blocks: 1
    norm = model.backbone.attention_norm(0)
    assert norm is (model.backbone.layers[0].layer_norm1 if kind == "siglip" else model.backbone.layers[0].norm1)
    batch = make_batch()
    out = model.predict(batch)
    assert out.actions.shape == (2, T, A) and out.attention["eye_in_hand"].shape == (2, 4, 4)

    # the vision branch reproduces the pretrained model's own hidden states
    with torch.no_grad():
        _, vision, _ = model.transformer(batch["images"], model.action_stream(batch), model.task(batch))
        pixels = batch["images"].flatten(0, 1)
        if kind == "siglip":
            ref = model.backbone.model(_normalize(pixels, SIGLIP_MEAN, SIGLIP_STD), output_hidden_states=True)
        else:
            from vla_agents.models.backbones import IMAGENET_MEAN, IMAGENET_STD

            ref = model.backbone.model(_normalize(pixels, IMAGENET_MEAN, IMAGENET_STD), output_hidden_states=True)
    torch.testing.assert_close(vision.flatten(0, 1), ref.hidden_states[2], rtol=1e-5, atol=1e-5)

    # rebuilt offline from the saved configs, with the same weights, it is the same policy
    rebuilt = build_vat(parse_recipe({**paper, "siglip_path": None, "dinov2_path": None}), model.backbone.hf_configs()).eval()
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.predict(batch).actions, out.actions)


def test_l1_loss_decreases_and_ignores_padding(policy: VATPolicy) -> None:
    batch = make_batch(b=2)
    batch["action_is_pad"][:, -1] = True
    noisy = {**batch, "actions": batch["actions"].clone()}
    noisy["actions"][:, -1] += 5.0
    assert policy.loss(batch)[0].item() == pytest.approx(policy.loss(noisy)[0].item())

    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    first = None
    for _ in range(12):
        loss, metrics = policy.loss(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["l1"] < 0.5 * first


def test_tiny_recipe_builds() -> None:
    r = parse_recipe(yaml.safe_load((ROOT / "policies" / "vat-tiny.yaml").read_text()))
    model = build_vat(r).eval()
    batch = make_batch(b=1, size=r.backbone.image_size)
    batch["actions"] = torch.zeros(1, r.agent.chunk, r.agent.action_dim)
    batch["action_is_pad"] = torch.zeros(1, r.agent.chunk, dtype=torch.bool)
    out = model.predict(batch)
    assert out.actions.shape == (1, 8, 7)
    assert out.attention["agentview"].shape == (1, 8, 8)
    assert model.action_token.shape == (1, 56, r.backbone.vit_dim)
