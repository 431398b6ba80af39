"""DTP, Distracting Token Pruning (arXiv 2601.16065): a training-free wrapper around a VLA policy.

At every inference step (paper Sec. 3):

1. Important region (Eq. 1-3). The LLM's prompt-to-visual attention is averaged over heads, prompt
   tokens and a layer set C, then laid out on each view's patch grid. The corner patches are zeroed
   (they hold attention sinks) and the map is Gaussian-smoothed. Its top-k patches form the region G.
2. Visual attention pattern (Eq. 4). Each layer's action-to-visual attention is weighted by that
   layer's share of the total visual attention mass, and the weighted maps are summed.
3. Pruning (Eq. 5). A visual token outside G is distracting when its attention is above
   tau * (the largest attention inside G). Distracting tokens are masked as attention keys, and a
   second forward pass regenerates the action.

This works for any policy with a language model (`Policy.language_model`). The detection pass asks
the policy for every LLM layer's attention (`llm_attentions=True`) and reads them from the backbone
output the policy returns; the regeneration pass hands it the pruning mask (`visual_key_mask=`). A
policy that attends to visual features outside the LLM, such as VLA-Adapter's bridge, has to respect
`BackboneOutput.visual_key_mask`. The wrapped policy is not changed: no hooks, no attention switch.

- "Action tokens" are the policy's slots: OFT's action slots, VLA-Adapter's ActionQueries.
- "Prompt tokens" are the prompt tokens after the start token, padding excluded.
- These policies decode a whole chunk in one pass, so each step gets one mask, built from the
  attention averaged over all slots. This is the paper's SpatialVLA variant.

Ablations (Sec. 4.3):
- random_mask="unimportant" (Random_unimportant_region) prunes as many random tokens outside G as
  DTP would have pruned.
- random_mask="all" (Random_all_region) draws that many from the whole image.
- No_Gaussian is corners=0 and sigma=0.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from vla_agents.models.backbones import BackboneOutput
from vla_agents.models.blocks import PolicyOutput

RANDOM_MASKS = (None, "unimportant", "all")


# ----------------------------------------------------------------------------------------------
# The three stages, on plain tensors
# ----------------------------------------------------------------------------------------------
def relevance(
    attentions: Sequence[torch.Tensor], layers: Sequence[int], prompt: slice, prompt_keep: torch.Tensor, visual: slice
) -> torch.Tensor:
    """Eq. 1-3: the prompt-to-visual attention (B, heads, S, S) per layer, averaged over heads, over
    the prompt positions where `prompt_keep` (B, P) is set, and over the layers in C -> (B, N)."""
    w = prompt_keep.float()[:, :, None]
    per_layer = [(attentions[i].float().mean(1)[:, prompt, visual] * w).sum(1) / w.sum(1) for i in layers]
    return torch.stack(per_layer).mean(0)


def suppress_corners(maps: torch.Tensor, corners: int) -> torch.Tensor:
    """Zero the corners x corners patches at each corner of (..., h, w): attention sinks sit there,
    and without this they would end up in the important region."""
    out = maps.clone()
    if corners > 0:
        c = corners
        for rows in (slice(0, c), slice(-c, None)):
            for cols in (slice(0, c), slice(-c, None)):
                out[..., rows, cols] = 0
    return out


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of (..., h, w) on the patch grid (scipy, mode='reflect', truncate=4), so
    the region is made of connected blobs rather than scattered patches. sigma=0 turns it off."""
    if sigma <= 0:
        return maps
    sigmas = (0,) * (maps.dim() - 2) + (sigma, sigma)
    out = gaussian_filter(maps.detach().cpu().double().numpy(), sigma=sigmas, mode="reflect", truncate=4.0)
    return torch.from_numpy(out).to(maps)


def top_k_region(maps: torch.Tensor, k: int) -> torch.Tensor:
    """(B, h, w) -> bool (B, h, w): the k highest patches of each map."""
    flat = maps.flatten(1)
    region = torch.zeros_like(flat, dtype=torch.bool)
    region.scatter_(1, flat.topk(k, dim=1).indices, True)
    return region.view_as(maps)


