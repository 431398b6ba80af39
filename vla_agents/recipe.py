"""Typed recipes: every hyperparameter of an agent, in parts that say which layer reads it.

A recipe file in `policies/` stays one flat YAML mapping (the data users edit, and the `recipe`
an agent saves in its config.json); `Recipe.parse` routes each key to its part, fills what is
absent from the defaults declared here (the one place they live), and refuses unknown keys, missing
ones and values of the wrong type or range, naming the key and what was expected. Each policy
declares its own part (`FocusVLAConfig`, `VATConfig`, ... beside its model); the registry in
`vla_agents.policies` says which part a policy reads. A default that a field documents as "recipes
saved before ..." keeps an older saved agent building the architecture it was trained with.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping

Scale = Literal["tiny", "paper"]
ActionLoss = Literal["l1", "mse"]  # `models.blocks.ACTION_LOSSES` implements each (a test keeps the two equal)


@dataclass(frozen=True)
class BackboneConfig:
    """The vision(-language) backbone: the images it sees, its towers and where pretrained weights come from."""

    views: list[str]  # camera views, in the order the model reads them
    image_size: int  # side of the square image each view is resized to
    vision: Literal["tiny_vit", "siglip", "dinov2", "dinosiglip"]
    patch_size: int
    crop_area: float = 1.0  # random crop of this area fraction when training, centre crop at test time; 1.0: off
    vit_dim: int | None = None  # tiny_vit widths (None for the pretrained towers)
    vit_depth: int | None = None
    vit_heads: int | None = None
    vit_pos_std: float = 1.0  # tiny_vit position-embedding init std: unit scale, so pooled features keep where things are
    siglip_path: str | None = None  # hub id or local folder of the SigLIP tower
    dinov2_path: str | None = None  # hub id or local folder of the DINOv2 tower
    backbone_path: str | None = None  # a pretrained tiny backbone folder (`vla-agents pretrain`)
    llm_path: str | None = None  # hub id or local folder of the language model (Qwen2.5-0.5B at paper scale)
    llm_dim: int | None = None  # widths of a language model built from scratch (no llm_path, no backbone_path)
    llm_layers: int | None = None
    llm_heads: int | None = None
    llm_kv_heads: int | None = None
    llm_intermediate: int | None = None
    llm_init_std: float = 0.2  # Qwen2 initializer_range from scratch; at HF's 0.02 a 128-wide LLM attends uniformly
    llm_max_positions: int = 2048
    vocab_size: int | None = None  # the byte-level tokenizer's vocabulary, when no tokenizer comes with the weights
    tokenizer_path: str | None = None
    attn_implementation: Literal["eager", "sdpa"] = "eager"
    film: bool = False  # OpenVLA-OFT+ FiLM: the mean prompt embedding scales/shifts every ViT block

    def __post_init__(self) -> None:
        if not self.views:
            raise ValueError("recipe key 'views' is []; expected a list of view names")
        for key in ("image_size", "patch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"recipe key {key!r} is {getattr(self, key)!r}; expected an integer >= 1")
        unset = [k for k in ("vit_dim", "vit_depth", "vit_heads") if getattr(self, k) is None]
        if self.vision == "tiny_vit" and unset:
            raise ValueError(f"recipe has no value for {', '.join(map(repr, unset))}; vision 'tiny_vit' needs vit_dim, "
                             "vit_depth and vit_heads")

    def llm_widths(self) -> dict[str, int]:
        """The widths of a language model built from scratch, or a ValueError naming the unset keys."""
        widths = {k: getattr(self, k) for k in ("vocab_size", "llm_dim", "llm_layers", "llm_heads", "llm_kv_heads",
                                                 "llm_intermediate")}
        unset = [k for k, v in widths.items() if v is None]
        if unset:
            raise ValueError(f"recipe has no value for {', '.join(map(repr, unset))}; a language model built from "
                             "scratch (no llm_path, no backbone_path) needs them")
        return widths


@dataclass(frozen=True)
class AgentConfig:
    """What the agent does around the model: the prompt, the action chunk and how it is executed."""

    prompt_template: str  # the instruction goes where "{instruction}" is
    chunk: int  # actions predicted per model call
    action_dim: int
    proprio_dim: int  # 0: a benchmark with no robot state (SIMPLER's Google Robot)
    n_open_loop: int  # actions executed from each chunk before the next model call (open loop)
    add_bos: bool = False
    temporal_ensemble: bool = False  # ACT-style ensembling of overlapping chunks instead of open-loop execution
    ensemble_k: float = 0.01  # its exponential weight

    def __post_init__(self) -> None:
        for key in ("chunk", "action_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"recipe key {key!r} is {getattr(self, key)!r}; expected an integer >= 1")
        if self.proprio_dim < 0:
            raise ValueError(f"recipe key 'proprio_dim' is {self.proprio_dim!r}; expected an integer >= 0 "
                             "(0: a benchmark with no robot state, such as SIMPLER's Google Robot)")
        if "{instruction}" not in self.prompt_template:
            raise ValueError(f"recipe key 'prompt_template' is {self.prompt_template!r}; expected a string with {{instruction}} in it")
        if not 1 <= self.n_open_loop <= self.chunk:
            raise ValueError(f"recipe key 'n_open_loop' is {self.n_open_loop!r}; expected an integer from 1 to chunk ({self.chunk})")
        if self.ensemble_k < 0:
            raise ValueError(f"recipe key 'ensemble_k' is {self.ensemble_k!r}; expected a number >= 0")


@dataclass(frozen=True)
class TrainingConfig:
    """Behaviour cloning's defaults (`train bc` flags override the optimiser's)."""

    lr: float
    batch_size: int
    loss: ActionLoss = "l1"  # recipes saved before the key existed trained with the papers' L1
    aux_target_weight: float = 0.0  # auxiliary loss: the named object's position from the policy's features
    aux_attention_weight: float = 0.0  # auxiliary loss: -log of the overlay's share on the named object
    lr_schedule: Literal["cosine", "multistep"] = "cosine"  # cosine with warmup | x0.1 once at lr_decay_step
    lr_decay_step: int | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lora_rank: int = 0  # paper scale: LoRA on the language model; 0 trains every weight
    lora_alpha: int = 0

    def __post_init__(self) -> None:
        if self.lr_schedule == "multistep" and self.lr_decay_step is None:
            raise ValueError("recipe key 'lr_decay_step' is null; lr_schedule 'multistep' needs the step to decay at")


@dataclass(frozen=True)
class PolicyConfig:
    """Base of each policy's own part: the architecture keys only that policy reads."""


