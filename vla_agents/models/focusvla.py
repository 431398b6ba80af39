"""FocusVLA (Zhang et al., 2026, arXiv 2603.28740): VLA-Adapter with focused visual utilization.

The VLM side is VLA-Adapter's unchanged (ActionQuery slots, per-layer bridge features C^AQ_i and
C^V_i, proprio token for the policy only, x0 = zeros -> fc1 -> blocks -> fc2, L1 loss; block i
reads LLM layer i+1). Each policy block starts from VLA-Adapter-Pro's (one query projection, a key
and a value projection per source, RoPE) and replaces its mixed attention with:

1. Modality Cascaded Attention (Sec. 3.3, eqs. 6-8): the action latent A attends to itself, to
   [C^AQ ; proprio] and to the vision in three SEPARATE softmaxes, so the easy ActionQuery path
   cannot take attention mass away from the visual keys (the "structural shortcut");
   Â = fusion([H_A ; H_AQ ; H_V]) and A' = FFN(Â) + A, FFN being VLA-Adapter's LN -> Linear -> ReLU.
2. Patch-level Focus (eqs. 9-10): scores between the ActionQuery features and the keys of the VLM's
   features at the visual positions; only the top-K patches stay, the rest are masked out of the
   vision softmax. Values come from the raw vision-encoder features (DINOv2+SigLIP at their last
   layer, Tab. 3, projected to the policy width), which keep the spatial detail that deep VLM
   layers abstract away ("VLM+DS", Tab. 2's best row).
3. Channel-level Focus (eq. 11, Gated Attention's G1 position): H_V ⊙ σ(W_g A) on the per-head
   attention output, before the fusion.

Size. Tab. 3 gives 239.1M trainable policy parameters at Qwen2.5-0.5B width (d = 896, 24 blocks).
Beside fc1, fc2 and the raw-feature projector (7.6M), that leaves 12 d x d matrices per block: Pro's
query and six key/value projections, the fusion as one Linear(3d, d) in Pro's o_proj place, the gate
and the FFN: 239.1M (tests/test_param_counts.py). A two-layer fusion MLP beside o_proj, or a query
projection per source, would be 256M or 277M.

Readings where our text copy lost the equations; the other reading is a switch:
- `cascade`: "parallel" (default), every attention queries A_t: eq. 6 writes Q = A_t for H_A,
  H_AQ and H_V (as transcribed in the reference notes), and eq. 7 fuses all three outputs, which a
  chain would not need. "serial" reads "sequentially integrates" as H_A -> H_AQ -> H_V, each stage
  querying with the previous stage's output.
- `focus_scores`: "action_query" (default), the patch scores come from the ActionQuery features:
  Sec. 3.3 selects "based on cross-attention scores between action queries and vision keys", the
  paper's name for the ActionQuery tokens, which have read the image and the instruction; the
  first block's latent is fc1(0), the same for every input. "latent" scores with the latent's own
  queries σ_q(A_t), the notes' transcription of eq. 9.
- Eq. 8 is read as transcribed in the notes, A' = FFN(Â) + A (VLA-Adapter's block instead takes
  the residual inside, FFN(o + A)).

Tab. 2's ablations are switches: `attention_mode` "mixed" (VLA-Adapter's own attention: the builder
returns VLA-Adapter-Pro's policy), `topk` (None keeps all), `gate` "none" | "scalar" (VLA-Adapter's
tanh(g), g = 0) | "head" | "element", `visual_source` "raw" | "vlm" for the vision values.
`layout="v1"` is the block this package shipped before issue 37 (a query projection per source, a
two-layer fusion MLP and FFN, raw features where the VLM reads them; 317M at paper width), kept so
agents saved with it load and act as they did.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from vla_agents.models.backbones import VisionLanguageBackbone, build_backbone
from vla_agents.models.blocks import PolicyOutput, ProprioProjector, action_loss, heatmaps, merge_heads, rotary, split_heads
from vla_agents.models.policy import Policy
from vla_agents.models.vla_adapter import VLAAdapterPolicy
from vla_agents.recipe import PolicyConfig, Recipe

Cascade = Literal["parallel", "serial"]
Gate = Literal["none", "scalar", "head", "element"]
VisualSource = Literal["raw", "vlm"]
FocusScores = Literal["action_query", "latent"]
Layout = Literal["pro", "v1"]
SOURCES = ("action", "query", "vision")


def _check(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


@dataclass
class FocusOutput(PolicyOutput):
    """PolicyOutput plus named patch masks, name -> view -> (B, h, w) bool: "kept" is the top-K set."""

    masks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    focus: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per block: softmax of the top-K scores, per view
    kept: torch.Tensor | None = field(default=None, kw_only=True)  # (B, N_visual) bool, the last block's patch set

    def grounding_maps(self) -> list[dict[str, torch.Tensor]]:
        """The overlay's map cannot move a patch the top-K dropped (its share is exactly 0, no gradient):
        the scores that choose the K patches are trained too, in every block."""
        return [self.attention, *self.focus]


class FocusBlock(nn.Module):
    """One FocusVLA policy layer: cascaded attention with patch- and channel-level focus on the vision."""

    def __init__(
        self, dim: int, heads: int, cascade: Cascade = "parallel", topk: int | None = None, gate: Gate = "element",
        focus_scores: FocusScores = "action_query", layout: Layout = "pro",
    ) -> None:
        super().__init__()
        _check("cascade", cascade, ("parallel", "serial"))
        _check("gate", gate, ("none", "scalar", "head", "element"))
        _check("focus_scores", focus_scores, ("action_query", "latent"))
        _check("layout", layout, ("pro", "v1"))
        if topk is not None and topk < 1:
            raise ValueError(f"topk must be positive or None, got {topk}")
        self.heads, self.cascade, self.topk, self.gate_kind = heads, cascade, topk, gate
        self.focus_scores, self.layout = focus_scores, layout
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim) if layout == "pro" else nn.ModuleDict({s: nn.Linear(dim, dim) for s in SOURCES})
        self.k, self.v = (nn.ModuleDict({s: nn.Linear(dim, dim) for s in SOURCES}) for _ in range(2))
        if gate == "scalar":  # Tab. 2 "1-param": VLA-Adapter's tanh(g), g = 0, so the vision starts shut
            self.gate = nn.Parameter(torch.zeros(1))
        elif gate != "none":  # Gated Attention: σ(X W_θ) from the hidden state that makes the query
            self.gate = nn.Linear(dim, dim if gate == "element" else heads)
        if layout == "pro":
            self.fusion = nn.Linear(3 * dim, dim)
            self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())
        else:
            self.fusion = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, dim))
            self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def logits(self, source: str, query_in: torch.Tensor, key_in: torch.Tensor) -> torch.Tensor:
        """Scaled dot products (B, heads, Tq, N), RoPE on both sides from position 0 (as VLA-Adapter-Pro)."""
        q_proj = self.q if self.layout == "pro" else self.q[source]
        q = rotary(split_heads(q_proj(query_in), self.heads), torch.arange(query_in.shape[1], device=query_in.device))
        k = rotary(split_heads(self.k[source](key_in), self.heads), torch.arange(key_in.shape[1], device=key_in.device))
        return (q @ k.transpose(-1, -2)) * self.scale

    def focus(self, scores: torch.Tensor, pruned: torch.Tensor | None = None) -> torch.Tensor:
        """Patch-level Focus: scores (B, heads, Q, N) averaged over heads and queries, so each sample
        keeps one patch set (B, N). Tokens pruned upstream (`pruned`, True = pruned, e.g. by DTP) are
        never kept."""
        b, n = scores.shape[0], scores.shape[-1]
        allowed = torch.ones(b, n, dtype=torch.bool, device=scores.device) if pruned is None else ~pruned.bool()
        if self.topk is None or self.topk >= n:
            return allowed
        mean = scores.detach().mean(dim=(1, 2)).masked_fill(~allowed, float("-inf"))
        return torch.zeros_like(allowed).scatter(1, mean.topk(self.topk, dim=-1).indices, True) & allowed

    def gate_values(self, query_in: torch.Tensor) -> torch.Tensor | None:
        """Channel-level Focus gate, broadcastable to the per-head output (B, heads, T, Dh): element
        σ (B, heads, T, Dh), head σ (B, heads, T, 1), scalar tanh(g) (1, 1, 1, 1); None when off."""
        if self.gate_kind == "none":
            return None
        if self.gate_kind == "scalar":
            return torch.tanh(self.gate).view(1, 1, 1, 1)
        g = torch.sigmoid(self.gate(query_in))
        return split_heads(g, self.heads) if self.gate_kind == "element" else g.transpose(1, 2).unsqueeze(-1)

    def attend(
        self, x: torch.Tensor, action_queries: torch.Tensor, proprio: torch.Tensor, vision_keys: torch.Tensor,
        vision_values: torch.Tensor, pruned: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three per-head modality outputs [H_A, H_AQ, H_V] (B, heads, T, Dh), H_V gated, plus the
        attention weights on the visual keys (B, heads, T, N), the kept patches (B, N) and the focus
        scores that chose them (B, heads, Q, N)."""
        keys_in = (x, torch.cat([action_queries, proprio], dim=1), vision_keys)
        values_in = (*keys_in[:2], vision_values)
        outputs, query_in = [], x
        for source, key_in, value_in in zip(SOURCES, keys_in, values_in):
            logits = self.logits(source, query_in, key_in)
            if source == "vision":
                scores = logits if self.focus_scores == "latent" else self.logits(source, action_queries, vision_keys)
                kept = self.focus(scores, pruned)
                if not kept.all():
                    logits = logits.masked_fill(~kept[:, None, None, :], float("-inf"))
                gate_in, vision_weights = query_in, logits.softmax(dim=-1)
                outputs.append(vision_weights @ split_heads(self.v[source](value_in), self.heads))
            else:
                outputs.append(logits.softmax(dim=-1) @ split_heads(self.v[source](value_in), self.heads))
                if self.cascade == "serial":
                    query_in = merge_heads(outputs[-1])
        g = self.gate_values(gate_in)
        if g is not None:
            outputs[2] = outputs[2] * g
        return outputs, vision_weights, kept, scores

    def forward(
        self, x: torch.Tensor, action_queries: torch.Tensor, proprio: torch.Tensor, vision_keys: torch.Tensor,
        vision_values: torch.Tensor, pruned: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, d); action_queries = C^AQ_i (B, Q, d); proprio (B, 1, d); vision_keys = C^V_i and
        vision_values (B, N, d); pruned (B, N) as in `focus`. Returns A' = FFN(fusion([H_A ; H_AQ ;
        H_V])) + A, the visual attention weights, the kept patches and the focus scores."""
        outputs, vision_weights, kept, scores = self.attend(x, action_queries, proprio, vision_keys, vision_values, pruned)
        fused = self.fusion(torch.cat([merge_heads(o) for o in outputs], dim=-1))
        return x + self.ffn(fused), vision_weights, kept, scores


class FocusVLAPolicy(Policy):
    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        chunk: int = 8,
        action_dim: int = 7,
        proprio_dim: int = 8,
        num_action_queries: int = 64,
        policy_heads: int = 8,
        cascade: Cascade = "parallel",
        topk: int | None = 256,
        gate: Gate = "element",
        visual_source: VisualSource = "raw",
        focus_scores: FocusScores = "action_query",
        layout: Layout = "pro",
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
            FocusBlock(d, policy_heads, cascade, topk, gate, focus_scores, layout) for _ in range(backbone.llm.num_layers)
        )
        self.fc2 = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, action_dim))
        self.raw_visual = None
        if visual_source == "raw":
            # Encoder features the backbone computes anyway: the last layer of each pretrained tower
            # (Tab. 3); the tiny ViT's output is its last layer already. Layout v1 read the towers' output.
            self.raw_projector = nn.Sequential(nn.LayerNorm(backbone.vision.dim), nn.Linear(backbone.vision.dim, d))
            self.raw_visual = "last_layer" if layout == "pro" else "output"

    def forward(self, batch: dict[str, torch.Tensor], with_attention: bool = False, *,
                llm_attentions: bool = False, visual_key_mask: torch.Tensor | None = None) -> FocusOutput:
        images, proprio = batch["images"], batch["proprio"]
        b = images.shape[0]
        queries = self.action_queries.weight.unsqueeze(0).expand(b, -1, -1)
        out = self.backbone(images, batch["input_ids"], batch["attention_mask"], slots=queries, causal=True,
                            output_attentions=llm_attentions, visual_key_mask=visual_key_mask, raw_visual=self.raw_visual)
        visual = slice(out.visual[self.backbone.views[0]].start, out.visual[self.backbone.views[-1]].stop)
        raw = None if out.raw_visual is None else self.raw_projector(out.raw_visual.float())  # views in order

        p = self.proprio_projector(proprio).float()
        x0 = p.new_zeros(b, self.chunk, self.action_dim * self.backbone.dim)
        if self.training and self.latent_noise_std > 0:
            x0 = x0 + torch.randn_like(x0) * self.latent_noise_std
        x = self.fc1(x0)
        vision_attention, focus_scores = [], []
        for block, h in zip(self.blocks, out.hidden_states):  # block i <- LLM layer i+1
            c_aq, c_v = h[:, out.slots].float(), h[:, visual].float()
            x, w, kept, scores = block(x, c_aq, p, c_v, c_v if raw is None else raw, out.visual_key_mask)
            vision_attention.append(w)
            focus_scores.append(scores)
        actions = self.fc2(x)

        attention, masks, focus = {}, {}, []
        if with_attention:
            w = vision_attention[-1] if self.attention_from == "last" else torch.stack(vision_attention).mean(0)
            local = {view: slice(s.start - visual.start, s.stop - visual.start) for view, s in out.visual.items()}
            attention = heatmaps(w, local, out.grid)
            masks = {"kept": {view: kept[:, pos].reshape(-1, *out.grid) for view, pos in local.items()}}
            if self.training and self.blocks[0].topk is not None:  # only BC's attention loss reads them
                focus = [heatmaps(scores.softmax(dim=-1), local, out.grid) for scores in focus_scores]
        return FocusOutput(actions, attention, masks, focus, features=x.mean(dim=1), backbone=out, kept=kept)

    def loss(self, batch: dict[str, torch.Tensor], kind: str = "l1") -> tuple[torch.Tensor, dict[str, float]]:
        out = self(batch)
        loss = action_loss(out.actions, batch["actions"], batch.get("action_is_pad"), kind)
        return loss, {kind: loss.item(), "kept_fraction": float(out.kept.float().mean())}


@dataclass(frozen=True)
class FocusVLAConfig(PolicyConfig):
    """FocusVLA's own recipe keys (the module doc explains each mechanism)."""

    num_action_queries: int  # ActionQuery embeddings appended after the prompt
    policy_heads: int  # attention heads of each FocusVLA block
    latent_noise_std: float  # noise on the zero latents, when training only
    attention_from: Literal["last", "mean"]  # the overlay's map: the last block's, or the mean over blocks
    cascade: Cascade  # parallel (eqs. 6-7: every attention queries A_t) | serial
    attention_mode: Literal["cascaded", "mixed"]  # a softmax per modality | VLA-Adapter-Pro's own attention
    topk: int | None  # patches kept per sample (Patch-level Focus); null keeps all
    gate: Gate  # element: Channel-level Focus
    visual_source: VisualSource  # raw: the towers' last-layer features as values | VLM hidden states
    layout: Layout = "v1"  # recipes saved before issue 37 had the v1 block
    focus_scores: FocusScores = "latent"  # ... and scored patches with the latent's queries