def action_attention(attentions: Sequence[torch.Tensor], slots: slice, visual: slice) -> torch.Tensor:
    """Eq. 4: for each layer, the action-to-visual attention averaged over heads and slots (the raw
    softmax rows, not renormalised). Each layer is weighted by its share of the visual attention
    mass summed over all layers, and the weighted rows are added up -> (B, N)."""
    per_layer = torch.stack([a.float()[:, :, slots, visual].mean(dim=(1, 2)) for a in attentions])  # (L, B, N)
    mass = per_layer.sum(-1, keepdim=True)
    return (mass / mass.sum(0, keepdim=True) * per_layer).sum(0)


def distracting_tokens(attention: torch.Tensor, important: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 5: tokens outside the important region whose attention exceeds tau times the largest
    attention inside it. (B, N) float and bool -> bool (B, N)."""
    inside_max = attention.masked_fill(~important, float("-inf")).amax(-1, keepdim=True)
    return ~important & (attention > tau * inside_max)


def random_tokens(count: torch.Tensor, allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Ablation: for each sample, `count[b]` tokens drawn uniformly from the positions where
    `allowed` (B, N) is set."""
    out = torch.zeros_like(allowed)
    for b in range(allowed.shape[0]):
        candidates = allowed[b].nonzero().squeeze(1)
        order = torch.randperm(len(candidates), generator=generator).to(candidates.device)
        out[b, candidates[order[: int(count[b])]]] = True
    return out


# ----------------------------------------------------------------------------------------------
# The wrapper
# ----------------------------------------------------------------------------------------------
def can_wrap(policy: nn.Module) -> bool:
    """DTP reads prompt-to-vision attention inside the policy's language model; a policy without one
    (VAT: a ViT with action branches, no prompt tokens) has nothing to detect distractors with."""
    policy = policy.policy if isinstance(policy, DTPPolicy) else policy
    return getattr(policy, "language_model", None) is not None


@dataclass
class DTPOutput(PolicyOutput):
    """PolicyOutput plus the overlay masks: name ("important", "pruned") -> view -> bool (B, h, w)."""

    masks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


@dataclass
class DTPStep:
    """One step's analysis, kept for inspection: every map is view -> (B, h, w)."""

    relevance: dict[str, torch.Tensor]  # after corner suppression and smoothing
    action_attention: dict[str, torch.Tensor]
    important: dict[str, torch.Tensor]
    pruned: dict[str, torch.Tensor]


class DTPPolicy(nn.Module):
    """Wraps a backbone policy. `predict` runs detection, then regeneration when anything was
    pruned. Training (`forward`, `loss`), the weights and any other attribute go straight to the
    wrapped policy, so a wrapped agent saves and loads like the unwrapped one."""

    def __init__(
        self,
        policy: nn.Module,
        layers: Sequence[int] | None = None,
        k: int | float = 0.426,
        tau: float = 0.5,
        sigma: float = 0.65,
        corners: int = 1,
        random_mask: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if random_mask not in RANDOM_MASKS:
            raise ValueError(f"random_mask must be one of {RANDOM_MASKS}, got {random_mask!r}")
        if tau < 0 or sigma < 0 or corners < 0 or k <= 0:
            raise ValueError("DTP needs tau, sigma, corners >= 0 and k > 0")
        if not can_wrap(policy):
            raise TypeError(f"DTP cannot wrap {type(policy).__name__}: it has no language model, so no prompt tokens "
                            "whose attention finds the important region; DTP wraps oft, vla_adapter, focusvla, deepvision")
        self.policy = policy
        self.layers = None if layers is None else [int(i) for i in layers]
        self.k, self.tau, self.sigma, self.corners = k, float(tau), float(sigma), int(corners)
        self.random_mask, self.seed = random_mask, int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.last: DTPStep | None = None

    def settings(self) -> dict[str, Any]:
        """The constructor arguments, so a saved agent can be wrapped again when it is loaded."""
        return dict(layers=self.layers, k=self.k, tau=self.tau, sigma=self.sigma, corners=self.corners,
                    random_mask=self.random_mask, seed=self.seed)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "policy":
                raise
            return getattr(self.policy, name)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.policy.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.policy.load_state_dict(*args, **kwargs)

    def forward(self, batch: dict[str, torch.Tensor], with_attention: bool = False, **inputs: Any) -> PolicyOutput:
        return self.policy(batch, with_attention, **inputs)

    def loss(self, batch: dict[str, torch.Tensor], kind: str = "l1") -> tuple[torch.Tensor, dict[str, float]]:
        return self.policy.loss(batch, kind)

    # ------------------------------------------------------------------ inference
    def region_size(self, grid: tuple[int, int]) -> int:
        """k as a patch count: an int is used as is, a float below 1 is a fraction of the grid."""
        n = grid[0] * grid[1]
        return min(n, max(1, round(self.k * n)) if isinstance(self.k, float) and self.k < 1 else int(self.k))

    def detect(self, out: BackboneOutput, attention_mask: torch.Tensor) -> tuple[DTPStep, torch.Tensor]:
        """Stages 1-3 on one forward pass. Returns the per-view analysis and the flat pruning mask
        (B, V*h*w), which covers every view in the backbone's visual order."""
        views = list(out.visual)
        visual = slice(out.visual[views[0]].start, out.visual[views[-1]].stop)
        local = {v: slice(s.start - visual.start, s.stop - visual.start) for v, s in out.visual.items()}
        grid = out.grid

        layers = self.layers if self.layers is not None else range(len(out.attentions))
        scores = relevance(out.attentions, layers, slice(out.extra.stop, out.slots.start), attention_mask[:, 1:].bool(), visual)
        rel = {v: smooth(suppress_corners(scores[:, s].reshape(-1, *grid), self.corners), self.sigma) for v, s in local.items()}
        k = self.region_size(grid)
        important = torch.cat([top_k_region(rel[v], k).flatten(1) for v in views], dim=1)

        attention = action_attention(out.attentions, out.slots, visual)
        pruned = distracting_tokens(attention, important, self.tau)
        if self.random_mask is not None:
            allowed = ~important if self.random_mask == "unimportant" else torch.ones_like(important)
            pruned = random_tokens(pruned.sum(1), allowed, self.generator)

        def per_view(x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {v: x[:, s].reshape(-1, *grid) for v, s in local.items()}

        return DTPStep(rel, per_view(attention), per_view(important), per_view(pruned)), pruned

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> DTPOutput:
        """Detect on the policy's own forward pass. If any token is distracting, run again with
        those tokens masked as keys. With nothing pruned, the output is the policy's own."""
        result = self.policy.predict(batch, llm_attentions=True)
        step, pruned = self.detect(result.backbone, batch["attention_mask"])
        if pruned.any():
            result = self.policy.predict(batch, visual_key_mask=pruned)
        self.last = step
        masks = {**getattr(result, "masks", {}), "important": step.important, "pruned": step.pruned}  # keep the policy's own
        return DTPOutput(result.actions, result.attention, masks=masks, features=result.features, backbone=result.backbone)


def DTP(agent_or_model: Any, **settings: Any) -> Any:  # noqa: N802 - named after the method
    """Apply DTP to a policy model, which gives a DTPPolicy, or to an agent. For an agent it returns a
    copy whose model is wrapped. The weights stay shared and the original agent is left unchanged.
    Wrapping something already wrapped replaces the old settings."""
    if isinstance(agent_or_model, nn.Module):
        policy = agent_or_model.policy if isinstance(agent_or_model, DTPPolicy) else agent_or_model
        return DTPPolicy(policy, **settings)
    agent = copy.copy(agent_or_model)
    agent.model = DTP(agent.model, **settings)
    agent.reset()
    return agent