@dataclass(frozen=True)
class Recipe:
    """One agent's recipe: its policy and scale, and the parts each layer reads."""

    policy: str
    scale: Scale
    backbone: BackboneConfig
    model: PolicyConfig  # the policy's own part, e.g. `FocusVLAConfig`
    agent: AgentConfig
    training: TrainingConfig

    PARTS: ClassVar[dict[str, type]] = {"backbone": BackboneConfig, "agent": AgentConfig, "training": TrainingConfig}

    @classmethod
    def parse(cls, flat: Mapping[str, Any], model_part: type[PolicyConfig], source: str = "recipe") -> Recipe:
        """A flat mapping (a YAML recipe, a saved agent's `recipe`) -> a checked Recipe. `source` names
        it in errors ("focusvla-tiny.yaml", "runs/agent/config.json")."""
        parts = {**cls.PARTS, "model": model_part}
        known = {"policy", "scale"} | {f.name for part in parts.values() for f in dataclasses.fields(part)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ValueError(f"{source}: unknown recipe key(s) {', '.join(unknown)}; a {flat.get('policy')} recipe "
                             f"has {', '.join(sorted(known))}")
        missing = [k for k in ("policy", "scale") if k not in flat]
        missing += [f.name for part in parts.values() for f in dataclasses.fields(part)
                    if f.name not in flat and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{source}: the recipe has no key(s) {', '.join(missing)}; expected every key of "
                             f"policies/{flat.get('policy')}-{flat.get('scale')}.yaml")
        check_value("scale", flat["scale"], Scale, source)
        try:
            built = {name: _build(part, flat, source) for name, part in parts.items()}
        except ValueError as e:
            raise ValueError(e.args[0] if e.args[0].startswith(source) else f"{source}: {e}") from None
        return cls(flat["policy"], flat["scale"], **built)

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping again, every key filled in (what an agent saves)."""
        flat: dict[str, Any] = {"policy": self.policy, "scale": self.scale}
        for part in (self.backbone, self.model, self.agent, self.training):
            flat.update(dataclasses.asdict(part))
        return flat

    def replace(self, **changes: Any) -> Recipe:
        """A copy with flat keys changed, checked as a loaded recipe is."""
        return Recipe.parse({**self.to_dict(), **changes}, type(self.model), "recipe")


def _build(part: type, flat: Mapping[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(part)
    values = {f.name: flat[f.name] for f in dataclasses.fields(part) if f.name in flat}
    for key, value in values.items():
        check_value(key, value, hints[key], source)
    return part(**{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()})


def check_value(key: str, value: Any, annotation: Any, source: str = "recipe") -> None:
    """`value` fits `annotation` (int, float, bool, str, None, list[...], Literal[...] and unions of
    them), or a ValueError naming the key, the value and what was expected."""
    if not _fits(value, annotation):
        raise ValueError(f"{source}: recipe key {key!r} is {value!r}; expected {_describe(annotation)}")


def _fits(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))
