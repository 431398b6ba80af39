"""The vision-language backbone every policy sits on (Prismatic layout, Qwen2 language model).

Two scales share one code path: `tiny` builds a small ViT and a few-layer Qwen2 from configs (no
download); `paper` loads SigLIP and/or DINOv2 and Qwen2.5 with `from_pretrained`. The backbone
produces the LLM sequence

    [prompt start, visual tokens of every view, extra tokens, rest of prompt, policy slots]

and returns per-layer hidden states (and attentions) plus where each view's patches sit, so a
policy can read features and map attention back onto each camera's patch grid.

Prompt convention: `input_ids[:, 0]` is the prompt's start token and `input_ids[:, 1:]` the rest,
left-padded, so the policy slots sit at the same positions for every sample in a batch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2Model
from transformers import SiglipVisionConfig, SiglipVisionModel

from vla_agents.models.backbone_folder import load_vision_weights, open_backbone
from vla_agents.models.blocks import TransformerBlock
from vla_agents.recipe import BackboneConfig

RawVisual = Literal["output", "last_layer"] | None
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _normalize(pixels: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    mean_t = pixels.new_tensor(mean).view(1, 3, 1, 1)
    std_t = pixels.new_tensor(std).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


# ----------------------------------------------------------------------------------------------
# Vision towers: pixels in [0, 1] (B, 3, H, W) -> patch tokens (B, h*w, dim)
# ----------------------------------------------------------------------------------------------
class TinyViT(nn.Module):
    """A few-layer ViT for CPU-scale training; same interface as the pretrained towers."""

    fused = False

    def __init__(
        self, image_size: int = 128, patch_size: int = 16, dim: int = 128, depth: int = 2, heads: int = 4, pos_std: float = 0.02
    ) -> None:
        super().__init__()
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.dim = dim
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], dim) * pos_std)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    @property
    def film_dims(self) -> list[int]:
        """The width of each block FiLM modulates, in the order `forward(film=...)` takes them."""
        return [self.dim] * len(self.blocks)

    def forward(
        self, pixels: torch.Tensor, return_attention: bool = False, film: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """`film`: one (gamma, beta) pair per block (see `VisionFiLM`), or None."""
        x = self.patch_embed(_normalize(pixels, SIGLIP_MEAN, SIGLIP_STD)).flatten(2).transpose(1, 2) + self.pos_embed
        attentions = []
        for i, block in enumerate(self.blocks):
            x, weights = block(x, return_weights=return_attention, film=None if film is None else film[i])
            attentions.append(weights)
        x = self.norm(x)
        return (x, attentions) if return_attention else x


class HFVisionTower(nn.Module):
    """SigLIP and/or DINOv2 from transformers. With both, features are fused channel-wise per patch
    (DINOv2 dim + SigLIP dim), DINOv2's CLS/register tokens dropped, as Prismatic's DinoSigLIP.
    Features come from the second-to-last layer, as Prismatic reads them."""

    def __init__(self, siglip: nn.Module | None, dinov2: nn.Module | None, image_size: int) -> None:
        super().__init__()
        if siglip is None and dinov2 is None:
            raise ValueError("HFVisionTower needs at least one of siglip / dinov2")
        self.siglip, self.dinov2, self.image_size = siglip, dinov2, image_size
        towers = [t for t in (dinov2, siglip) if t is not None]
        patch = towers[0].config.patch_size
        if any(t.config.patch_size != patch for t in towers):
            raise ValueError("fused towers must share a patch size")
        self.grid = (image_size // patch, image_size // patch)
        self.dim = sum(t.config.hidden_size for t in towers)
        self.fused = len(towers) == 2

    @classmethod
    def from_pretrained(cls, siglip: str | None, dinov2: str | None, image_size: int) -> HFVisionTower:
        return cls(
            SiglipVisionModel.from_pretrained(siglip) if siglip else None,
            AutoModel.from_pretrained(dinov2) if dinov2 else None,
            image_size,
        )

    @classmethod
    def from_configs(cls, configs: dict[str, dict], image_size: int) -> HFVisionTower:
        """Rebuild the architecture (random weights) from saved configs; weights come from the checkpoint."""
        siglip = SiglipVisionModel(SiglipVisionConfig(**configs["siglip"])) if "siglip" in configs else None
        dinov2 = None
        if "dinov2" in configs:
            cfg = dict(configs["dinov2"])
            dinov2 = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
        return cls(siglip, dinov2, image_size)

    def configs(self) -> dict[str, dict]:
        out = {}
        if self.siglip is not None:
            out["siglip"] = self.siglip.config.to_dict()
        if self.dinov2 is not None:
            out["dinov2"] = self.dinov2.config.to_dict()
        return out

    def _film_sites(self) -> list[tuple[nn.Module, nn.Module]]:
        """Per encoder layer, DINOv2's then SigLIP's: (the layer, the module whose output the layer adds
        to its residual stream after attention)."""
        sites = []
        if self.dinov2 is not None:
            sites += [(layer, layer.layer_scale1) for layer in self.dinov2.encoder.layer]
        if self.siglip is not None:
            siglip = getattr(self.siglip, "vision_model", self.siglip)  # transformers < 5 nests it
            sites += [(layer, layer.self_attn) for layer in siglip.encoder.layers]
        return sites

    @property
    def film_dims(self) -> list[int]:
        """The width of each encoder layer FiLM modulates, in the order `forward(film=...)` takes them."""
        dims = []
        if self.dinov2 is not None:
            dims += [self.dinov2.config.hidden_size] * self.dinov2.config.num_hidden_layers
        if self.siglip is not None:
            dims += [self.siglip.config.hidden_size] * self.siglip.config.num_hidden_layers
        return dims

    def _attach_film(self, film: list[tuple[torch.Tensor, torch.Tensor]]) -> list[Any]:
        """FiLM inside transformers' encoder layers without copying their code: a pre-hook keeps each
        layer's input (its residual) and a hook rewrites the attention branch `a` so that the layer's
        `residual + a` becomes `(residual + a) * (1 + gamma) + beta`, which the MLP then reads."""
        if self.dinov2 is not None and self.dinov2.config.drop_path_rate > 0:
            raise ValueError("FiLM on DINOv2 needs drop_path_rate 0 (stochastic depth would rescale the rewritten branch)")
        handles = []
        for (layer, branch), (gamma, beta) in zip(self._film_sites(), film):
            kept: dict[str, torch.Tensor] = {}

            def keep_residual(module, args, kwargs, kept=kept):
                kept["residual"] = args[0] if args else kwargs["hidden_states"]

            def modulate(module, args, out, kept=kept, gamma=gamma, beta=beta):
                attended = out[0] if isinstance(out, tuple) else out
                residual = kept["residual"]
                rewritten = (residual + attended) * (1 + gamma[:, None]) + beta[:, None] - residual
                return (rewritten, *out[1:]) if isinstance(out, tuple) else rewritten

            handles += [layer.register_forward_pre_hook(keep_residual, with_kwargs=True), branch.register_forward_hook(modulate)]
        return handles

    def forward(self, pixels: torch.Tensor, film: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """`film`: one (gamma, beta) pair per encoder layer (see `film_dims`), or None."""
        return self.features(pixels, film)[0]

    def features(
        self, pixels: torch.Tensor, film: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(second-to-last layer, last layer) features, each fused over the towers as `forward`'s: the
        last layer is what FocusVLA reads as raw vision features (computed anyway, so it costs nothing)."""
        handles = self._attach_film(film) if film is not None else []
        try:
            features, last = [], []
            if self.dinov2 is not None:
                hidden = self.dinov2(_normalize(pixels, IMAGENET_MEAN, IMAGENET_STD), output_hidden_states=True).hidden_states
                skip = 1 + getattr(self.dinov2.config, "num_register_tokens", 0)
                features.append(hidden[-2][:, skip:])
                last.append(hidden[-1][:, skip:])
            if self.siglip is not None:
                resize = pixels.shape[-1] != self.siglip.config.image_size
                out = self.siglip(
                    _normalize(pixels, SIGLIP_MEAN, SIGLIP_STD), output_hidden_states=True, interpolate_pos_encoding=resize
                )
                features.append(out.hidden_states[-2])
                last.append(out.hidden_states[-1])
            return torch.cat(features, dim=-1), torch.cat(last, dim=-1)
        finally:
            for handle in handles:
                handle.remove()


