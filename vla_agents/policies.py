"""Policy registry: a name and a scale select a YAML recipe in `policies/`; the recipe holds every
hyperparameter, and one builder per policy turns it into a model."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
from torch import nn

from vla_agents.models.backbones import build_backbone
from vla_agents.models.blocks import ACTION_LOSSES
from vla_agents.models.deepvision import build_deepvision
from vla_agents.models.dtp import DTP
from vla_agents.models.focusvla import build_focusvla
from vla_agents.models.oft import OFTPolicy
from vla_agents.models.vat import build_vat
from vla_agents.models.vla_adapter import VLAAdapterPolicy
from vla_agents.resources import resource_dir

SCALES = ("tiny", "paper")


def _oft(recipe: dict[str, Any], hf_configs: dict[str, Any] | None) -> nn.Module:
    return OFTPolicy(build_backbone(recipe, hf_configs), recipe["chunk"], recipe["action_dim"], recipe["proprio_dim"])


def _vla_adapter(recipe: dict[str, Any], hf_configs: dict[str, Any] | None) -> nn.Module:
    return VLAAdapterPolicy(
        build_backbone(recipe, hf_configs), recipe["chunk"], recipe["action_dim"], recipe["proprio_dim"],
        num_action_queries=recipe["num_action_queries"], policy_heads=recipe["policy_heads"],
        gate_mode=recipe["gate_mode"], latent_noise_std=recipe["latent_noise_std"], attention_from=recipe["attention_from"],
        variant=recipe.get("variant", "original"),  # recipes saved before the key existed were the original block
    )


BUILDERS: dict[str, Callable[[dict[str, Any], dict[str, Any] | None], nn.Module]] = {
    "oft": _oft,
    "vla_adapter": _vla_adapter,
    "focusvla": build_focusvla,
    "vat": build_vat,
    "deepvision": build_deepvision,
}


# Training-free wrappers around a built agent, named as a suffix: "oft+dtp", "vla_adapter+dtp".
WRAPPERS: dict[str, Callable[..., Any]] = {"dtp": DTP}


def recipes_dir() -> Path:
    return resource_dir("policies")


def list_policies() -> list[str]:
    return sorted(BUILDERS)


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
    if policy not in BUILDERS:
        raise ValueError(f"unknown policy {policy!r}; available: {', '.join(list_policies())}")


def load_recipe(policy: str, scale: str = "tiny", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    check_policy(policy)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; available: {', '.join(SCALES)}")
    path = recipes_dir() / f"{policy}-{scale}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    recipe = yaml.safe_load(path.read_text())
    unknown = sorted(set(overrides or {}) - set(recipe))
    if unknown:
        raise ValueError(f"unknown recipe keys for {path.name}: {', '.join(unknown)}")
    recipe = {**recipe, **(overrides or {})}
    check_recipe(recipe)
    return recipe


def check_recipe(recipe: Mapping[str, Any]) -> None:
    """The recipe keys the agent itself reads (each policy builder reads its own): a missing or
    malformed one, or `n_open_loop` outside 1..chunk, fails when the recipe is loaded (and when a
    saved agent's is), not at the agent's first `act`."""

    def need(key: str, ok: Any, expected: str) -> None:
        if key not in recipe:
            raise ValueError(f"recipe has no key {key!r}; expected {expected}")
        if not ok(recipe[key]):
            raise ValueError(f"recipe key {key!r} is {recipe[key]!r}; expected {expected}")

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    for key in ("chunk", "action_dim", "image_size"):
        need(key, count, "an integer >= 1")
    need("proprio_dim", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
         "an integer >= 0 (0: a benchmark with no robot state, such as SIMPLER's Google Robot)")
    need("views", lambda v: isinstance(v, list) and v and all(isinstance(x, str) for x in v), "a list of view names")
    need("prompt_template", lambda v: isinstance(v, str) and "{instruction}" in v, "a string with {instruction} in it")
    if recipe.get("temporal_ensemble"):
        need("ensemble_k", lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0")
    else:
        need("n_open_loop", lambda v: count(v) and v <= recipe["chunk"], f"an integer from 1 to chunk ({recipe['chunk']})")


def build_model(recipe: dict[str, Any], hf_configs: dict[str, Any] | None = None) -> nn.Module:
    check_policy(recipe["policy"])
    loss_kind = recipe.get("loss", "l1")  # recipes saved before the key existed trained with L1
    if loss_kind not in ACTION_LOSSES:
        raise ValueError(f"recipe key loss: unknown action loss {loss_kind!r}; expected one of {', '.join(ACTION_LOSSES)}")
    model = BUILDERS[recipe["policy"]](recipe, hf_configs)
    model.loss_kind = loss_kind  # the one place training reads it from (`train bc`, RL's BC term, `model.loss`)
    return model