def build_focusvla(recipe: Recipe, hf_configs: dict[str, Any] | None = None) -> nn.Module:
    """Recipe -> policy (the registry's builder for "focusvla"). Recipes saved before issue 37
    have no `layout` / `focus_scores` keys: they get the block and scores they were trained with."""
    m, agent = recipe.model, recipe.agent
    if m.layout == "v1" and (m.attention_mode == "mixed" or m.gate == "scalar"):
        raise ValueError(
            f"this FocusVLA recipe predates issue 37 (no `layout` key) and uses attention_mode={m.attention_mode!r}, "
            f"gate={m.gate!r}: the 'mixed' arm is now VLA-Adapter-Pro's own attention and the 'scalar' gate tanh(g) "
            "with g = 0 (it was sigmoid(g)), so its weights would act differently; retrain it")
    backbone = build_backbone(recipe.backbone, hf_configs)
    shared = dict(num_action_queries=m.num_action_queries, policy_heads=m.policy_heads,
                  latent_noise_std=m.latent_noise_std, attention_from=m.attention_from)
    if m.attention_mode == "mixed":  # Tab. 2, first row: VLA-Adapter's mixed attention, no top-K, VLM features
        if m.topk is not None or m.gate not in ("none", "scalar") or m.visual_source != "vlm":
            raise ValueError("attention_mode 'mixed' is VLA-Adapter-Pro's own attention: it needs topk null, "
                             f"gate 'none' or 'scalar' and visual_source 'vlm'; got topk={m.topk}, gate={m.gate!r}, "
                             f"visual_source={m.visual_source!r}")
        return VLAAdapterPolicy(backbone, agent.chunk, agent.action_dim, agent.proprio_dim,
                                gate_mode="none" if m.gate == "none" else "logit_scale", variant="pro", **shared)
    return FocusVLAPolicy(backbone, agent.chunk, agent.action_dim, agent.proprio_dim, cascade=m.cascade, topk=m.topk,
                          gate=m.gate, visual_source=m.visual_source, focus_scores=m.focus_scores, layout=m.layout, **shared)