class VisionFiLM(nn.Module):
    """OpenVLA-OFT+'s FiLM: the mean of the prompt's input embeddings sets a per-channel scale and
    shift of every ViT block's stream after attention, gamma = Linear(e), beta = Linear(e), one pair
    per block and the same for every patch (per-patch FiLM followed language worse in the paper).
    OFT+ added it because its policy ignored the instruction."""

    def __init__(self, llm_dim: int, block_dims: list[int]) -> None:
        super().__init__()
        self.scale = nn.ModuleList(nn.Linear(llm_dim, dim) for dim in block_dims)
        self.shift = nn.ModuleList(nn.Linear(llm_dim, dim) for dim in block_dims)

    def forward(self, language: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(B, llm_dim) mean prompt embedding -> per block (gamma, beta), each (B, that block's width)."""
        return [(scale(language), shift(language)) for scale, shift in zip(self.scale, self.shift)]


class VisionProjector(nn.Module):
    """Prismatic's MLP projector into the LLM width; the fused (two-tower) variant is one layer deeper."""

    def __init__(self, vision_dim: int, llm_dim: int, fused: bool) -> None:
        super().__init__()
        if fused:
            self.net = nn.Sequential(
                nn.Linear(vision_dim, 4 * vision_dim), nn.GELU(), nn.Linear(4 * vision_dim, llm_dim), nn.GELU(),
                nn.Linear(llm_dim, llm_dim),
            )
        else:
            self.net = nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------------------------
# Language model and tokenizer
# ----------------------------------------------------------------------------------------------
class LanguageModel(nn.Module):
    """Qwen2 decoder (no LM head). Inputs are embeddings so images and queries can be spliced in;
    outputs are every layer's hidden states and, with eager attention, its attention weights."""

    def __init__(self, model: Qwen2Model) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def from_pretrained(cls, path: str, attn_implementation: str = "sdpa") -> LanguageModel:
        return cls(Qwen2Model.from_pretrained(path, attn_implementation=attn_implementation))

    @classmethod
    def from_config(cls, config: dict[str, Any], attn_implementation: str = "sdpa") -> LanguageModel:
        cfg = Qwen2Config(**{k: v for k, v in config.items() if k != "model_type"})
        cfg._attn_implementation = attn_implementation
        return cls(Qwen2Model(cfg))

    @property
    def config(self) -> Qwen2Config:
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def forward(
        self, inputs_embeds: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, output_attentions: bool = False
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
        """`mask` is additive (B, 1, S, S). Returns hidden states of layers 1..L and attentions. Fused
        kernels return no attention weights, so a call that asks for them runs eager attention, for
        that call only: a wrapper that reads them (DTP) leaves the model as it found it."""
        implementation = self.config._attn_implementation
        if output_attentions and implementation != "eager":
            self.model.set_attn_implementation("eager")
        try:
            out = self.model(
                inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids,
                output_hidden_states=True, output_attentions=output_attentions, use_cache=False,
            )
        finally:
            if self.config._attn_implementation != implementation:
                self.model.set_attn_implementation(implementation)
        return tuple(out.hidden_states[1:]), (tuple(out.attentions) if output_attentions else None)


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer built locally (256 byte symbols + <pad>, <bos>): no download, any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<bos>": 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>")


WORD_PATTERN = re.compile(r"\w+|[^\w\s]+")  # how the word-level tokenizer splits text (tokenizers' Whitespace)


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `words` (lower-cased; punctuation splits off as its own token), plus
    <pad>, <bos>, <unk>. A colour word is then one token whose embedding can name a cube, where the
    byte tokenizer spells it in three bytes a four-layer LLM must first compose."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    specials = ["<pad>", "<bos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate([*specials, *sorted(set(words) - set(specials))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")


def left_padded(prompts: list[list[int]], pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, mask) in the backbone's prompt convention: each prompt's start token in
    column 0, the rest left-padded, so the slots after the prompt line up across the batch."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id if pad_id is not None else 0, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, 0], mask[i, 0] = p[0], 1
        ids[i, width - len(p) + 1 :], mask[i, width - len(p) + 1 :] = torch.tensor(p[1:], dtype=torch.long), 1
    return ids, mask


# ----------------------------------------------------------------------------------------------
# The multimodal sequence
# ----------------------------------------------------------------------------------------------
@dataclass
class BackboneOutput:
    """hidden_states[i] is LLM layer i+1's output (B, S, d); visual[view] the sequence positions of
    that view's patches (row-major over `grid`); slots the positions of the policy's slots.
    visual_key_mask (B, V*h*w), True = pruned: visual tokens no query may attend to; a policy that
    attends to visual features outside the LLM must mask them there too."""

    hidden_states: tuple[torch.Tensor, ...]
    attentions: tuple[torch.Tensor, ...] | None
    visual: dict[str, slice]
    extra: slice
    slots: slice
    grid: tuple[int, int]
    visual_key_mask: torch.Tensor | None = None
    raw_visual: torch.Tensor | None = None  # (B, V*h*w, vision dim): the towers' own features, when asked for


class VisionLanguageBackbone(nn.Module):
    def __init__(self, vision: nn.Module, llm: LanguageModel, views: list[str], film: bool = False) -> None:
        super().__init__()
        self.vision, self.llm, self.views = vision, llm, list(views)
        self.projector = VisionProjector(vision.dim, llm.hidden_size, fused=vision.fused)
        self.film = VisionFiLM(llm.hidden_size, vision.film_dims) if film else None

    @property
    def dim(self) -> int:
        return self.llm.hidden_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.vision.grid

    def encode_images(self, images: torch.Tensor, language: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V, 3, H, W) in [0, 1] -> projected visual tokens (B, V*h*w, d), views in order.
        `language` (B, d), the mean prompt embedding, conditions the towers when FiLM is on."""
        return self.encode_with_raw(images, language)[0]

    def encode_with_raw(
        self, images: torch.Tensor, language: torch.Tensor | None = None, raw_visual: RawVisual = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`encode_images`, plus the towers' own features (B, V*h*w, vision dim) before the projector:
        their output (`raw_visual="output"`), their last layer ("last_layer": pretrained towers read
        features from the second-to-last, see HFVisionTower), or None."""
        b, v = images.shape[:2]
        if self.film is not None and language is None:
            raise ValueError("this backbone has FiLM: encode_images needs the mean prompt embedding (language=)")
        film = None if self.film is None else self.film(language.repeat_interleave(v, dim=0))
        kwargs = {} if film is None else {"film": film}
        if raw_visual == "last_layer" and isinstance(self.vision, HFVisionTower):
            tokens, raw = self.vision.features(images.flatten(0, 1), **kwargs)
        else:
            tokens = self.vision(images.flatten(0, 1), **kwargs)
            raw = tokens if raw_visual else None  # the tiny ViT's output is its last layer
        flat = lambda t: t.reshape(b, v * t.shape[1], -1)  # noqa: E731
        return flat(self.projector(tokens)), (None if raw is None else flat(raw))

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        slots: torch.Tensor,
        extra: torch.Tensor | None = None,
        causal: bool = True,
        output_attentions: bool = False,
        visual_key_mask: torch.Tensor | None = None,
        raw_visual: RawVisual = None,
    ) -> BackboneOutput:
        """`visual_key_mask` (B, V*h*w), True = pruned, removes those visual tokens as attention keys
        (every query, every layer) while they keep their positions: token pruning without
        re-indexing RoPE or the per-view slices. `raw_visual` as in `encode_with_raw`."""
        text = self.llm.embed(input_ids)
        language = None
        if self.film is not None:  # OFT+: the mean input embedding of the (unpadded) prompt
            weights = attention_mask[..., None].to(text.dtype)
            language = (text * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        visual, raw = self.encode_with_raw(images, language, raw_visual)
        visual = visual.to(text.dtype)
        b = text.shape[0]
        extra = text.new_zeros(b, 0, text.shape[-1]) if extra is None else extra.to(text.dtype)
        parts = [text[:, :1], visual, extra, text[:, 1:], slots.to(text.dtype)]
        embeds = torch.cat(parts, dim=1)

        ones = lambda t: attention_mask.new_ones(b, t.shape[1])  # noqa: E731
        keep = torch.cat([attention_mask[:, :1], ones(visual), ones(extra), attention_mask[:, 1:], ones(slots)], dim=1).bool()
        position_ids = keep.long().cumsum(dim=1) - 1  # padding does not consume RoPE positions
        keys = keep
        if visual_key_mask is not None:
            n_vis = visual.shape[1]
            keys = torch.cat([keep[:, :1], keep[:, 1 : 1 + n_vis] & ~visual_key_mask.bool(), keep[:, 1 + n_vis :]], dim=1)
        allowed = keys[:, None, None, :].expand(b, 1, keep.shape[1], keep.shape[1])
        if causal:
            allowed = allowed & torch.ones_like(allowed[0, 0]).tril()
        mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device)
        mask = mask.masked_fill(~allowed, torch.finfo(embeds.dtype).min)

        hidden_states, attentions = self.llm(embeds, mask, position_ids.clamp(min=0), output_attentions)
        n = visual.shape[1] // len(self.views)
        start_extra = 1 + visual.shape[1]
        return BackboneOutput(
            hidden_states=hidden_states,
            attentions=attentions,
            visual={view: slice(1 + i * n, 1 + (i + 1) * n) for i, view in enumerate(self.views)},
            extra=slice(start_extra, start_extra + extra.shape[1]),
            slots=slice(embeds.shape[1] - slots.shape[1], embeds.shape[1]),
            grid=self.grid,
            visual_key_mask=visual_key_mask,
            raw_visual=raw,
        )

    def hf_configs(self) -> dict[str, Any]:
        """What `build_backbone(..., hf_configs=...)` needs to rebuild this architecture offline."""
        out: dict[str, Any] = {"llm": self.llm.config.to_dict()}
        if isinstance(self.vision, HFVisionTower):
            out["vision"] = self.vision.configs()
        return out


def build_backbone(config: BackboneConfig, hf_configs: dict[str, Any] | None = None) -> VisionLanguageBackbone:
    """Backbone keys -> backbone. With `hf_configs` (from a saved agent) the architecture is rebuilt
    without touching the original pretrained paths; the weights then come from the checkpoint."""
    attn = config.attn_implementation
    folder = None
    if config.backbone_path and hf_configs is None:  # a pretrained tiny backbone, loaded as paper recipes load theirs
        folder = open_backbone(config)
    if config.vision == "tiny_vit":
        vision: nn.Module = TinyViT(config.image_size, config.patch_size, config.vit_dim, config.vit_depth,
                                    config.vit_heads, config.vit_pos_std)
    elif hf_configs is not None:
        vision = HFVisionTower.from_configs(hf_configs["vision"], config.image_size)
    else:  # "siglip" | "dinov2" | "dinosiglip"
        vision = HFVisionTower.from_pretrained(config.siglip_path if "siglip" in config.vision else None,
                                               config.dinov2_path if "dino" in config.vision else None, config.image_size)
    if hf_configs is not None:
        llm = LanguageModel.from_config(hf_configs["llm"], attn)
    elif folder is not None:
        llm = LanguageModel.from_pretrained(str(folder / "llm"), attn)
        llm.config._name_or_path = f"{config.backbone_path}/llm"  # as the recipe names it: saved configs stay portable
    elif config.llm_path:
        llm = LanguageModel.from_pretrained(config.llm_path, attn)
    else:
        w = config.llm_widths()
        llm = LanguageModel.from_config(
            dict(
                vocab_size=w["vocab_size"], hidden_size=w["llm_dim"], num_hidden_layers=w["llm_layers"],
                num_attention_heads=w["llm_heads"], num_key_value_heads=w["llm_kv_heads"],
                intermediate_size=w["llm_intermediate"], max_position_embeddings=config.llm_max_positions,
                tie_word_embeddings=False, initializer_range=config.llm_init_std,
            ),
            attn,
        )
    backbone = VisionLanguageBackbone(vision, llm, config.views, film=config.film)
    if folder is not None:
        load_vision_weights(folder, {"vision": backbone.vision, "projector": backbone.projector})
    return backbone
