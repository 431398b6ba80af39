"""Small building blocks shared by every policy.

Attention is written out by hand (no fused kernel) because the heatmaps users watch are these
weights; the heads and projectors follow the released OpenVLA-OFT / VLA-Adapter code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from vla_agents.models.backbones import BackboneOutput


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*Dh) -> (B, H, N, Dh)."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, Dh) -> (B, N, H*Dh)."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


class Attention(nn.Module):
    """Multi-head attention that can return its softmax weights (B, heads, Nq, Nk).

    `context=None` makes it self-attention; `mask` is additive (0 keeps, -inf drops) or boolean
    (True keeps), broadcastable to (B, heads, Nq, Nk).
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(context_dim or dim, dim)
        self.v = nn.Linear(context_dim or dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context = x if context is None else context
        q, k, v = (split_heads(f(t), self.heads) for f, t in ((self.q, x), (self.k, context), (self.v, context)))
        logits = (q @ k.transpose(-1, -2)) * self.scale
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
        weights = logits.softmax(dim=-1)
        out = self.o(merge_heads(weights @ v))
        return out, (weights if return_weights else None)


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: x + Attn(LN x), then x + MLP(LN x). `film` = (gamma, beta), each (B, dim),
    rescales the stream between the two, x * (1 + gamma) + beta, as OpenVLA-OFT+'s FiLM does."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(
        self, x: torch.Tensor, return_weights: bool = False, film: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(self.norm1(x), return_weights=return_weights)
        x = x + attended
        if film is not None:
            x = x * (1 + film[0][:, None]) + film[1][:, None]
        return x + self.mlp(self.norm2(x)), weights


class MLPResNet(nn.Module):
    """OFT's L1 regression head ("a 4-layer ReLU MLP"):
    LN -> Linear -> ReLU -> 2 x [x + ReLU(Linear(LN x))] -> LN -> Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_blocks: int = 2) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden_dim), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, hidden_dim), nn.ReLU()) for _ in range(num_blocks)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


class ProprioProjector(nn.Module):
    """Robot state -> one token of the model width: Linear -> GELU -> Linear (OFT, VLA-Adapter)."""

    def __init__(self, proprio_dim: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(proprio_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.net(proprio).unsqueeze(1)  # (B, 1, dim)


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE (half-split form) on (B, H, N, Dh) at integer `positions` (N,): lets tokens that start
    identical, such as VLA-Adapter's zero-initialised action latents, tell their timesteps apart."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


# ----------------------------------------------------------------------------------------------
# What every policy returns, and the loss they share
# ----------------------------------------------------------------------------------------------
@dataclass
class PolicyOutput:
    """actions: (B, T, A) normalized; attention: view -> (B, h, w) heatmap over its patch grid;
    features: (B, d) the policy's pooled action features, what auxiliary heads (grounding, RL) read;
    backbone: the vision-language backbone's output (hidden states, attentions when asked for, token
    positions), what wrappers (DTP) and RL heads read; None for a policy without a language model."""

    actions: torch.Tensor
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    features: torch.Tensor | None = field(default=None, kw_only=True)
    backbone: BackboneOutput | None = field(default=None, kw_only=True)

    def grounding_maps(self) -> list[dict[str, torch.Tensor]]:
        """The maps BC's attention loss pulls onto the named cube: the overlay's map; policies whose
        attention is steered by another map (FocusVLA's top-K scores) add it."""
        return [self.attention]


ACTION_LOSSES = ("l1", "mse")


def action_loss(pred: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None, kind: str = "l1") -> torch.Tensor:
    """L1 (the papers' loss) or squared error on normalized actions, ignoring chunk steps padded past
    the end of a demonstration. Squared error weighs each sample by its error, where L1's sign
    gradient weighs the many near-zero residuals as much as the few large ones (benchmarks/README.md)."""
    if kind not in ACTION_LOSSES:
        raise ValueError(f"unknown action loss {kind!r}; expected one of {', '.join(ACTION_LOSSES)}")
    err = (pred - target).abs() if kind == "l1" else (pred - target).square()
    if is_pad is None:
        return err.mean()
    keep = (~is_pad.bool()).unsqueeze(-1).to(err.dtype)
    return (err * keep).sum() / (keep.sum() * err.shape[-1]).clamp(min=1.0)


def heatmaps(weights: torch.Tensor, visual: dict[str, slice], grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Attention (B, heads, Q, S) over a sequence -> per view (B, h, w), averaged over heads and queries.
    `visual` maps each view to its key positions."""
    mean = weights.float().mean(dim=(1, 2))
    return {view: mean[:, pos].reshape(-1, *grid) for view, pos in visual.items()}
