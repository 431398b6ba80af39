"""VLA-Adapter (Wang et al., 2025): a small policy bridged to every layer of a small VLM.

1. ActionQuery: N learnable embeddings (zero-initialised) are appended after the prompt; the LLM
   runs causally, so the queries see every visual and text token.
2. Bridge features, per LLM layer i: C^R_i, the hidden states at the visual positions ("raw"),
   and C^AQ_i, the hidden states at the ActionQuery positions.
3. Policy: x0 = zeros(B, T, A*d) (plus training-only noise) -> fc1, then one Bridge Attention
   block per LLM layer (block i reads layer i+1). Queries come from x; keys/values from
   [x ; C^AQ_i + proprio token ; C^R_i]. A learnable gate g (init 0) controls the raw vision:
     - gate_mode="logit_scale" (released code): tanh(g) scales the C^R logits inside one shared
       softmax, so at g=0 the raw-vision keys are mean-pooled, not removed;
     - gate_mode="output_scale" (paper): separate attentions, the C^R one multiplied by tanh(g),
       so at g=0 the raw vision contributes nothing;
     - gate_mode="none": C^R logits unscaled (FocusVLA's Tab. 2 "mixed, w/o gate" row).
   Then x = ReLU(W_f LN(W_o o + x)); finally fc2 -> (B, T, A) normalized actions, trained with L1.
4. Proprio: Linear -> GELU -> Linear, fed to the policy only (not to the LLM).

Two released block versions (`prismatic/models/action_heads.py`, `use_pro_version`):
- variant="pro" (README default, the baseline FocusVLA compares against): one query projection, a
  key and a value projection per source (self, ActionQuery + proprio, raw vision), RoPE on the
  queries and on each source's keys from position 0.
- variant="original": q, k, v and o shared by every source. The released block has no RoPE, so its
  T latents, identical at inference (zeros, no noise), decode one action T times; this package
  keeps RoPE on it, as it always had, and that is its only difference from the released block.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from vla_agents.models.backbones import VisionLanguageBackbone, build_backbone
from vla_agents.models.blocks import PolicyOutput, ProprioProjector, heatmaps, merge_heads, rotary, split_heads
from vla_agents.models.policy import Policy
from vla_agents.recipe import PolicyConfig, Recipe

GateMode = Literal["logit_scale", "output_scale", "none"]
Variant = Literal["pro", "original"]
SOURCES = ("action", "query", "vision")  # the latents themselves, [C^AQ ; proprio], C^R


class BridgeAttention(nn.Module):
    """One policy block: attention from the action latents to themselves, to the ActionQuery
    features (+ proprio) and, gated, to the raw visual features of one LLM layer."""

    def __init__(self, dim: int, heads: int, gate_mode: GateMode = "logit_scale", variant: Variant = "pro") -> None:
        super().__init__()
        if gate_mode not in ("logit_scale", "output_scale", "none"):
            raise ValueError(f"gate_mode must be 'logit_scale', 'output_scale' or 'none', got {gate_mode!r}")
        if variant not in ("pro", "original"):
            raise ValueError(f"variant must be 'pro' or 'original', got {variant!r}")
        self.heads, self.gate_mode, self.variant = heads, gate_mode, variant
        self.scale = (dim // heads) ** -0.5
        self.q, self.o = nn.Linear(dim, dim), nn.Linear(dim, dim)
        if variant == "original":
            self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        else:
            self.k, self.v = (nn.ModuleDict({s: nn.Linear(dim, dim) for s in SOURCES}) for _ in range(2))
        if gate_mode != "none":
            self.gate = nn.Parameter(torch.zeros(1))
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Linear(dim, dim)

    def _keys_values(self, source: str, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = (self.k, self.v) if self.variant == "original" else (self.k[source], self.v[source])
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return rotary(split_heads(k(tokens), self.heads), positions), split_heads(v(tokens), self.heads)

    def forward(
        self, x: torch.Tensor, action_queries: torch.Tensor, raw: torch.Tensor, raw_pruned: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d); action_queries = [C^AQ_i ; proprio] (B, Q+1, d); raw = C^R_i (B, N, d);
        raw_pruned (B, N), True = a pruned visual token that must get no attention here either.
        Returns the new latents and the attention weights on the raw visual keys (B, heads, T, N)."""
        q = rotary(split_heads(self.q(x), self.heads), torch.arange(x.shape[1], device=x.device))
        sources = [self._keys_values(s, t) for s, t in zip(SOURCES, (x, action_queries, raw))]
        logits = [(q @ k.transpose(-1, -2)) * self.scale for k, _ in sources]
        values = [v for _, v in sources]
        gate = torch.tanh(self.gate) if self.gate_mode != "none" else None
        n_raw = raw.shape[1]
        raw_logits = gate * logits[2] if self.gate_mode == "logit_scale" else logits[2]
        if raw_pruned is not None:
            raw_logits = raw_logits.masked_fill(raw_pruned[:, None, None, :], float("-inf"))
        if self.gate_mode == "output_scale":
            per_source = [lg.softmax(dim=-1) for lg in (logits[0], logits[1], raw_logits)]
            o = per_source[0] @ values[0] + per_source[1] @ values[1] + gate * (per_source[2] @ values[2])
            raw_weights = per_source[2]
        else:
            weights = torch.cat([logits[0], logits[1], raw_logits], dim=-1).softmax(dim=-1)
            o = weights @ torch.cat(values, dim=2)
            raw_weights = weights[..., -n_raw:]
        x = torch.relu(self.ffn(self.norm(self.o(merge_heads(o)) + x)))
        return x, raw_weights


