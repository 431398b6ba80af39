"""FocusVLA (Zhang et al., 2026, arXiv 2603.28740): VLA-Adapter with focused visual utilization.

The VLM side is VLA-Adapter's unchanged (ActionQuery slots, per-layer bridge features C^AQ_i and
C^V_i, proprio token for the policy only, x0 = zeros -> fc1 -> blocks -> fc2, L1 loss). Each
policy block replaces the mixed attention with:

1. Modality Cascaded Attention (Sec. 3.3, eqs. 6-8): the action latent A attends to itself, to
   [C^AQ ; proprio] and to the vision in three SEPARATE softmaxes, so the easy ActionQuery path
   cannot take attention mass away from the visual keys (the "structural shortcut");
   Â = MLP_fusion([H_A ; H_AQ ; H_V]) and A' = FFN(Â) + A.
2. Patch-level Focus (eqs. 9-10): scores between the action latent's queries and keys from the
   VLM's features at the visual positions; only the top-K patches stay, the rest are masked out
   of the softmax. Values come from the raw vision-encoder features (DINOv2+SigLIP, projected to
   the policy width), which keep the spatial detail that deep VLM layers abstract away.
3. Channel-level Focus (eq. 11, after Gated Attention's G1 position): H_V ⊙ σ(W_g A), applied to
   the per-head attention output before it is projected (here: before the fusion MLP).

Switches for the paper's ablations (Tab. 2): `attention_mode` "cascaded" | "mixed" (VLA-Adapter's
one shared softmax over all keys), `topk` (None keeps all), `gate` "none" | "scalar" | "head" |
"element", `visual_source` "raw" | "vlm" for the vision values, and `cascade` "parallel" |
"serial" (see `FocusBlock`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from vla_agents.models.backbones import VisionLanguageBackbone
from vla_agents.models.blocks import PolicyOutput, ProprioProjector, action_loss, heatmaps, merge_heads, rotary, split_heads

Cascade = Literal["parallel", "serial"]
AttentionMode = Literal["cascaded", "mixed"]
Gate = Literal["none", "scalar", "head", "element"]
VisualSource = Literal["raw", "vlm"]
SOURCES = ("action", "query", "vision")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


@dataclass
class FocusOutput(PolicyOutput):
    """PolicyOutput plus named patch masks, name -> view -> (B, h, w) bool: "kept" is the top-K set."""

    masks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


class FocusBlock(nn.Module):
    """One FocusVLA policy layer.

    `cascade="parallel"` (default): all three attentions query the same latent A_t. This is what
    the equations say: eq. 6 writes Q = A_t for H_A, H_AQ and H_V, eq. 9 scores the patches with
    σ_q(A_t), and eq. 7 fuses all three outputs (a chain would only need its last one); "cascaded"
    names the separation of modalities, not a chain. (Eq. 6 as transcribed in the reference notes;
    our text copy of the paper lost the equations.) `cascade="serial"` is the other reading of
    "sequentially integrates" (Sec. 3.3): H_A -> H_AQ -> H_V, each stage querying with the previous
    stage's output.

    `attention_mode="mixed"` keeps the same projections, focus and gate but puts the three key sets
    in one softmax (VLA-Adapter, eq. 1), so the sources compete for one unit of attention mass.
    """

    def __init__(
        self, dim: int, heads: int, cascade: Cascade = "parallel", attention_mode: AttentionMode = "cascaded",
        topk: int | None = None, gate: Gate = "element",
    ) -> None:
        super().__init__()
        _check("cascade", cascade, ("parallel", "serial"))
        _check("attention_mode", attention_mode, ("cascaded", "mixed"))
        _check("gate", gate, ("none", "scalar", "head", "element"))
        if attention_mode == "mixed" and cascade == "serial":
            raise ValueError("a serial cascade needs separate attentions; use attention_mode='cascaded'")
        if topk is not None and topk < 1:
            raise ValueError(f"topk must be positive or None, got {topk}")
        self.heads, self.cascade, self.attention_mode, self.topk, self.gate_kind = heads, cascade, attention_mode, topk, gate
        self.scale = (dim // heads) ** -0.5
        self.q, self.k, self.v = (nn.ModuleDict({s: nn.Linear(dim, dim) for s in SOURCES}) for _ in range(3))
        if gate == "scalar":  # Tab. 2 "1-param": one learned value per block, as VLA-Adapter's gate
            self.gate = nn.Parameter(torch.zeros(1))
        elif gate != "none":  # Gated Attention: σ(X W_θ) from the hidden state that makes the query
            self.gate = nn.Linear(dim, dim if gate == "element" else heads)
        self.fusion = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def logits(self, source: str, query_in: torch.Tensor, key_in: torch.Tensor) -> torch.Tensor:
        """Scaled dot products (B, heads, T, N), RoPE on both sides so identical latents decode
        different timesteps (as VLA-Adapter-Pro)."""
        q = rotary(split_heads(self.q[source](query_in), self.heads), torch.arange(query_in.shape[1], device=query_in.device))
        k = rotary(split_heads(self.k[source](key_in), self.heads), torch.arange(key_in.shape[1], device=key_in.device))
        return (q @ k.transpose(-1, -2)) * self.scale

    def focus(self, logits: torch.Tensor, pruned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch-level Focus: the patch score is its logit averaged over heads and action latents, so
        each sample keeps one patch set; the others get -inf, hence exactly zero attention. Tokens
        already pruned upstream (`pruned` (B, N), True = pruned, e.g. by DTP) are never kept."""
        b, n = logits.shape[0], logits.shape[-1]
        allowed = torch.ones(b, n, dtype=torch.bool, device=logits.device) if pruned is None else ~pruned.bool()
        if self.topk is None or self.topk >= n:
            kept = allowed
        else:
            scores = logits.detach().mean(dim=(1, 2)).masked_fill(~allowed, float("-inf"))
            top = scores.topk(self.topk, dim=-1).indices
            kept = torch.zeros_like(allowed).scatter(1, top, True) & allowed
        return kept, logits if kept.all() else logits.masked_fill(~kept[:, None, None, :], float("-inf"))

    def gate_values(self, query_in: torch.Tensor) -> torch.Tensor | None:
        """Channel-level Focus gate in (0, 1), broadcastable to the per-head output (B, heads, T, Dh):
        element (B, heads, T, Dh), head (B, heads, T, 1), scalar (1, 1, 1, 1); None when off."""
        if self.gate_kind == "none":
            return None
        if self.gate_kind == "scalar":
            return torch.sigmoid(self.gate).view(1, 1, 1, 1)
        g = torch.sigmoid(self.gate(query_in))
        return split_heads(g, self.heads) if self.gate_kind == "element" else g.transpose(1, 2).unsqueeze(-1)

    def attend(
        self, x: torch.Tensor, queries: torch.Tensor, vision_keys: torch.Tensor, vision_values: torch.Tensor,
        pruned: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The three per-head modality outputs [H_A, H_AQ, H_V] (B, heads, T, Dh), H_V gated, plus the
        attention weights on the visual keys (B, heads, T, N) and the kept patches (B, N)."""
        keys_in, values_in = (x, queries, vision_keys), (x, queries, vision_values)
        values = [split_heads(self.v[s](t), self.heads) for s, t in zip(SOURCES, values_in)]
        if self.attention_mode == "mixed":
            logits = [self.logits(s, x, t) for s, t in zip(SOURCES, keys_in)]
            kept, logits[2] = self.focus(logits[2], pruned)
            weights = torch.cat(logits, dim=-1).softmax(dim=-1).split([lg.shape[-1] for lg in logits], dim=-1)
            outputs = [w @ v for w, v in zip(weights, values)]
            gate_in, vision_weights = x, weights[2]
        else:
            outputs, query_in = [], x
            for s, key_in, v in zip(SOURCES, keys_in, values):
                lg = self.logits(s, query_in, key_in)
                if s == "vision":
                    gate_in = query_in
                    kept, lg = self.focus(lg, pruned)
                    vision_weights = lg.softmax(dim=-1)
                    outputs.append(vision_weights @ v)
                else:
                    outputs.append(lg.softmax(dim=-1) @ v)
                    if self.cascade == "serial":
                        query_in = merge_heads(outputs[-1])
        g = self.gate_values(gate_in)
        if g is not None:
            outputs[2] = outputs[2] * g
        return outputs, vision_weights, kept

    def forward(
        self, x: torch.Tensor, queries: torch.Tensor, vision_keys: torch.Tensor, vision_values: torch.Tensor,
        pruned: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, d); queries = [C^AQ_i ; proprio] (B, Q+1, d); vision_keys = C^V_i and
        vision_values (B, N, d); pruned (B, N) as in `focus`. Returns A' = FFN(MLP_fusion([H_A ;
        H_AQ ; H_V])) + A, the visual attention weights and the kept patches."""
        outputs, vision_weights, kept = self.attend(x, queries, vision_keys, vision_values, pruned)
        fused = self.fusion(torch.cat([merge_heads(o) for o in outputs], dim=-1))
        return x + self.ffn(fused), vision_weights, kept


class FocusVLAPolicy(nn.Module):
    loss_kind = "l1"  # the papers' loss; `build_model` sets the recipe's `loss`

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        chunk: int = 8,
        action_dim: int = 7,
        proprio_dim: int = 8,
        num_action_queries: int = 64,
        policy_heads: int = 8,
        cascade: Cascade = "parallel",
        attention_mode: AttentionMode = "cascaded",
        topk: int | None = 256,
        gate: Gate = "element",
        visual_source: VisualSource = "raw",
        latent_noise_std: float = 0.02,
        attention_from: Literal["last", "mean"] = "last",
    ) -> None:
        super().__init__()
        _check("visual_source", visual_source, ("raw", "vlm"))
        _check("attention_from", attention_from, ("last", "mean"))
        self.backbone, self.chunk, self.action_dim = backbone, chunk, action_dim
        self.visual_source, self.latent_noise_std, self.attention_from = visual_source, latent_noise_std, attention_from
        d = backbone.dim
        self.action_queries = nn.Embedding(num_action_queries, d)
        nn.init.zeros_(self.action_queries.weight)
        self.proprio_projector = ProprioProjector(proprio_dim, d)
        self.fc1 = nn.Sequential(nn.LayerNorm(action_dim * d), nn.Linear(action_dim * d, d), nn.ReLU())
        self.blocks = nn.ModuleList(
            FocusBlock(d, policy_heads, cascade, attention_mode, topk, gate) for _ in range(backbone.llm.num_layers)
        )
        self.fc2 = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, action_dim))
        self.last_kept: torch.Tensor | None = None  # (B, N_visual) bool, the last block's patch set
        if visual_source == "raw":
            # The encoder output before the VLM projector, caught as the backbone computes it anyway.
            self.raw_projector = nn.Sequential(nn.LayerNorm(backbone.vision.dim), nn.Linear(backbone.vision.dim, d))
            self._raw: torch.Tensor | None = None
            backbone.vision.register_forward_hook(self._catch_raw)

    def _catch_raw(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._raw = output

    def forward(self, batch: dict[str, torch.Tensor], with_attention: bool = False) -> FocusOutput:
        images, proprio = batch["images"], batch["proprio"]
        b = images.shape[0]
        queries = self.action_queries.weight.unsqueeze(0).expand(b, -1, -1)
        out = self.backbone(images, batch["input_ids"], batch["attention_mask"], slots=queries, causal=True)
        visual = slice(out.visual[self.backbone.views[0]].start, out.visual[self.backbone.views[-1]].stop)
        raw = None
        if self.visual_source == "raw":
            raw, self._raw = self._raw, None
            raw = self.raw_projector(raw.reshape(b, -1, raw.shape[-1]).float())  # views in order, as the LLM sees them

        p = self.proprio_projector(proprio).float()
        x0 = p.new_zeros(b, self.chunk, self.action_dim * self.backbone.dim)
        if self.training and self.latent_noise_std > 0:
            x0 = x0 + torch.randn_like(x0) * self.latent_noise_std
        x = self.fc1(x0)
        vision_attention = []
        for block, h in zip(self.blocks, out.hidden_states):  # block i <- LLM layer i+1
            c_aq, c_v = h[:, out.slots].float(), h[:, visual].float()
            x, w, kept = block(x, torch.cat([c_aq, p], dim=1), c_v, c_v if raw is None else raw, out.visual_key_mask)
            vision_attention.append(w)
        self.last_kept = kept
        actions = self.fc2(x)

        attention, masks = {}, {}
        if with_attention:
            w = vision_attention[-1] if self.attention_from == "last" else torch.stack(vision_attention).mean(0)
            local = {view: slice(s.start - visual.start, s.stop - visual.start) for view, s in out.visual.items()}
            attention = heatmaps(w, local, out.grid)
            masks = {"kept": {view: kept[:, pos].reshape(-1, *out.grid) for view, pos in local.items()}}
        return FocusOutput(actions, attention, masks, features=x.mean(dim=1))

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> FocusOutput:
        return self.forward(batch, with_attention=True)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = action_loss(self.forward(batch).actions, batch["actions"], batch.get("action_is_pad"), self.loss_kind)
        return loss, {self.loss_kind: loss.item(), "kept_fraction": float(self.last_kept.float().mean())}
