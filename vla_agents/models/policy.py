"""`Policy`: the contract every registered model keeps, so agents, wrappers and trainers can rely on
it instead of on attribute names.

A policy maps a model batch to a `PolicyOutput` (`forward`), trains on its action loss (`loss`) and
acts without gradients, with attention maps (`predict`). Beside that it declares what it has, which
wrappers and trainers ask before they start, instead of failing later with an AttributeError:

- `language_model`: the LLM that reads the prompt, or None (VAT: a ViT with action branches). DTP
  reads prompt-to-vision attention in it, LoRA adapts it, residual RL pools its hidden states.
- `hf_configs()`: the transformers configs that rebuild the architecture offline when an agent loads.
- `PolicyOutput.features`: pooled action features (B, d) for heads that read the policy (grounding,
  value heads); `PolicyOutput.backbone`: the backbone's own output (hidden states, attentions when
  asked for, token positions), set by every policy with a language model.

Wrappers pass what they need as arguments: `llm_attentions=True` asks for every LLM layer's
attention weights, `visual_key_mask` (B, V*h*w, True = pruned) removes visual tokens as keys.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vla_agents.models.backbones import LanguageModel, VisionLanguageBackbone
from vla_agents.models.blocks import PolicyOutput, action_loss


class Policy(nn.Module):
    """Base class of every model in `policies.POLICIES` (see the module doc)."""

    backbone: nn.Module

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.forward is Policy.forward:
            raise TypeError(f"{cls.__name__} subclasses Policy but does not define forward(batch, with_attention)")

    def forward(self, batch: dict[str, torch.Tensor], with_attention: bool = False, *,
                llm_attentions: bool = False, visual_key_mask: torch.Tensor | None = None) -> PolicyOutput:
        """Normalized actions (B, T, A); with `with_attention`, the overlay's heatmaps too."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor], **inputs: Any) -> PolicyOutput:
        """Acting: no gradients, attention maps included; `inputs` as `forward`'s keyword arguments."""
        return self.forward(batch, with_attention=True, **inputs)

    def loss(self, batch: dict[str, torch.Tensor], kind: str = "l1") -> tuple[torch.Tensor, dict[str, float]]:
        """The action loss `kind` (a recipe's `training.loss`; L1 is the papers') on the chunk, and the metrics to log."""
        loss = action_loss(self(batch).actions, batch["actions"], batch.get("action_is_pad"), kind)
        return loss, {kind: loss.item()}

    @property
    def language_model(self) -> LanguageModel | None:
        backbone = getattr(self, "backbone", None)
        return backbone.llm if isinstance(backbone, VisionLanguageBackbone) else None

    def hf_configs(self) -> dict[str, Any]:
        return self.backbone.hf_configs()


def require_language_model(model: nn.Module, purpose: str) -> LanguageModel:
    """The policy's language model, or a ValueError that says why `purpose` needs one."""
    llm = getattr(model, "language_model", None)
    if llm is None:
        raise ValueError(f"{purpose} needs a policy with a language model (oft, vla_adapter, focusvla, deepvision); "
                         f"{type(model).__name__} has none (VAT is a ViT with action branches, no prompt tokens)")
    return llm
