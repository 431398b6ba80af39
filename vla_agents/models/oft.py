"""OpenVLA-OFT (Kim et al., 2025): parallel decoding of an action chunk with an L1 head.

1. The images of every view become visual tokens; the robot state is projected into one extra
   token placed right after them.
2. T x A action slots are appended to the prompt with *zero* input embeddings; their position
   reaches them only through RoPE.
3. Attention is bidirectional, so every slot sees the whole sequence (and the other slots), and
   one forward pass decodes the whole chunk.
4. The final-layer hidden states at the slots are reshaped to (B, T, A*d) and an MLP-ResNet
   regresses the T normalized actions, trained with L1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vla_agents.models.backbones import VisionLanguageBackbone, build_backbone
from vla_agents.models.blocks import MLPResNet, PolicyOutput, ProprioProjector, heatmaps
from vla_agents.models.policy import Policy
from vla_agents.recipe import PolicyConfig, Recipe


class OFTPolicy(Policy):
    def __init__(self, backbone: VisionLanguageBackbone, chunk: int = 8, action_dim: int = 7, proprio_dim: int = 8) -> None:
        super().__init__()
        self.backbone, self.chunk, self.action_dim = backbone, chunk, action_dim
        d = backbone.dim
        self.proprio_projector = ProprioProjector(proprio_dim, d)
        self.action_head = MLPResNet(action_dim * d, d, action_dim, num_blocks=2)

    def action_slots(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        """Empty action embeddings: zeros at the T*A slots."""
        return like.new_zeros(batch_size, self.chunk * self.action_dim, self.backbone.dim)

    def forward(self, batch: dict[str, torch.Tensor], with_attention: bool = False, *,
                llm_attentions: bool = False, visual_key_mask: torch.Tensor | None = None) -> PolicyOutput:
        images, proprio = batch["images"], batch["proprio"]
        b = images.shape[0]
        out = self.backbone(
            images, batch["input_ids"], batch["attention_mask"],
            slots=self.action_slots(b, proprio), extra=self.proprio_projector(proprio),
            causal=False, output_attentions=with_attention or llm_attentions, visual_key_mask=visual_key_mask,
        )
        h = out.hidden_states[-1][:, out.slots]  # (B, T*A, d)
        actions = self.action_head(h.reshape(b, self.chunk, -1).float())
        attention = {}
        if with_attention:
            # last-layer attention from the action slots to each view's patches
            attention = heatmaps(out.attentions[-1][:, :, out.slots], out.visual, out.grid)
        return PolicyOutput(actions, attention, features=h.float().mean(dim=1), backbone=out)


@dataclass(frozen=True)
class OFTConfig(PolicyConfig):
    """OpenVLA-OFT has no keys of its own: the backbone and the chunk define it."""


def build_oft(recipe: Recipe, hf_configs: dict[str, Any] | None = None) -> OFTPolicy:
    """Recipe -> policy (the registry's builder for "oft")."""
    agent = recipe.agent
    return OFTPolicy(build_backbone(recipe.backbone, hf_configs), agent.chunk, agent.action_dim, agent.proprio_dim)
