"""The tiny VLM's pretraining model: the policies' own backbone answering grounding questions.

The sequence is the one every policy builds, `[bos, visual tokens, question, query slots]`, with the
query slots as OFT's action slots are (zero embeddings found by position alone), so what the language
model learns here (routing the named object's patches to the slots) is what the policies read later.
The answer heads sit on the slots' last hidden states, pooled:

- locate: which patch of each view holds the object (a pointer over that view's last-layer visual
  states, plus one "not in view" logit), its position in each view, and its offset from the gripper;
- nearest: which object is nearest the gripper; exists: yes or no;
- and, for every question, which object (if any) each visual token's patch holds, read from the visual
  tokens' own last-layer states. This dense label (every patch of every view, every step) is what breaks
  the plateau the answer heads alone sit on: with one answer per question the tiny model learned to point
  at *a* cube but not at the named one; once each patch state says which object it holds, matching it to
  the colour word is a one-step lookup for the slots.

Only the backbone is kept afterwards (`models.backbone_folder`); the heads are pretraining scaffolding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vla_agents.models.backbones import VisionLanguageBackbone

OFFSET_UNIT = 0.1  # m: offsets from the gripper are regressed in tenths of a metre


@dataclass
class GroundingOutput:
    cell_logits: torch.Tensor  # (B, V, h*w + 1): each patch, then "not in this view"
    patch_logits: torch.Tensor  # (B, V, h*w, K + 1): what each patch holds, 0 = no object, k + 1 = object k
    uv: torch.Tensor  # (B, V, 2) fractions of the (cropped) view
    offset: torch.Tensor  # (B, 3) object minus gripper, in OFFSET_UNIT
    object_logits: torch.Tensor  # (B, K)
    exists_logit: torch.Tensor  # (B,)


class GroundingModel(nn.Module):
    def __init__(self, backbone: VisionLanguageBackbone, num_objects: int, num_queries: int = 8, causal: bool = True) -> None:
        super().__init__()
        self.backbone, self.num_queries, self.causal = backbone, num_queries, causal
        d, views = backbone.dim, len(backbone.views)
        self.pointer_query, self.pointer_key = nn.Linear(d, d), nn.Linear(d, d)
        self.absent = nn.Linear(d, views)
        self.uv = nn.Linear(d, views * 2)
        self.offset = nn.Linear(d, 3)
        self.objects = nn.Linear(d, num_objects)
        self.exists = nn.Linear(d, 1)
        self.patch_objects = nn.Linear(d, num_objects + 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> GroundingOutput:
        images = batch["images"]
        b = images.shape[0]
        slots = images.new_zeros(b, self.num_queries, self.backbone.dim)
        out = self.backbone(images, batch["input_ids"], batch["attention_mask"], slots=slots, causal=self.causal)
        last = out.hidden_states[-1]
        pooled = last[:, out.slots].float().mean(dim=1)
        query = self.pointer_query(pooled)
        cells, patches = [], []
        for view in self.backbone.views:
            visual = last[:, out.visual[view]].float()  # (B, h*w, d)
            keys = self.pointer_key(visual)
            cells.append(torch.einsum("bd,bnd->bn", query, keys) / keys.shape[-1] ** 0.5)
            patches.append(self.patch_objects(visual))
        cell_logits = torch.cat([torch.stack(cells, dim=1), self.absent(pooled)[..., None]], dim=-1)
        return GroundingOutput(
            cell_logits=cell_logits, patch_logits=torch.stack(patches, dim=1), uv=self.uv(pooled).view(b, -1, 2),
            offset=self.offset(pooled),
            object_logits=self.objects(pooled), exists_logit=self.exists(pooled)[:, 0],
        )


def grounding_loss(out: GroundingOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """The patch-identity cross-entropy on every question, and each kind's loss on its own questions: locate =
    cell cross-entropy per view + uv and offset squared errors (uv only where the object is in the view);
    nearest = cross-entropy; exists = BCE."""
    kind = batch["kind"]
    patch_ce = F.cross_entropy(out.patch_logits.flatten(0, 2), batch["patch_objects"].flatten(), reduction="none")
    held = batch["patch_objects"].flatten() > 0  # a few patches of ~130 hold an object: weigh both groups alike
    terms: dict[str, torch.Tensor] = {"patches": patch_ce[held].mean() + patch_ce[~held].mean()}
    locate = kind == 0
    if locate.any():
        cells = out.cell_logits[locate]
        terms["cell"] = F.cross_entropy(cells.flatten(0, 1), batch["cell"][locate].flatten())
        seen = batch["cell"][locate] < cells.shape[-1] - 1
        uv_err = (out.uv[locate] - batch["uv"][locate]).square().sum(-1)
        terms["uv"] = (uv_err * seen).sum() / seen.sum().clamp(min=1)
        terms["offset"] = (out.offset[locate] - batch["offset"][locate]).square().sum(-1).mean()
    if (kind == 1).any():
        terms["nearest"] = F.cross_entropy(out.object_logits[kind == 1], batch["object"][kind == 1])
    if (kind == 2).any():
        terms["exists"] = F.binary_cross_entropy_with_logits(out.exists_logit[kind == 2], batch["answer"][kind == 2].float())
    loss = sum(terms.values())
    return loss, {name: value.item() for name, value in terms.items()}


@torch.no_grad()
def grounding_metrics(out: GroundingOutput, batch: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per-question correctness for held-out evaluation: which object each object-holding patch holds, the
    named object's cell in each view (top-1, top 5) and in the agentview where it is seen there, offset error
    (m), nearest-object and exists accuracy. Lists so callers can pool batches."""
    kind = batch["kind"]
    held = batch["patch_objects"] > 0
    result: dict[str, list[float]] = {"patch_object_acc": (out.patch_logits.argmax(-1)[held] == batch["patch_objects"][held]).float().tolist()}
    locate = kind == 0
    if locate.any():
        logits, target = out.cell_logits[locate], batch["cell"][locate]
        result["cell_top1"] = (logits.argmax(-1) == target).float().flatten().tolist()
        seen = target[:, 0] < logits.shape[-1] - 1
        result["agentview_cell_top1"] = (logits[seen, 0].argmax(-1) == target[seen, 0]).float().tolist()
        top5 = logits.topk(5, dim=-1).indices
        result["cell_top5"] = (top5 == target[..., None]).any(-1).float().flatten().tolist()
        err = (out.offset[locate] - batch["offset"][locate]).norm(dim=-1) * OFFSET_UNIT
        result["offset_error_m"] = err.tolist()
    if (kind == 1).any():
        result["nearest_acc"] = (out.object_logits[kind == 1].argmax(-1) == batch["object"][kind == 1]).float().tolist()
    if (kind == 2).any():
        result["exists_acc"] = ((out.exists_logit[kind == 2] > 0).long() == batch["answer"][kind == 2]).float().tolist()
    return result
