"""VAT, the Vision Action Transformer (arXiv 2512.06013; code github.com/sellerbubble/VAT).

Most policies read a ViT only at its last layer. VAT reads its whole *representation trajectory*:
every ViT block gets a parallel action module with new weights, so the action tokens gather
visual evidence from low-level geometry up to high-level semantics.

1. Vision branch: every camera view is patchified and run through the unmodified ViT blocks on its
   own (no cross-view attention; all views share the positional embedding). It never sees the
   action tokens, so the pretrained features are exactly those of the plain ViT.
2. Action tokens: T x A tokens, one per scalar action dimension per timestep, start as a learned
   vector (zeros at init) plus a hierarchical positional embedding PE[t, j] = E_chunk[t] + E_dim[j].
3. Action module of block l, fed block l's *input* (the output of block l-1):
   q = LN(FiLM_l(a)), FiLM_l(a) = a * (1 + gamma_l) + beta_l from the task embedding; the residual
   stream keeps the unmodulated tokens, so FiLM only steers what the tokens look for;
   a = a + CrossAttn(q, LN_l(vision tokens of every view)) -- keys and values come from the vision
   tokens only, so action tokens never attend to each other; LN_l is block l's own pretrained
   attention LayerNorm, so they read the tokens exactly as the ViT block does (`vat_modeling.py`:
   `kv_act` on `norm1_non_act`, loaded from the ViT's `norm1`); a = a + MLP(LN(a)).
4. The final action tokens, reshaped to (B, T, A*C), go through OFT's MLP-ResNet head; L1 loss.

Last-layer ablation (`action_layers="last"`, paper Tab. 2; `actionmodule_modeling.py`): the same
full-depth action module, but every block reads the ViT's second-to-last layer output (its last
block's input) instead of its own layer's, so the arms differ in the feature hierarchy only, not in
depth. Keys/values go through the pretrained LayerNorm the ViT applies to those tokens (its last
block's). The released baseline normalises them with a new LayerNorm per action block and applies
FiLM to the residual stream; we keep VAT's action module unchanged so that only the features differ.

Task conditioning is the paper's task-id embedding; `task_conditioning="instruction"` instead
mean-pools learned embeddings of the instruction tokens, for agents that only get language.
Proprio is off in the paper's recipe; with `use_proprio` (an option of the released code) it is
one extra token in the action stream that the action tokens can attend to.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, SiglipVisionModel

from vla_agents.models.backbone_folder import load_vision_weights, open_backbone
from vla_agents.models.backbones import IMAGENET_MEAN, IMAGENET_STD, SIGLIP_MEAN, SIGLIP_STD, TinyViT, _normalize
from vla_agents.models.blocks import Attention, MLPResNet, PolicyOutput, ProprioProjector
from vla_agents.models.policy import Policy
from vla_agents.recipe import BackboneConfig, PolicyConfig, Recipe

VISION_KINDS = ("tiny_vit", "siglip", "dinov2")


# ----------------------------------------------------------------------------------------------
# The vision branch: a ViT opened up block by block
# ----------------------------------------------------------------------------------------------
class ViTTrunk(nn.Module):
    """A ViT whose blocks are called one at a time, so each block's input can feed an action module.

    `kind` is "tiny_vit" (built from config) or "siglip" / "dinov2" (transformers models). The
    last `drop_last_blocks` blocks are not run (the released SigLIP recipe stops one block early).
    """

    def __init__(self, kind: str, model: nn.Module, image_size: int, drop_last_blocks: int = 0) -> None:
        super().__init__()
        if kind not in VISION_KINDS:
            raise ValueError(f"unknown VAT vision {kind!r}; available: {', '.join(VISION_KINDS)}")
        self.kind, self.model, self.image_size = kind, model, image_size
        if kind == "tiny_vit":
            self.dim, patch = model.dim, image_size // model.grid[0]
            self.heads = model.blocks[0].attn.heads
            self.mlp_ratio = model.blocks[0].mlp[0].out_features / self.dim
            self.num_prefix = 0
        else:
            cfg = model.config
            self.dim, self.heads, patch = cfg.hidden_size, cfg.num_attention_heads, cfg.patch_size
            self.mlp_ratio = cfg.intermediate_size / cfg.hidden_size if kind == "siglip" else cfg.mlp_ratio
            self.num_prefix = 0 if kind == "siglip" else 1 + getattr(cfg, "num_register_tokens", 0)
        total = len(self.layers)
        if not 0 <= drop_last_blocks < total:
            raise ValueError(f"drop_last_blocks={drop_last_blocks} leaves no block of {total}")
        self.depth = total - drop_last_blocks
        self.drop_last_blocks = drop_last_blocks
        self.grid = (image_size // patch, image_size // patch)

    @property
    def layers(self) -> nn.ModuleList:
        """All pretrained ViT blocks, including any dropped ones."""
        if self.kind == "tiny_vit":
            return self.model.blocks
        return self.model.encoder.layers if self.kind == "siglip" else self.model.encoder.layer

    @classmethod
    def build(cls, config: BackboneConfig, drop_last_blocks: int = 0, hf_configs: dict[str, Any] | None = None) -> ViTTrunk:
        """Backbone keys -> trunk. With `hf_configs` (from a saved agent) the architecture is rebuilt
        offline and the weights come from the checkpoint."""
        kind, size = config.vision, config.image_size
        if kind == "tiny_vit":
            vit = TinyViT(size, config.patch_size, config.vit_dim, config.vit_depth, config.vit_heads, config.vit_pos_std)
            if config.backbone_path and hf_configs is None:  # the pretrained tiny ViT, as paper recipes load theirs
                load_vision_weights(open_backbone(config), {"vision": vit})
            return cls(kind, vit, size, drop_last_blocks)
        if hf_configs is not None:
            cfg = dict(hf_configs["vision"])
            auto = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
            model = SiglipVisionModel(auto) if kind == "siglip" else AutoModel.from_config(auto)
        elif kind == "siglip":
            model = SiglipVisionModel.from_pretrained(config.siglip_path)
        else:
            model = AutoModel.from_pretrained(config.dinov2_path)
        return cls(kind, model, size, drop_last_blocks)

    def hf_configs(self) -> dict[str, Any]:
        """What `ViTTrunk.build(..., hf_configs=...)` needs to rebuild this architecture offline."""
        return {} if self.kind == "tiny_vit" else {"vision": self.model.config.to_dict()}

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> the first block's input (N, S, C), prefix tokens first."""
        if self.kind == "tiny_vit":
            x = self.model.patch_embed(_normalize(pixels, SIGLIP_MEAN, SIGLIP_STD))
            return x.flatten(2).transpose(1, 2) + self.model.pos_embed
        if self.kind == "siglip":
            resize = pixels.shape[-1] != self.model.config.image_size
            return self.model.embeddings(_normalize(pixels, SIGLIP_MEAN, SIGLIP_STD), interpolate_pos_encoding=resize)
        return self.model.embeddings(_normalize(pixels, IMAGENET_MEAN, IMAGENET_STD))

    def attention_norm(self, index: int) -> nn.LayerNorm:
        """The pretrained LayerNorm block `index` applies to its input before attention."""
        layer = self.layers[index]
        return layer.layer_norm1 if self.kind == "siglip" else layer.norm1

    def block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """ViT block `index`, exactly as pretrained."""
        layer = self.layers[index]
        return layer(x)[0] if self.kind == "tiny_vit" else layer(x, attention_mask=None)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The plain ViT up to the last used block: (N, 3, H, W) -> (N, S, C)."""
        x = self.embed(pixels)
        for i in range(self.depth):
            x = self.block(i, x)
        return x


# ----------------------------------------------------------------------------------------------
# The action branch
# ----------------------------------------------------------------------------------------------
def _vit_init(module: nn.Module) -> None:
    """New action-branch weights start ViT-style: N(0, 0.02) linears, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class HierarchicalPositionalEmbedding(nn.Module):
    """PE[t, j] = E_chunk[t] + E_dim[j]: a token knows its timestep and which action dimension it is.
    Timestep embeddings start 10x larger than dimension embeddings, as in the released code."""

    def __init__(self, chunk: int, action_dim: int, dim: int) -> None:
        super().__init__()
        self.chunk_embed = nn.Parameter(torch.randn(chunk, dim) * dim**-0.5 * 5.0)
        self.dim_embed = nn.Parameter(torch.randn(action_dim, dim) * dim**-0.5 * 0.5)

    def forward(self) -> torch.Tensor:
        return (self.chunk_embed[:, None] + self.dim_embed[None]).flatten(0, 1)  # (T*A, C), t-major


