"""vla_agents.eval.outcomes: how episodes end. The stack failure that picked the red cube up and never
placed it must not be counted as lifting the wrong cube, and the counts follow what the env reported
at every step, not only the last."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from vla_agents.eval.outcomes import OUTCOMES, episode_outcome, evaluate_outcomes


@pytest.mark.parametrize(("success", "error", "lifted", "expected"), [
    (False, "RuntimeError: boom", {"red"}, "error"),
    (True, None, {"red"}, "success"),
    (False, None, {"red", "green"}, "target lifted, not done"),
    (False, None, {"maroon"}, "other cube lifted"),
    (False, None, set(), "nothing lifted"),
])
def test_episode_outcome(success, error, lifted, expected):
    assert episode_outcome(success, error, lifted, "red") == expected
    assert expected in OUTCOMES


class ScriptedCubes(gym.Env):
    """Seed s: lifts the cubes of SCRIPT[s] at step 1 only (dropped again at step 2), succeeds at step 3
    when SCRIPT says so."""

    SCRIPT = {0: ((), False), 1: (("red",), True), 2: (("red",), False), 3: (("green",), False)}
    observation_space = gym.spaces.Dict({"state": gym.spaces.Box(0, 1, (1,))})
    action_space = gym.spaces.Box(-1, 1, (1,))

    def __init__(self, report_lifted: bool = True) -> None:
        self.report_lifted = report_lifted

    def reset(self, *, seed=None, options=None):
        self.cubes, self.succeeds = self.SCRIPT[seed]
        self.t = 0
        return {"state": np.zeros(1, np.float32)}, self.info(False)

    def info(self, success: bool) -> dict:
        lifted = list(self.cubes) if self.t == 1 else []
        return {"success": success, "target": "red", **({"lifted": lifted} if self.report_lifted else {})}

    def step(self, action):
        self.t += 1
        success = self.succeeds and self.t == 3
        return {"state": np.zeros(1, np.float32)}, 0.0, success, self.t >= 4, self.info(success)


class Zero:
    def reset(self) -> None:
        pass

    def act(self, obs):
        return np.zeros(1, np.float32)


def test_evaluate_outcomes_counts_cubes_lifted_at_any_step() -> None:
    report, counts = evaluate_outcomes(Zero(), ScriptedCubes, 4, seed=0, progress=False)
    assert [e.success for e in report.episodes] == [False, True, False, False]
    assert counts == {"success": 1, "target lifted, not done": 1, "other cube lifted": 1, "nothing lifted": 1, "error": 0}


def test_evaluate_outcomes_refuses_a_task_that_reports_no_lifted_cubes() -> None:
    with pytest.raises(ValueError, match=r"reports no info\['lifted'\]"):
        evaluate_outcomes(Zero(), lambda: ScriptedCubes(report_lifted=False), 1, seed=0, progress=False)
