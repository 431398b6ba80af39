"""A pretrained backbone folder: what `vla-agents pretrain` writes and a recipe's `backbone_path` names.

At paper scale a recipe loads a pretrained VLM by hub id or path (`llm_path`, `siglip_path`, ...); at
tiny scale it loads this folder the same way, so both scales start from pretrained weights. Layout:

    backbone.json        format, version, the architecture (recipe keys the weights fix), how it was made
    vision.safetensors   the vision tower (`vision.*`) and its projector into the LLM width (`projector.*`)
    llm/                 the language model, `Qwen2Model.save_pretrained` (config.json, model.safetensors)
    tokenizer/           the tokenizer the language model was trained with
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vla_agents.atomic import replace_folder
from vla_agents.recipe import BackboneConfig
from vla_agents.resources import resource_dir

FORMAT = "vla-agents-backbone"
VERSION = 1
VISION_KEYS = ("vision", "image_size", "patch_size", "vit_dim", "vit_depth", "vit_heads")
LLM_KEYS = {"llm_dim": "hidden_size", "llm_layers": "num_hidden_layers", "llm_heads": "num_attention_heads",
            "llm_kv_heads": "num_key_value_heads", "llm_intermediate": "intermediate_size"}


def resolve_shipped_path(value: str | Path) -> Path:
    """An absolute path, a path from the working directory, or a name under the package's `policies/`
    folder (where the shipped `backbones/` live), in that order: recipes name shipped folders portably."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    shipped = resource_dir("policies") / path
    return shipped if shipped.exists() else path


def read_backbone_info(folder: str | Path) -> dict[str, Any]:
    """backbone.json of `folder`, after checking that the folder holds everything a backbone needs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"recipe key backbone_path: no backbone folder at {folder} "
                                "(make one with `vla-agents pretrain`, or set backbone_path: null to start from random weights)")
    missing = [name for name in ("backbone.json", "vision.safetensors", "llm/config.json", "tokenizer") if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"backbone folder {folder} is missing {', '.join(missing)}")
    try:
        info = json.loads((folder / "backbone.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt backbone file {folder / 'backbone.json'}: {e}") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{folder / 'backbone.json'}: 'format' is {info.get('format') if isinstance(info, dict) else info!r}, "
                         f"expected {FORMAT!r}")
    if info.get("version") != VERSION:
        raise ValueError(f"{folder / 'backbone.json'}: version {info.get('version')!r}, this package reads version {VERSION}")
    return info


def check_architecture(folder: Path, info: dict[str, Any], config: BackboneConfig) -> None:
    """The recipe must describe the architecture the weights were trained in; name every key that differs
    (a recipe without a language model, VAT's, leaves the LLM widths unset)."""
    arch = info.get("architecture", {})
    llm = json.loads((folder / "llm" / "config.json").read_text())
    wrong = [f"{key}: recipe {getattr(config, key)!r}, backbone {arch.get(key)!r}" for key in VISION_KEYS
             if key in arch and getattr(config, key) != arch[key]]
    wrong += [f"{key}: recipe {getattr(config, key)!r}, llm/config.json {field} {llm.get(field)!r}"
              for key, field in LLM_KEYS.items() if getattr(config, key) is not None and getattr(config, key) != llm.get(field)]
    if wrong:
        raise ValueError(f"backbone folder {folder} was trained with another architecture than the recipe asks for: "
                         + "; ".join(wrong))


def open_backbone(config: BackboneConfig) -> Path:
    """The folder the recipe's `backbone_path` names, after checking it is complete and of the recipe's architecture."""
    folder = resolve_shipped_path(config.backbone_path)
    check_architecture(folder, read_backbone_info(folder), config)
    return folder


def load_vision_weights(folder: Path, modules: dict[str, nn.Module]) -> None:
    """Pretrained parts of `vision.safetensors` into `modules` ({"vision": tower, "projector": ...}; a policy
    without a language model, VAT, takes the tower alone). Every key of each part, shapes checked."""
    path = folder / "vision.safetensors"
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read {path} (truncated or not a safetensors file?): {e}") from e
    for name, module in modules.items():
        prefix = f"{name}."
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        expected = module.state_dict()
        bad = sorted(set(expected) ^ set(part)) + [k for k in part if k in expected and part[k].shape != expected[k].shape]
        if bad:
            raise ValueError(f"{path} does not match the recipe's {name} architecture (keys or shapes differ: {bad[:5]})")
        module.load_state_dict(part)


def save_backbone(folder: str | Path, vision: nn.Module, projector: nn.Module, llm: nn.Module, tokenizer: Any,
                  architecture: dict[str, Any], provenance: dict[str, Any]) -> Path:
    """Write a backbone folder in one swap a kill cannot half-do (`vla_agents.atomic`); other entries of
    an existing folder (a pretraining checkpoint/, its log) are kept."""

    def write(tmp: Path) -> None:
        state = {f"vision.{k}": v.detach().contiguous().cpu() for k, v in vision.state_dict().items()}
        state |= {f"projector.{k}": v.detach().contiguous().cpu() for k, v in projector.state_dict().items()}
        save_file(state, str(tmp / "vision.safetensors"))
        llm.save_pretrained(str(tmp / "llm"))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        info = {"format": FORMAT, "version": VERSION, "architecture": architecture, **provenance}
        (tmp / "backbone.json").write_text(json.dumps(info, indent=2))

    return replace_folder(folder, write)