class FiLM(nn.Module):
    """Task embedding -> (gamma, beta) for one block's action module: Linear(C, mC) -> GELU ->
    Linear(mC, 2C), broadcast over tokens. Zero (gamma, beta) is exactly the identity."""

    def __init__(self, dim: int, hidden_mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_mult * dim), nn.GELU(), nn.Linear(hidden_mult * dim, 2 * dim))
        _vit_init(self)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gamma, beta = self.net(cond).unsqueeze(1).chunk(2, dim=-1)
        return gamma, beta


class ActionBlock(nn.Module):
    """The action module beside one ViT block: new weights, cross-attention to vision, then MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = round(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        _vit_init(self)

    def forward(
        self,
        tokens: torch.Tensor,
        vision: torch.Tensor,
        film: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_extra: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, Q, C), the action stream whose first `num_extra` tokens (proprio) are context too,
        query [LN(those tokens) ; vision] only, `vision` (B, K, C) already layer-normalised. Returns
        new tokens and weights (B, h, Q, num_extra + K). FiLM modulates the query input; the residual
        stream stays unmodulated."""
        query = tokens if film is None else tokens * (1 + film[0]) + film[1]
        context = torch.cat([self.norm1(tokens[:, :num_extra]), vision], dim=1)
        attended, weights = self.attn(self.norm1(query), context=context, return_weights=True)
        tokens = tokens + attended
        return tokens + self.mlp(self.norm2(tokens)), weights


