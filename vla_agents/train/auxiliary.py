"""Behaviour cloning's auxiliary grounding loss: say where the named cube is from the policy's own features.

A few hundred demonstrations say "pick up the blue cube" too rarely for the action loss alone to teach a
tiny policy which cube the colour word names (benchmarks/README.md). The simulator knows: the embedded
demonstrations record the named cube's position, so a small probe on the policy's pooled action features
(`PolicyOutput.features`) predicts its offset from the gripper and its patch in each view, and that
gradient makes the features the action head reads carry the target. Training only: the probe is not part
of the saved agent. Recipe key `aux_target_weight` (tiny recipes on, paper recipes 0: their pretrained VLM
already grounds, and real datasets do not record object positions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vla_agents.models.grounding import OFFSET_UNIT

GRID = 8  # the probe's cell grid per view, whatever the policy's patch grid


class TargetProbe(nn.Module):
    def __init__(self, dim: int, num_views: int) -> None:
        super().__init__()
        self.num_views = num_views
        self.offset = nn.Linear(dim, 3)
        self.cells = nn.Linear(dim, num_views * (GRID * GRID + 1))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d) -> offset from the gripper (B, 3) in OFFSET_UNIT, cell logits (B, V, GRID^2 + 1: last = not in view)."""
        return self.offset(features), self.cells(features).view(len(features), self.num_views, -1)


def target_cells(uv: torch.Tensor, rows: int = GRID, cols: int = GRID) -> torch.Tensor:
    """uv fractions of the crop (..., 2) -> row-major cell of the rows x cols map, rows * cols where outside."""
    inside = (uv >= 0).all(-1) & (uv < 1).all(-1)
    u, v = uv.clamp(0, 1 - 1e-6).unbind(-1)
    return torch.where(inside, (v * rows).long() * cols + (u * cols).long(), rows * cols)


def target_loss(probe: TargetProbe, features: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Squared offset error (in tenths of a metre) plus each view's cell cross-entropy."""
    offset, logits = probe(features.float())
    offset_err = (offset - batch["target_offset"] / OFFSET_UNIT).square().sum(-1).mean()
    cells = target_cells(batch["target_uv"])
    cell_ce = F.cross_entropy(logits.flatten(0, 1), cells.flatten())
    return offset_err + cell_ce, {"aux_offset": offset_err.item(), "aux_cell": cell_ce.item()}


def attention_target_loss(attention: dict[str, torch.Tensor], target_uv: torch.Tensor, views: list[str]) -> torch.Tensor:
    """How little of each view's action->vision attention (the map the overlay draws) falls on the named
    cube's patch: the mean of -log(share of the view's attention in the target's cell), over the views the
    cube is in and whose patch no mask dropped. It teaches the action queries to read the target's patch,
    so the map shows it too."""
    losses = []
    for i, view in enumerate(views):
        heat = attention[view].float().flatten(1)  # (B, h*w)
        cells = target_cells(target_uv[:, i], *attention[view].shape[-2:])
        inside = cells < heat.shape[1]
        share = heat.gather(1, cells.clamp(max=heat.shape[1] - 1).unsqueeze(1)).squeeze(1) / heat.sum(-1).clamp(min=1e-12)
        movable = inside & (share > 0)  # exactly 0: a mask (FocusVLA's top-K, DTP) dropped the patch, no gradient
        losses.append(-(share + 1e-6).log()[movable])
    return torch.cat(losses).mean() if sum(len(x) for x in losses) else target_uv.new_zeros(())
