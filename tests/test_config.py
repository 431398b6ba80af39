"""Configuration reaches the code checked: a recipe is validated when it is loaded, the CLI's `--set`
overrides read their values as the recipes do, and an RL run is one `RLConfig` checked when made."""
from __future__ import annotations

import pytest

from vla_agents.cli import build_parser, recipe_overrides
from vla_agents.policies import load_recipe
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
