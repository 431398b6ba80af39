"""Policy registry: a name and a scale select a YAML recipe in `policies/`, which `Recipe.parse`
(`vla_agents.recipe`) checks into typed parts; each registered policy names the part only it reads
(its config dataclass, beside its model) and the builder that turns a recipe into its model."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
from torch import nn

from vla_agents.models.deepvision import DeepVisionConfig, build_deepvision
from vla_agents.models.dtp import DTP
from vla_agents.models.focusvla import FocusVLAConfig, build_focusvla
from vla_agents.models.oft import OFTConfig, build_oft
from vla_agents.models.vat import VATConfig, build_vat
from vla_agents.models.vla_adapter import VLAAdapterConfig, build_vla_adapter
from vla_agents.recipe import PolicyConfig, Recipe
from vla_agents.resources import resource_dir

SCALES = ("tiny", "paper")


@dataclass(frozen=True)
class PolicyEntry:
    """A registered policy: the recipe part only it reads, and the builder that turns a recipe into its model."""

    config: type[PolicyConfig]
    build: Callable[[Recipe, dict[str, Any] | None], nn.Module]


POLICIES: dict[str, PolicyEntry] = {
    "oft": PolicyEntry(OFTConfig, build_oft),
    "vla_adapter": PolicyEntry(VLAAdapterConfig, build_vla_adapter),
    "focusvla": PolicyEntry(FocusVLAConfig, build_focusvla),
    "vat": PolicyEntry(VATConfig, build_vat),
    "deepvision": PolicyEntry(DeepVisionConfig, build_deepvision),
}


# Training-free wrappers around a built agent, named as a suffix: "oft+dtp", "vla_adapter+dtp".
WRAPPERS: dict[str, Callable[..., Any]] = {"dtp": DTP}


def recipes_dir() -> Path:
    return resource_dir("policies")


def list_policies() -> list[str]:
    return sorted(POLICIES)


def split_name(policy: str, scale: str) -> tuple[str, str]:
    """Accept "oft" + scale, or the recipe's own name "oft-tiny"."""
    for s in SCALES:
        if policy.endswith(f"-{s}"):
            return policy[: -len(s) - 1], s
    return policy, scale


def split_wrapper(policy: str) -> tuple[str, str | None]:
    """"oft+dtp" -> ("oft", "dtp"); a plain name -> (name, None)."""
    base, plus, wrapper = policy.partition("+")
    if plus and wrapper not in WRAPPERS:
        raise ValueError(f"unknown wrapper {wrapper!r} in {policy!r}; available: {', '.join(sorted(WRAPPERS))}")
    return base, wrapper or None


def load_wrapper_recipe(wrapper: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`policies/<wrapper>.yaml` updated by the overrides that name its keys, and the remaining
    overrides (those belong to the base policy's recipe)."""
    settings = yaml.safe_load((recipes_dir() / f"{wrapper}.yaml").read_text())
    mine = {k: v for k, v in overrides.items() if k in settings}
    return {**settings, **mine}, {k: v for k, v in overrides.items() if k not in settings}


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; available: {', '.join(list_policies())}")


def load_recipe(policy: str, scale: str = "tiny", overrides: dict[str, Any] | None = None) -> Recipe:
    """`policies/<policy>-<scale>.yaml` with `overrides` (flat keys) applied, checked (`Recipe.parse`)."""
    check_policy(policy)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; available: {', '.join(SCALES)}")
    path = recipes_dir() / f"{policy}-{scale}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    flat = yaml.safe_load(path.read_text())
    unknown = sorted(set(overrides or {}) - set(flat))  # a key the file lacks is one this policy does not read
    if unknown:
        raise ValueError(f"unknown recipe keys for {path.name}: {', '.join(unknown)}")
    return parse_recipe({**flat, **(overrides or {})}, path.name)


def recipe_keys(policy: str, scale: str = "tiny") -> set[str]:
    """The keys of the policy's recipe file: those overrides may set (VAT's has no language-model keys)."""
    check_policy(policy)
    return set(yaml.safe_load((recipes_dir() / f"{policy}-{scale}.yaml").read_text()))


def parse_recipe(flat: Mapping[str, Any], source: str = "recipe") -> Recipe:
    """A flat recipe mapping (a YAML file's, a saved agent's) -> its checked `Recipe`, parts by policy."""
    policy = flat.get("policy")
    if policy not in POLICIES:
        raise ValueError(f"{source}: recipe key 'policy' is {policy!r}; expected one of {', '.join(list_policies())}")
    return Recipe.parse(flat, POLICIES[policy].config, source)


def build_model(recipe: Recipe, hf_configs: dict[str, Any] | None = None) -> nn.Module:
    """The recipe's policy model; with `hf_configs` (a saved agent's) every pretrained tower is rebuilt offline."""
    return POLICIES[recipe.policy].build(recipe, hf_configs)