class VLAAdapterPolicy(Policy):
    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        chunk: int = 8,
        action_dim: int = 7,
        proprio_dim: int = 8,
        num_action_queries: int = 64,
        policy_heads: int = 8,
        gate_mode: GateMode = "logit_scale",
        latent_noise_std: float = 0.02,
        attention_from: Literal["last", "mean"] = "last",
        variant: Variant = "pro",
    ) -> None:
        super().__init__()
        self.backbone, self.chunk, self.action_dim = backbone, chunk, action_dim
        self.latent_noise_std, self.attention_from = latent_noise_std, attention_from
        d = backbone.dim
        self.action_queries = nn.Embedding(num_action_queries, d)
        nn.init.zeros_(self.action_queries.weight)
        self.proprio_projector = ProprioProjector(proprio_dim, d)
        self.fc1 = nn.Sequential(nn.LayerNorm(action_dim * d), nn.Linear(action_dim * d, d), nn.ReLU())
        self.blocks = nn.ModuleList(
            BridgeAttention(d, policy_heads, gate_mode, variant) for _ in range(backbone.llm.num_layers)
        )
        self.fc2 = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, action_dim))

    def forward(self, batch: dict[str, torch.Tensor], with_attention: bool = False, *,
                llm_attentions: bool = False, visual_key_mask: torch.Tensor | None = None) -> PolicyOutput:
        images, proprio = batch["images"], batch["proprio"]
        b = images.shape[0]
        queries = self.action_queries.weight.unsqueeze(0).expand(b, -1, -1)
        out = self.backbone(images, batch["input_ids"], batch["attention_mask"], slots=queries, causal=True,
                            output_attentions=llm_attentions, visual_key_mask=visual_key_mask)
        visual = slice(out.visual[self.backbone.views[0]].start, out.visual[self.backbone.views[-1]].stop)

        p = self.proprio_projector(proprio).float()
        x0 = p.new_zeros(b, self.chunk, self.action_dim * self.backbone.dim)
        if self.training and self.latent_noise_std > 0:
            x0 = x0 + torch.randn_like(x0) * self.latent_noise_std
        x = self.fc1(x0)
        raw_attention = []
        for block, h in zip(self.blocks, out.hidden_states):  # block i <- LLM layer i+1
            c_aq, c_r = h[:, out.slots].float(), h[:, visual].float()
            x, w = block(x, torch.cat([c_aq, p], dim=1), c_r, out.visual_key_mask)
            raw_attention.append(w)
        actions = self.fc2(x)

        attention = {}
        if with_attention:
            w = raw_attention[-1] if self.attention_from == "last" else torch.stack(raw_attention).mean(0)
            local = {view: slice(s.start - visual.start, s.stop - visual.start) for view, s in out.visual.items()}
            attention = heatmaps(w, local, out.grid)
        return PolicyOutput(actions, attention, features=x.mean(dim=1), backbone=out)

    def loss(self, batch: dict[str, torch.Tensor], kind: str = "l1") -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = super().loss(batch, kind)
        if self.blocks[0].gate_mode != "none":
            metrics["gate_abs"] = float(torch.stack([blk.gate.detach().abs() for blk in self.blocks]).mean())
        return loss, metrics


@dataclass(frozen=True)
class VLAAdapterConfig(PolicyConfig):
    """VLA-Adapter's own recipe keys (the module doc explains each mechanism)."""

    num_action_queries: int  # ActionQuery embeddings appended after the prompt (paper: 64)
    policy_heads: int  # attention heads of each Bridge Attention block
    gate_mode: GateMode  # how the learnable gate g scales the raw vision
    latent_noise_std: float  # noise on the zero latents, when training only
    attention_from: Literal["last", "mean"]  # the overlay's map: the last bridge block's, or the mean over blocks
    variant: Variant = "original"  # recipes saved before the key existed were the original block


def build_vla_adapter(recipe: Recipe, hf_configs: dict[str, Any] | None = None) -> VLAAdapterPolicy:
    """Recipe -> policy (the registry's builder for "vla_adapter")."""
    agent = recipe.agent
    return VLAAdapterPolicy(build_backbone(recipe.backbone, hf_configs), agent.chunk, agent.action_dim,
                            agent.proprio_dim, **dataclasses.asdict(recipe.model))
