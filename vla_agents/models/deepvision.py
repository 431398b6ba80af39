"""DeepVision-VLA ("Look Before Acting", arXiv 2603.15618): a vision expert wired into the deep
layers of a QwenVLA-OFT policy.

Base, QwenVLA-OFT. The images and prompt run through the VLM; T action tokens, zero vectors as in
OFT, are appended. Prompt tokens attend causally; the action tokens attend to the whole prompt and,
bidirectionally, to each other. A two-layer MLP decodes each action token's last hidden state into
one normalized action, trained with L1.

VL-MoT. Visual grounding fades in deep LLM layers, so a vision expert (DINOv2 here, DINOv3 in the
paper) looks at a higher-resolution image and feeds the last n LLM layers. In each coupled pair, the
expert computes its own Q, K, V. Learnable linears map them to the LLM's attention layout (query
heads, and KV heads for GQA). The two branches' Q, K, V are concatenated as [E; Z] and attended with
one softmax. The result is split back: LLM tokens continue with the LLM layer's o_proj and MLP, and
expert tokens go through a linear back to the expert's width, then its own o_proj and MLP. The
paper's ablation chooses which expert layers are coupled to those last n LLM layers: the first n,
n spread uniformly over its depth, or the last n (best). Expert layers that are not coupled run on
their own.

Mask of the shared attention (one softmax over [E; Z]):
- LLM queries see every kept expert token, plus the LLM keys their own mask allows.
- Expert queries see the kept expert tokens of their own image, bidirectionally (as the expert was
  pretrained to encode each image), and with `shared_attention="joint"` (default) every LLM key:
  the paper writes Q = [Q_E; Q_Z], K = [K_E; K_Z], H = softmax(QKᵀ/√d)V with no mask between the
  branches, so information flows both ways and the expert's later layers are updated by what the
  VLA has read. `shared_attention="one_way"` reads [E; Z] as a prefix under the VLA's causal mask:
  the expert sees no LLM token. Agents saved before issue 37 were trained so and load with it.
- Expert tokens carry the expert's own position embeddings and get no RoPE (RoPE position 0).

AGVP. Shallow LLM layers ground actions best. Their action-to-vision attention, averaged over the
layers `agvp_layers` (inclusive, before the first coupled layer), the heads and the action tokens,
is laid out on each view's patch grid. It is bilinearly interpolated to the expert's grid, and only
the top-K expert patch tokens (K = keep_ratio * grid) join the coupled layers; the others are
dropped: no later expert layer computes them and no LLM query attends to them. The expert's
CLS/register tokens are not spatial and always stay. Ablations (the paper's guidance ablation):
guidance="instruction" uses prompt-to-vision attention; guidance="cls" the expert's own CLS-to-patch
attention (DINOv2's here, DINOv3's in the paper) in its first coupled layer, before pruning;
guidance="none" keeps a uniformly random K; pruning=False keeps every token.

With coupled_layers=0 the model is exactly its QwenVLA-OFT base: no expert is built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

from vla_agents.models.backbones import (
    IMAGENET_MEAN, IMAGENET_STD, SIGLIP_MEAN, SIGLIP_STD, BackboneOutput, LanguageModel, TinyViT, VisionLanguageBackbone,
    _normalize, build_backbone,
)
from vla_agents.models.blocks import PolicyOutput, ProprioProjector, split_heads
from vla_agents.models.dtp import relevance
from vla_agents.models.policy import Policy
from vla_agents.recipe import PolicyConfig, Recipe

COUPLINGS = ("last", "first", "uniform")
GUIDANCES = ("action", "instruction", "cls", "none")
SHARED_ATTENTION = ("joint", "one_way")


# ----------------------------------------------------------------------------------------------
# Masks, layer selection, shared attention, token selection
# ----------------------------------------------------------------------------------------------
def qwenvla_mask(keys: torch.Tensor, n_actions: int) -> torch.Tensor:
    """QwenVLA-OFT attention as bool (B, 1, S, S), True = may attend: causal over the prompt,
    bidirectional among the last `n_actions` positions; `keys` (B, S) drops padding/pruned keys."""
    s = keys.shape[1]
    allowed = torch.ones(s, s, dtype=torch.bool, device=keys.device).tril()
    allowed[s - n_actions :, s - n_actions :] = True
    return keys[:, None, None, :] & allowed


def joint_mask(
    llm: torch.Tensor, keys: torch.Tensor, n_views: int, per_view: int, expert_reads_llm: bool = True
) -> torch.Tensor:
    """The [E; Z] mask (B, 1, E+S, E+S): expert queries see their own image's expert tokens and, with
    `expert_reads_llm`, every LLM key that `keys` (B, S) keeps; LLM queries see every expert token and
    what `llm` (B, 1, S, S) allows."""
    b, s = llm.shape[0], llm.shape[-1]
    e = n_views * per_view
    view = torch.arange(e, device=llm.device) // per_view
    to_llm = keys[:, None, None, :].expand(b, 1, e, s) if expert_reads_llm else llm.new_zeros(b, 1, e, s)
    expert_rows = torch.cat([(view[:, None] == view[None]).expand(b, 1, e, e), to_llm], dim=-1)
    llm_rows = torch.cat([llm.new_ones(b, 1, s, e), llm], dim=-1)
    return torch.cat([expert_rows, llm_rows], dim=-2)


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def coupled_expert_layers(depth: int, n: int, coupling: str) -> list[int]:
    """Which of the expert's `depth` layers feed the LLM's last n layers (paper ablation)."""
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    if not 0 <= n <= depth:
        raise ValueError(f"cannot couple {n} layers of a {depth}-layer expert")
    if n == 0:
        return []
    if coupling == "last":
        return list(range(depth - n, depth))
    if coupling == "first":
        return list(range(n))
    return [int(i * (depth - 1) / (n - 1) + 0.5) for i in range(n)] if n > 1 else [depth - 1]


def shared_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """H = softmax(Q Kᵀ * scaling + mask) V over the union of both branches' tokens.
    q (B, H, N, dh), k and v (B, KV, N, dh) (GQA: KV heads repeated), mask additive (B, 1, N, N).
    Returns (B, N, H*dh) and the weights (B, H, N, N); the same ops as transformers' eager Qwen2."""
    groups = q.shape[1] // k.shape[1]
    logits = torch.matmul(q, repeat_kv(k, groups).transpose(2, 3)) * scaling + mask
    weights = logits.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(weights, repeat_kv(v, groups)).transpose(1, 2).contiguous()
    return out.flatten(2), weights


