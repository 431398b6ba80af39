"""The command line explains itself: defaults in --help, --version, the policies with their wrappers,
and each environment with its description, Gymnasium id and whether its simulator is installed."""
import pytest

import vla_agents
from vla_agents.cli import main
from vla_agents.sim.embedded import load_suite


def run(capsys, *argv: str) -> str:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # --help and --version exit through argparse
        code = exit_.code
    assert code == 0
    return " ".join(capsys.readouterr().out.split())  # rich and argparse wrap lines


def test_help_shows_defaults_and_version_prints_the_package_version(capsys):
    assert run(capsys, "--version") == f"vla-agents {vla_agents.__version__}"
    help_text = run(capsys, "eval", "--help")
    for option, default in (("--episodes", 50), ("--seed", 1000), ("--n-envs", 1), ("--backend", "local"),
                            ("--overlay-scale", "episode"), ("--colormap", "inferno")):
        assert option in help_text and f"(default: {default})" in help_text.split(option, 2)[-1].split(" --")[0]
    assert "(default: None)" not in help_text
    assert "(default: 128)" in run(capsys, "collect", "--help") and "(default: 20)" in run(capsys, "compare", "--help")


def test_policies_lists_each_policy_and_the_wrappers_with_what_they_wrap(capsys):
    text = run(capsys, "policies")
    for policy in vla_agents.list_policies():
        assert f"│ {policy} │ tiny, paper │" in text
    wraps = text.split("<policy>+dtp")[1]
    assert "Distracting Token Pruning" in wraps and "Wraps deepvision, focusvla, oft, vla_adapter here." in wraps


def test_envs_shows_descriptions_gymnasium_ids_and_what_is_installed(capsys):
    text = run(capsys, "envs")
    for task, spec in load_suite().items():
        row = text.split(f"│ embedded/{task} ")[1]
        assert row.startswith(f"│ vla_agents/{task}-v0 │ {spec.max_episode_steps} │ yes │")
    assert " ".join(load_suite()["lift"].description.split()) in text
    assert "│ libero/libero_spatial/0..9 │ vla_agents/libero_spatial_task0..9-v0 │ 220 │ no │" in text
    assert "libero is not installed here: pip install 'vla-agents[libero]'" in text


@pytest.mark.parametrize("argv", [["eval", "--agent", "a", "--env", "embedded/lift", "--backend", "spark"],
                                  ["compare", "a", "--env", "embedded/lift", "--overlay-scale", "step"]])
def test_bad_choices_are_refused_with_the_allowed_ones(capsys, argv):
    with pytest.raises(SystemExit):
        main(argv)
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["eval", "--agent", "a", "--env", "embedded/lift", "--n-envs", "0"],
                                  ["eval", "--agent", "a", "--env", "embedded/lift", "--episodes", "-1"],
                                  ["compare", "a", "--env", "embedded/lift", "--backend", "ray", "--shard-episodes", "0"]])
def test_counts_below_one_are_refused_while_parsing(capsys, argv):
    """Before the (missing) agent folder is opened: that would exit 2 through main, not argparse."""
    with pytest.raises(SystemExit):
        main(argv)
    assert f"argument {argv[-2]}: must be at least 1, got {argv[-1]}" in capsys.readouterr().err
