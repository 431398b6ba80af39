"""Configuration reaches the code checked: a recipe is parsed into typed parts and validated when it is
loaded (from YAML or from a saved agent), the CLI's `--set` overrides read their values as the recipes
do, and an RL run is one `RLConfig` checked when made."""
from __future__ import annotations

import dataclasses

import pytest

from vla_agents.cli import build_parser, recipe_overrides
from vla_agents.policies import POLICIES, list_policies, load_recipe, parse_recipe, recipe_keys
from vla_agents.train.rl import RLConfig


@pytest.mark.parametrize("n_open_loop", [0, 9])
def test_n_open_loop_outside_one_to_chunk_fails_when_the_recipe_is_loaded(n_open_loop: int) -> None:
    with pytest.raises(ValueError, match=r"'n_open_loop' is .*; expected an integer from 1 to chunk \(8\)"):
        load_recipe("oft", "tiny", {"n_open_loop": n_open_loop})


def test_an_unknown_override_is_named() -> None:
    with pytest.raises(ValueError, match="unknown recipe keys for oft-tiny.yaml: n_open_loops"):
        load_recipe("oft", "tiny", {"n_open_loops": 4})


def test_set_flags_read_yaml_values_and_update_the_json_overrides() -> None:
    args = build_parser().parse_args([
        "train", "bc", "--policy", "focusvla", "--data", "x.hdf5", "--out", "o",
        "--overrides", '{"loss": "mse", "chunk": 4}', "--set", "loss=l1", "--set", "topk=null",
        "--set", "agvp_layers=[0, 1]", "--set", "dtp.tau=0.5"])
    assert recipe_overrides(args) == {"loss": "l1", "chunk": 4, "topk": None, "agvp_layers": [0, 1], "dtp": {"tau": 0.5}}
    assert recipe_overrides(build_parser().parse_args(["train", "bc", "--policy", "oft", "--data", "x", "--out", "o"])) is None
    with pytest.raises(ValueError, match="--set takes KEY=VALUE, got 'loss'"):
        recipe_overrides(build_parser().parse_args(["train", "bc", "--policy", "oft", "--data", "x", "--out", "o",
                                                    "--set", "loss"]))


@pytest.mark.parametrize("change, error", [
    ({"reward": "dense"}, "unknown reward 'dense'; expected one of"),
    ({"mode": "offline"}, "unknown mode 'offline'"),
    ({"save_every": -1}, "save_every is a period in env steps"),
    ({"scale": 0.0}, "scale .* must be > 0"),
])
def test_rl_config_is_checked_when_made(change: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RLConfig("runs/agent", "embedded/lift", **change)


def test_rl_config_normalises_what_it_is_given() -> None:
    from pathlib import Path

    config = RLConfig(Path("runs/agent"), "embedded/lift", env_kwargs=None, state_keys=("object-state",))
    assert config.agent_dir == "runs/agent" and config.env_kwargs == {} and config.state_keys == ["object-state"]


@pytest.mark.parametrize("scale", ["tiny", "paper"])
@pytest.mark.parametrize("policy", list_policies())
def test_every_recipe_file_parses_into_its_policys_parts_and_back(policy: str, scale: str) -> None:
    """Each YAML key lands in exactly one part, and the flat form an agent saves parses to the same recipe."""
    recipe = load_recipe(policy, scale)
    assert type(recipe.model) is POLICIES[policy].config
    parts = [recipe.backbone, recipe.model, recipe.agent, recipe.training]
    names = [f.name for part in parts for f in dataclasses.fields(part)]
    assert len(names) == len(set(names))  # no key in two parts
    assert recipe_keys(policy, scale) <= {"policy", "scale", *names}
    assert parse_recipe(recipe.to_dict()) == recipe


@pytest.mark.parametrize("change, error", [
    ({"chunks": 8}, r"unknown recipe key\(s\) chunks; a oft recipe has .*action_dim"),
    ({"gate": "element"}, r"unknown recipe key\(s\) gate"),  # FocusVLA's key, not OFT's
    ({"image_size": None}, r"recipe key 'image_size' is None; expected an integer"),
    ({"loss": "huber"}, r"recipe key 'loss' is 'huber'; expected one of 'l1', 'mse'"),
    ({"views": "agentview"}, r"recipe key 'views' is 'agentview'; expected a list of a string"),
    ({"temporal_ensemble": 1}, r"recipe key 'temporal_ensemble' is 1; expected true/false"),
    ({"lr": "fast"}, r"recipe key 'lr' is 'fast'; expected a number"),
    ({"prompt_template": "Do it."}, r"recipe key 'prompt_template' is 'Do it.'; expected a string with \{instruction\} in it"),
])
def test_a_bad_saved_recipe_is_named_with_what_was_expected(change: dict, error: str) -> None:
    flat = {**load_recipe("oft", "tiny").to_dict(), **change}
    with pytest.raises(ValueError, match=f"config.json: {error}"):
        parse_recipe(flat, "config.json")


def test_missing_keys_are_named_and_absent_defaults_come_from_the_dataclasses() -> None:
    flat = load_recipe("vla_adapter", "tiny").to_dict()
    with pytest.raises(ValueError, match=r"the recipe has no key\(s\) chunk, num_action_queries; expected every key "
                                         r"of policies/vla_adapter-tiny.yaml"):
        parse_recipe({k: v for k, v in flat.items() if k not in ("chunk", "num_action_queries")})
    older = parse_recipe({k: v for k, v in flat.items() if k not in ("variant", "loss", "llm_max_positions")})
    assert (older.model.variant, older.training.loss, older.backbone.llm_max_positions) == ("original", "l1", 2048)


def test_an_unknown_policy_is_named() -> None:
    with pytest.raises(ValueError, match="recipe key 'policy' is 'octo'; expected one of deepvision, focusvla"):
        parse_recipe({"policy": "octo"})