def top_k_tokens(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) -> indices (B, k) of the k highest scores, in token order."""
    return scores.topk(k, dim=1).indices.sort(dim=1).values


# ----------------------------------------------------------------------------------------------
# Vision experts, run layer by layer
# ----------------------------------------------------------------------------------------------
class TinyExpert(nn.Module):
    """A TinyViT (tiny scale). Exposes per layer: run alone, Q/K/V, and finish from attended values.
    `cls=True` prepends a learned CLS token, as DINO's, which the CLS guidance ablation reads."""

    def __init__(self, vit: TinyViT, cls: bool = False) -> None:
        super().__init__()
        self.vit, self.grid, self.dim = vit, vit.grid, vit.dim
        self.depth, self.heads, self.prefix = len(vit.blocks), vit.blocks[0].attn.heads, int(cls)
        if cls:
            self.cls_token = nn.Parameter(torch.randn(1, 1, vit.dim) * 0.02)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.vit.patch_embed(_normalize(pixels, SIGLIP_MEAN, SIGLIP_STD))
        x = x.flatten(2).transpose(1, 2) + self.vit.pos_embed
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) if self.prefix else x

    def layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.vit.blocks[i](x)[0]

    def qkv(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        block = self.vit.blocks[i]
        x = block.norm1(x)
        return block.attn.q(x), block.attn.k(x), block.attn.v(x)

    def finish(self, i: int, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        block = self.vit.blocks[i]
        x = x + block.attn.o(attended)
        return x + block.mlp(block.norm2(x))

    def configs(self) -> None:
        return None


class DinoExpert(nn.Module):
    """DINOv2 (with or without registers) from transformers (paper scale), same interface."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__()
        self.model, cfg = model, model.config
        self.grid = (image_size // cfg.patch_size, image_size // cfg.patch_size)
        self.dim, self.depth, self.heads = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads
        self.prefix = 1 + getattr(cfg, "num_register_tokens", 0)  # CLS first, then registers

    @classmethod
    def build(cls, path: str | None, config: dict[str, Any] | None, image_size: int) -> DinoExpert:
        """From a pretrained path, or (loading a saved agent) from its config with random weights."""
        if config is not None:
            cfg = dict(config)
            return cls(AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)), image_size)
        return cls(AutoModel.from_pretrained(path), image_size)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(_normalize(pixels, IMAGENET_MEAN, IMAGENET_STD))

    def layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.model.encoder.layer[i](x)

    def qkv(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        layer = self.model.encoder.layer[i]
        x, attn = layer.norm1(x), layer.attention
        return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)

    def finish(self, i: int, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        layer = self.model.encoder.layer[i]
        x = x + layer.layer_scale1(layer.attention.o_proj(attended))
        return x + layer.layer_scale2(layer.mlp(layer.norm2(x)))

    def configs(self) -> dict[str, Any]:
        return self.model.config.to_dict()


class Bridge(nn.Module):
    """One coupled pair's new weights: expert Q, K, V -> the LLM's head layout, and the expert's
    share of the shared attention output -> back to the expert's width."""

    def __init__(self, expert_dim: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(expert_dim, heads * head_dim)
        self.k = nn.Linear(expert_dim, kv_heads * head_dim)
        self.v = nn.Linear(expert_dim, kv_heads * head_dim)
        self.back = nn.Linear(heads * head_dim, expert_dim)


# ----------------------------------------------------------------------------------------------
# The backbone: the VLM run layer by layer, AGVP, VL-MoT
# ----------------------------------------------------------------------------------------------
@dataclass
class DeepVisionBackboneOutput(BackboneOutput):
    """Plus the AGVP guidance per view on the VLA's patch grid (B, h, w), and which expert patches
    joined the shared attention, per view as bool (B, he, we); empty without pruning."""

    guidance: dict[str, torch.Tensor] = field(default_factory=dict)
    kept_expert: dict[str, torch.Tensor] = field(default_factory=dict)


class DeepVisionBackbone(VisionLanguageBackbone):
    """Inputs arrive at the expert's resolution; the VLA branch sees them resized to `vla_image_size`.
    The LLM layers are run by hand (same ops as transformers' eager Qwen2) so the deep ones can
    share attention with the expert. `attentions` are the LLM-query x LLM-key weights of every
    layer (in coupled layers the rest of each row's mass went to expert tokens)."""

    def __init__(
        self,
        vision: nn.Module,
        llm: LanguageModel,
        views: list[str],
        vla_image_size: int,
        expert: TinyExpert | DinoExpert | None = None,
        coupled_layers: int = 0,
        coupling: str = "last",
        agvp_layers: Sequence[int] = (0, 0),
        pruning: bool = True,
        guidance: str = "action",
        keep_ratio: float = 0.5,
        shared_attention: str = "joint",
    ) -> None:
        super().__init__(vision, llm, views)
        if guidance not in GUIDANCES:
            raise ValueError(f"guidance must be one of {GUIDANCES}, got {guidance!r}")
        if shared_attention not in SHARED_ATTENTION:
            raise ValueError(f"shared_attention must be one of {SHARED_ATTENTION}, got {shared_attention!r}")
        if coupled_layers and expert is None:
            raise ValueError("coupled_layers > 0 needs a vision expert")
        if coupled_layers and guidance == "cls" and not expert.prefix:
            raise ValueError("guidance 'cls' needs an expert with a CLS token (DINOv2; the tiny ViT with expert_cls_token)")
        self.vla_image_size, self.expert = vla_image_size, expert
        self.first_coupled = llm.num_layers - coupled_layers
        self.expert_layers = coupled_expert_layers(expert.depth, coupled_layers, coupling) if expert else []
        self.agvp_layers = list(range(agvp_layers[0], agvp_layers[1] + 1))
        if not 0 <= agvp_layers[0] <= agvp_layers[1] < self.first_coupled:
            raise ValueError(f"agvp_layers {list(agvp_layers)} must be shallow LLM layers, before layer {self.first_coupled}")
        if not 0 < keep_ratio <= 1:
            raise ValueError("keep_ratio must be in (0, 1]")
        self.pruning, self.guidance, self.keep_ratio, self.shared_attention = pruning, guidance, keep_ratio, shared_attention
        cfg = llm.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.bridges = nn.ModuleList(
            Bridge(expert.dim, cfg.num_attention_heads, cfg.num_key_value_heads, head_dim) for _ in self.expert_layers
        )

    @property
    def kept_tokens(self) -> int:
        """K: expert patch tokens per view that join the shared attention."""
        n = self.expert.grid[0] * self.expert.grid[1]
        return n if not self.pruning else max(1, round(self.keep_ratio * n))

    def hf_configs(self) -> dict[str, Any]:
        out = super().hf_configs()
        if self.expert is not None and self.expert.configs() is not None:
            out["expert"] = self.expert.configs()
        return out

    # ------------------------------------------------------------------ one LLM layer
    def llm_layer(
        self, i: int, h: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
        expert_qkv: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Decoder layer i on LLM tokens h, optionally sharing attention with expert Q, K, V (already
        in the LLM head layout). Returns new h, the expert's attended values (or None), and the
        LLM-query x LLM-key attention weights."""
        layer = self.llm.model.layers[i]
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        shape = (*x.shape[:2], -1, attn.head_dim)
        q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        q, k = apply_rotary_pos_emb(q, k, *rope)
        ne = 0
        if expert_qkv is not None:
            ne = expert_qkv[0].shape[2]
            q, k, v = (torch.cat([e, z], dim=2) for e, z in zip(expert_qkv, (q, k, v)))
        out, weights = shared_attention(q, k, v, mask, attn.scaling)
        h = h + attn.o_proj(out[:, ne:])
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h, (out[:, :ne] if ne else None), weights[:, :, ne:, ne:]

    # ------------------------------------------------------------------ AGVP
    def guidance_maps(
        self, attentions: Sequence[torch.Tensor], attention_mask: torch.Tensor, out: BackboneOutput
    ) -> dict[str, torch.Tensor]:
        """Shallow-layer attention to each view's patches, (B, h, w) per view: from the action tokens,
        or (guidance="instruction") from the non-padded prompt tokens."""
        if self.guidance == "instruction":
            prompt = slice(out.extra.stop, out.slots.start)
            keep = attention_mask[:, 1:].bool()
            rows = [relevance(attentions, self.agvp_layers, prompt, keep, pos) for pos in out.visual.values()]
        else:
            rows = [torch.stack([attentions[i][:, :, out.slots, pos].float().mean(dim=(1, 2)) for i in self.agvp_layers]).mean(0)
                    for pos in out.visual.values()]
        return {view: r.reshape(-1, *out.grid) for view, r in zip(out.visual, rows)}

    def cls_guidance(self, e: torch.Tensor, layer: int) -> torch.Tensor:
        """The expert's CLS-to-patch attention in expert `layer` on tokens e (B*V, prefix + N, De):
        softmax over every key, read at the patches and averaged over heads -> (B*V, N)."""
        q, k, _ = (split_heads(t, self.expert.heads) for t in self.expert.qkv(layer, e))
        weights = (q[:, :, :1] @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        return weights[:, :, 0, self.expert.prefix :].mean(dim=1)

    def expert_scores(self, maps: dict[str, torch.Tensor], e: torch.Tensor, layer: int) -> torch.Tensor:
        """What AGVP ranks the expert's patch tokens by, (B*V, N): the guidance maps (B, h, w) per view
        interpolated to the expert's grid, the expert's own CLS attention, or random ("none")."""
        if self.guidance == "none":
            return torch.rand(e.shape[0], self.expert.grid[0] * self.expert.grid[1], device=e.device)
        if self.guidance == "cls":
            return self.cls_guidance(e, layer)
        m = torch.stack([maps[v] for v in self.views], dim=1).flatten(0, 1)  # (B*V, h, w)
        return F.interpolate(m[:, None], size=self.expert.grid, mode="bilinear", align_corners=False).flatten(1)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        slots: torch.Tensor,
        extra: torch.Tensor | None = None,
        output_attentions: bool = False,
        visual_key_mask: torch.Tensor | None = None,
    ) -> DeepVisionBackboneOutput:
        """Sequence [start, visual tokens, extra, prompt, action tokens], as VisionLanguageBackbone;
        `visual_key_mask` (B, V*h*w), True = pruned, drops VLA visual tokens as keys (DTP)."""
        b, n_views = images.shape[:2]
        pixels = images.flatten(0, 1)
        small = pixels
        if pixels.shape[-1] != self.vla_image_size:
            size = (self.vla_image_size, self.vla_image_size)
            small = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
        text = self.llm.embed(input_ids)
        tokens = self.projector(self.vision(small))
        visual = tokens.reshape(b, n_views * tokens.shape[1], -1).to(text.dtype)
        extra = text.new_zeros(b, 0, text.shape[-1]) if extra is None else extra.to(text.dtype)
        embeds = torch.cat([text[:, :1], visual, extra, text[:, 1:], slots.to(text.dtype)], dim=1)

        ones = lambda t: attention_mask.new_ones(b, t.shape[1])  # noqa: E731
        keep = torch.cat([attention_mask[:, :1], ones(visual), ones(extra), attention_mask[:, 1:], ones(slots)], dim=1).bool()
        position_ids = (keep.long().cumsum(dim=1) - 1).clamp(min=0)  # padding does not consume RoPE positions
        keys = keep.clone()
        if visual_key_mask is not None:
            keys[:, 1 : 1 + visual.shape[1]] &= ~visual_key_mask.bool()
        allowed = qwenvla_mask(keys, slots.shape[1])

        n = visual.shape[1] // n_views
        start_extra = 1 + visual.shape[1]
        out = DeepVisionBackboneOutput(
            hidden_states=(), attentions=None,
            visual={view: slice(1 + i * n, 1 + (i + 1) * n) for i, view in enumerate(self.views)},
            extra=slice(start_extra, start_extra + extra.shape[1]),
            slots=slice(embeds.shape[1] - slots.shape[1], embeds.shape[1]),
            grid=self.grid, visual_key_mask=visual_key_mask,
        )

        rope = self.llm.model.rotary_emb(embeds, position_ids)
        mask = additive(allowed, embeds.dtype)
        h, hidden, attentions = embeds, [], []
        for i in range(self.first_coupled):  # shallow layers: the VLA alone
            h, _, weights = self.llm_layer(i, h, mask, rope)
            hidden.append(h)
            attentions.append(weights)
        if output_attentions or (self.expert_layers and self.pruning and self.guidance in ("action", "instruction")):
            out.guidance = self.guidance_maps(attentions, attention_mask, out)
        if self.expert_layers:
            h = self.coupled_layers(h, pixels, keys, allowed, rope, out, hidden, attentions)
        hidden[-1] = self.llm.model.norm(hidden[-1])  # as transformers' last hidden state
        out.hidden_states = tuple(hidden)
        out.attentions = tuple(attentions) if output_attentions else None
        return out

    def coupled_layers(
        self, h: torch.Tensor, pixels: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor], out: DeepVisionBackboneOutput, hidden: list[torch.Tensor],
        attentions: list[torch.Tensor],
    ) -> torch.Tensor:
        """VL-MoT: the expert runs alone up to its first coupled layer; AGVP then keeps K patch tokens
        per image (plus CLS/registers); each coupled expert layer shares attention with the next deep
        LLM layer, expert layers in between run alone. `keys` (B, S) are the LLM keys not padded or
        pruned, `allowed` the LLM's own mask. Appends to `hidden` and `attentions`."""
        expert, b, n_views = self.expert, h.shape[0], len(self.views)
        e = expert.embed(pixels)  # (B*V, prefix + N, De)
        for j in range(self.expert_layers[0]):
            e = expert.layer(j, e)
        if self.pruning:
            with torch.no_grad():
                scores = self.expert_scores(out.guidance, e, self.expert_layers[0])
                idx = top_k_tokens(scores, self.kept_tokens)
            if self.guidance == "cls":
                cls = scores.view(b, n_views, *expert.grid)
                out.guidance = {view: cls[:, i] for i, view in enumerate(self.views)}
            patches = e[:, expert.prefix :].gather(1, idx[:, :, None].expand(-1, -1, e.shape[-1]))
            e = torch.cat([e[:, : expert.prefix], patches], dim=1)
            kept = torch.zeros(idx.shape[0], expert.grid[0] * expert.grid[1], dtype=torch.bool, device=idx.device)
            kept.scatter_(1, idx, True)
            kept = kept.view(b, n_views, *expert.grid)
            out.kept_expert = {view: kept[:, i] for i, view in enumerate(self.views)}
        per_view = e.shape[1]
        mask = additive(joint_mask(allowed, keys, n_views, per_view, self.shared_attention == "joint"), h.dtype)
        done = self.expert_layers[0]
        last = len(self.expert_layers) - 1
        for step, (i, j) in enumerate(zip(range(self.first_coupled, self.llm.num_layers), self.expert_layers)):
            for between in range(done, j):
                e = expert.layer(between, e)
            bridge = self.bridges[step]
            head_dim = self.llm.model.layers[i].self_attn.head_dim
            qkv = [
                proj(x).reshape(b, n_views * per_view, -1, head_dim).transpose(1, 2).to(h.dtype)
                for proj, x in zip((bridge.q, bridge.k, bridge.v), expert.qkv(j, e))
            ]
            h, attended, weights = self.llm_layer(i, h, mask, rope, qkv)
            hidden.append(h)
            attentions.append(weights)
            if step < last:  # nothing reads the expert after the last coupled layer
                attended = bridge.back(attended.to(e.dtype)).reshape(b * n_views, per_view, -1)
                e = expert.finish(j, e, attended)
            done = j + 1
        return h


# ----------------------------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------------------------
@dataclass
class DeepVisionOutput(PolicyOutput):
    """PolicyOutput plus overlay masks: {"kept_expert": view -> bool (B, he, we)} with pruning."""

    masks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


class DeepVisionPolicy(Policy):
    """QwenVLA-OFT head on a DeepVisionBackbone: T zero action tokens (one per chunk step), robot
    state as one extra token after the images, a two-layer MLP per action token, L1 loss."""

    def __init__(self, backbone: DeepVisionBackbone, chunk: int = 8, action_dim: int = 7, proprio_dim: int = 8) -> None:
        super().__init__()
        self.backbone, self.chunk, self.action_dim = backbone, chunk, action_dim
        d = backbone.dim
        self.proprio_projector = ProprioProjector(proprio_dim, d)
        self.action_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, action_dim))

    def forward(self, batch: dict[str, torch.Tensor], with_attention: bool = False, *,
                llm_attentions: bool = False, visual_key_mask: torch.Tensor | None = None) -> DeepVisionOutput:
        proprio = batch["proprio"]
        slots = proprio.new_zeros(proprio.shape[0], self.chunk, self.backbone.dim)
        out = self.backbone(
            batch["images"], batch["input_ids"], batch["attention_mask"], slots,
            extra=self.proprio_projector(proprio), output_attentions=with_attention or llm_attentions,
            visual_key_mask=visual_key_mask,
        )
        slots = out.hidden_states[-1][:, out.slots].float()
        actions = self.action_head(slots)
        masks = {"kept_expert": out.kept_expert} if out.kept_expert else {}
        return DeepVisionOutput(actions, out.guidance if with_attention else {}, masks, features=slots.mean(dim=1),
                                backbone=out)


@dataclass(frozen=True)
class DeepVisionConfig(PolicyConfig):
    """DeepVision-VLA's own recipe keys (the module doc explains each mechanism). The backbone's
    `image_size` is the expert's (and the camera input's) resolution."""

    vla_image_size: int  # the VLA branch sees the input resized to this
    expert: Literal["tiny_vit", "dinov2"]  # the vision expert: a tiny ViT, or any DINOv2 at expert_path
    expert_path: str | None  # hub id or local folder of the DINOv2 expert
    expert_patch_size: int | None  # the tiny expert's ViT (None for DINOv2)
    expert_dim: int | None
    expert_depth: int | None
    expert_heads: int | None
    coupled_layers: int  # VL-MoT: the last n LLM layers share attention with n expert layers; 0 = QwenVLA-OFT base
    coupling: Literal["last", "first", "uniform"]  # which expert layers (paper ablation; last is best)
    agvp_layers: list[int]  # AGVP guidance averaged over these LLM layers (first, last; inclusive)
    pruning: bool  # AGVP on; false: every expert token joins
    guidance: Literal["action", "instruction", "cls", "none"]  # what ranks the expert tokens (none: random K)
    keep_ratio: float  # fraction of expert patch tokens kept
    expert_cls_token: bool = False  # a learned CLS token on the tiny expert, as DINO's (read by guidance cls)
    shared_attention: Literal["joint", "one_way"] = "one_way"  # recipes saved before the key existed: one_way


def build_deepvision(recipe: Recipe, hf_configs: dict[str, Any] | None = None) -> DeepVisionPolicy:
    """Recipe -> policy (the registry's builder for "deepvision"). The VLA branch is built at
    `vla_image_size`; with `hf_configs` every tower is rebuilt offline."""
    m, agent, size = recipe.model, recipe.agent, recipe.backbone.image_size
    base = build_backbone(dataclasses.replace(recipe.backbone, image_size=m.vla_image_size), hf_configs)
    expert = None
    if m.coupled_layers:
        if m.expert == "tiny_vit":
            expert = TinyExpert(TinyViT(size, m.expert_patch_size, m.expert_dim, m.expert_depth, m.expert_heads),
                                cls=m.expert_cls_token)
        else:
            expert = DinoExpert.build(m.expert_path, (hf_configs or {}).get("expert"), size)
    backbone = DeepVisionBackbone(
        base.vision, base.llm, base.views, m.vla_image_size, expert, coupled_layers=m.coupled_layers,
        coupling=m.coupling, agvp_layers=m.agvp_layers, pruning=m.pruning, guidance=m.guidance,
        keep_ratio=m.keep_ratio, shared_attention=m.shared_attention,
    )
    return DeepVisionPolicy(backbone, agent.chunk, agent.action_dim, agent.proprio_dim)