class TaskConditioning(nn.Module):
    """What FiLM is conditioned on: the paper's learned task-id embedding, or (for agents that only
    receive language) the masked mean of learned embeddings of the instruction tokens."""

    def __init__(self, mode: str, dim: int, num_tasks: int, vocab_size: int) -> None:
        super().__init__()
        if mode not in ("task_id", "instruction"):
            raise ValueError(f"unknown task_conditioning {mode!r}; use 'task_id' or 'instruction'")
        self.mode = mode
        self.embed = nn.Embedding(num_tasks if mode == "task_id" else vocab_size, dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.mode == "task_id":
            if "task_index" not in batch:
                raise KeyError("VAT with task_conditioning='task_id' needs batch['task_index']")
            return self.embed(batch["task_index"])
        mask = batch["attention_mask"].unsqueeze(-1).to(self.embed.weight.dtype)
        return (self.embed(batch["input_ids"]) * mask).sum(1) / mask.sum(1).clamp(min=1.0)


# ----------------------------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------------------------
@dataclass
class VATOutput(PolicyOutput):
    """PolicyOutput plus, with attention, each action module's action-to-vision heatmaps
    (`layers[i]`: view -> (B, h, w)), which `attention` averages."""

    layers: list[dict[str, torch.Tensor]] = field(default_factory=list)


class VATPolicy(Policy):
    """Vision Action Transformer. `backbone` is the ViT trunk; it has no language model, so no
    prompt tokens (task conditioning is an embedding), which DTP, LoRA and residual RL ask for.

    action_layers: "all" pairs every used ViT block with an action module reading that block's
    input (the paper); "last" gives every action module the ViT's second-to-last layer output (the
    last-layer ablation). kv_norm: "vision" normalises the keys/values with the pretrained ViT
    LayerNorm (released code); "action" with the action module's own `norm1`, as agents saved before
    issue 37 were trained.
    """

    def __init__(
        self,
        backbone: ViTTrunk,
        views: list[str],
        chunk: int = 8,
        action_dim: int = 7,
        proprio_dim: int = 8,
        task_conditioning: str = "task_id",
        num_tasks: int = 30,
        vocab_size: int = 258,
        action_layers: str = "all",
        use_proprio: bool = False,
        film_hidden_mult: int = 4,
        kv_norm: str = "vision",
    ) -> None:
        super().__init__()
        if action_layers not in ("all", "last"):
            raise ValueError(f"unknown action_layers {action_layers!r}; use 'all' or 'last'")
        if kv_norm not in ("vision", "action") or (action_layers == "last" and kv_norm != "vision"):
            raise ValueError(f"kv_norm must be 'vision' or 'action' ('vision' with action_layers 'last'), got {kv_norm!r}")
        self.backbone, self.views, self.action_layers, self.kv_norm = backbone, list(views), action_layers, kv_norm
        self.chunk, self.action_dim, self.use_proprio = chunk, action_dim, use_proprio
        d, depth = backbone.dim, backbone.depth
        self.action_token = nn.Parameter(torch.zeros(1, chunk * action_dim, d))
        self.action_pos = HierarchicalPositionalEmbedding(chunk, action_dim, d)
        self.task = TaskConditioning(task_conditioning, d, num_tasks, vocab_size)
        self.proprio_projector = ProprioProjector(proprio_dim, d) if use_proprio else None
        self.action_blocks = nn.ModuleList(ActionBlock(d, backbone.heads, backbone.mlp_ratio) for _ in range(depth))
        self.films = nn.ModuleList(FiLM(d, film_hidden_mult) for _ in range(depth))
        self.action_head = MLPResNet(action_dim * d, d, action_dim, num_blocks=2)

    @property
    def num_extra(self) -> int:
        """Non-action tokens in the action stream (the proprio token); they lead the stream."""
        return int(self.use_proprio)

    def action_stream(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Initial action-branch tokens (B, extra + T*A, C): [proprio token], then the action tokens."""
        b = batch["images"].shape[0]
        tokens = (self.action_token + self.action_pos()).expand(b, -1, -1)
        if self.proprio_projector is not None:
            tokens = torch.cat([self.proprio_projector(batch["proprio"]).to(tokens.dtype), tokens], dim=1)
        return tokens

    def transformer(
        self, images: torch.Tensor, tokens: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Run the ViT and the action modules side by side.

        images (B, V, 3, H, W); tokens the action stream (B, Q, C); cond the task embedding (B, C).
        Returns the final action stream, the last vision tokens the ViT computed (B, V, S, C), and
        each action module's cross-attention weights (B, heads, Q, extra + V*S).
        """
        b, v = images.shape[:2]
        vision = self.backbone.embed(images.flatten(0, 1))  # views run through the ViT independently
        if self.action_layers == "last":  # the ViT's second-to-last layer output, as its last block reads it
            last = len(self.backbone.layers) - 1
            for i in range(last):
                vision = self.backbone.block(i, vision)
            keys = self.backbone.attention_norm(last)(vision).reshape(b, -1, vision.shape[-1])
        weights = []
        for i, (block, film) in enumerate(zip(self.action_blocks, self.films)):
            if self.action_layers == "all":  # this block's input vision tokens of every view
                norm = self.backbone.attention_norm(i) if self.kv_norm == "vision" else block.norm1
                keys = norm(vision).reshape(b, -1, vision.shape[-1])
            tokens, w = block(tokens, keys, film(cond), self.num_extra)
            weights.append(w)
            if self.action_layers == "all":
                vision = self.backbone.block(i, vision)
        return tokens, vision.reshape(b, v, *vision.shape[1:]), weights

    def heatmaps(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-attention (B, heads, Q, K) -> per view (B, h, w): mean over heads and action tokens,
        read at that view's patch keys (CLS/register tokens excluded)."""
        mean = weights[:, :, self.num_extra :].float().mean(dim=(1, 2))  # (B, K)
        s = self.backbone.num_prefix + self.backbone.grid[0] * self.backbone.grid[1]
        out = {}
        for j, view in enumerate(self.views):
            start = self.num_extra + j * s + self.backbone.num_prefix
            out[view] = mean[:, start : self.num_extra + (j + 1) * s].reshape(-1, *self.backbone.grid)
        return out

    def forward(self, batch: dict[str, torch.Tensor], with_attention: bool = False, *,
                llm_attentions: bool = False, visual_key_mask: torch.Tensor | None = None) -> VATOutput:
        """Actions (B, T, A) and, with attention, action-to-vision heatmaps averaged over layers,
        heads and tokens. A ViT has no LLM attentions to return and no prompt to prune with."""
        if llm_attentions or visual_key_mask is not None:
            raise ValueError("VAT has no language model: no LLM attentions to return, no visual tokens to prune")
        images = batch["images"]
        if images.shape[1] != len(self.views):
            raise ValueError(f"VAT expects {len(self.views)} views {self.views}, got {images.shape[1]}")
        tokens, _, weights = self.transformer(images, self.action_stream(batch), self.task(batch))
        action_tokens = tokens[:, self.num_extra :]
        actions = self.action_head(action_tokens.reshape(images.shape[0], self.chunk, -1))
        attention: dict[str, torch.Tensor] = {}
        layers = [self.heatmaps(w) for w in weights] if with_attention else []
        if with_attention:
            attention = {view: torch.stack([m[view] for m in layers]).mean(0) for view in self.views}
        return VATOutput(actions, attention, layers, features=action_tokens.float().mean(dim=1))


@dataclass(frozen=True)
class VATConfig(PolicyConfig):
    """VAT's own recipe keys (the module doc explains each mechanism)."""

    task_conditioning: Literal["task_id", "instruction"]  # task_id (paper: needs the batch's task index) | mean-pooled instruction tokens
    num_tasks: int  # task_id embeddings
    action_layers: Literal["all", "last"]  # all (paper) | the last-layer ablation
    use_proprio: bool  # paper: no proprio; true adds one proprio token to the action stream
    film_hidden_mult: int  # FiLM MLP: Linear(C, mC) -> GELU -> Linear(mC, 2C)
    drop_last_blocks: int = 0  # ViT blocks not run at the end (released SigLIP recipe: 1)
    kv_norm: Literal["vision", "action"] = "action"  # recipes saved before issue 37 normed keys/values in the action module


def build_vat(recipe: Recipe, hf_configs: dict[str, Any] | None = None) -> VATPolicy:
    """Recipe -> VATPolicy (the registry's builder for "vat")."""
    m, agent = recipe.model, recipe.agent
    if m.kv_norm == "action" and m.action_layers == "last":
        raise ValueError("this VAT recipe predates issue 37 (no `kv_norm` key) and uses action_layers 'last': the "
                         "last-layer ablation was one action block at the last layer and is now a full-depth action "
                         "module reading the second-to-last layer, so its weights do not fit; retrain it")
    return VATPolicy(
        ViTTrunk.build(recipe.backbone, m.drop_last_blocks, hf_configs), recipe.backbone.views, agent.chunk,
        agent.action_dim, agent.proprio_dim, task_conditioning=m.task_conditioning, num_tasks=m.num_tasks,
        vocab_size=recipe.backbone.vocab_size, action_layers=m.action_layers, use_proprio=m.use_proprio,
        film_hidden_mult=m.film_hidden_mult, kv_norm=m.kv_norm,
    )
