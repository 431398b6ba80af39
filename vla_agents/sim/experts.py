"""Scripted experts for the embedded suite: waypoint controllers over privileged simulator state.

They produce the demonstrations tiny policies are trained on, so they follow the agent API
(`reset()`, `act(obs)`) and emit the same 7-D LIBERO actions a policy would.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vla_agents.sim.embedded import EmbeddedEnv

OPEN, CLOSE = -1.0, 1.0
POS_SCALE = 0.05  # m of OSC target displacement per unit of action (robosuite OSC_POSE)
ARRIVAL_TOLERANCE = 0.015  # m: how near the place counts as arrived when letting go on arrival


@dataclass
class Waypoint:
    goal: Callable[[], np.ndarray]  # end-effector goal, re-read every step (cubes may move)
    gripper: float
    hold: int = 0  # extra steps to stay once reached (time for the fingers to close or open)
    about: str | None = None  # the cube this stretch of the plan is about (None: the task's target)
    tolerance: float | None = None  # how near counts as reached (None: the expert's tolerance)


class ScriptedExpert:
    """Approach above the target, descend, grasp, lift; for stacking, carry it over the base,
    lower, release and retreat.

    `let_go_on_arrival`: open as soon as the held cube is within `ARRIVAL_TOLERANCE` of the place,
    instead of holding it closed there for 2 more steps. With DART noise the closed hold labels many
    frames at the place "closed" and others "open" for the same scene, and a cloned policy learns to
    hover there holding the cube; letting go on arrival makes the release one clear decision."""

    policy_name = "scripted-expert"

    def __init__(self, env: EmbeddedEnv | None = None, gain: float = 1.5, tolerance: float = 0.01,
                 let_go_on_arrival: bool = False):
        self.env = env.unwrapped if env is not None else None
        self.gain, self.tolerance, self.let_go_on_arrival = gain, tolerance, let_go_on_arrival
        self.reset()

    def bind(self, env: EmbeddedEnv) -> EmbeddedEnv:
        """Act in `env` from now on (the expert reads its privileged state); returns `env`."""
        self.env = env.unwrapped
        self.reset()
        return env

    def reset(self) -> None:
        self.plan: list[Waypoint] | None = None
        self.index = 0
        self.steps_at_goal = 0

    def _make_plan(self) -> list[Waypoint]:
        sim, env = self.env.sim, self.env
        h = sim.cube_half_size
        grasp_at = sim.cube_pos(env.target) + [0, 0, -0.005]

        def above(color: str, dz: float) -> Callable[[], np.ndarray]:
            return lambda: sim.cube_pos(color) + [0, 0, dz]

        plan = [
            Waypoint(above(env.target, 0.08), OPEN),
            Waypoint(above(env.target, -0.005), OPEN, hold=1),
            Waypoint(lambda: grasp_at, CLOSE, hold=6),
        ]
        if env.spec_.kind == "lift":
            return plan + [Waypoint(lambda: grasp_at + [0, 0, 0.12], CLOSE, hold=10**6)]
        place = sim.cube_pos(env.base) + [0, 0, 2 * h + 0.006]  # the base stays put
        arrive = (Waypoint(lambda: place, CLOSE, about=env.base, tolerance=ARRIVAL_TOLERANCE) if self.let_go_on_arrival
                  else Waypoint(lambda: place, CLOSE, hold=2, about=env.base))
        return plan + [  # once the target is held, where it goes is read from the base
            Waypoint(lambda: grasp_at + [0, 0, 0.10], CLOSE, about=env.base),
            Waypoint(lambda: place + [0, 0, 0.05], CLOSE, about=env.base),
            arrive,
            Waypoint(lambda: place, OPEN, hold=6, about=env.base),
            Waypoint(lambda: place + [0, 0, 0.08], OPEN, hold=10**6, about=env.base),
        ]

    def focus(self) -> str:
        """The cube the current waypoint is about: the named cube until it is held, then (stacking)
        the base it is carried to. Demonstrations record it as the grounding target, so the policy is
        taught to read the object its next actions depend on."""
        about = self.plan[self.index].about if self.plan is not None else None
        return about or self.env.target

    def act(self, obs=None) -> np.ndarray:
        if self.env is None:
            raise RuntimeError("ScriptedExpert has no environment: pass env= or call bind(env) first")
        if self.plan is None:
            self.plan = self._make_plan()
        waypoint = self.plan[self.index]
        error = waypoint.goal() - self.env.sim.eef_pos()
        if np.linalg.norm(error) < (waypoint.tolerance or self.tolerance):
            self.steps_at_goal += 1
            if self.steps_at_goal > waypoint.hold and self.index < len(self.plan) - 1:
                self.index, self.steps_at_goal = self.index + 1, 0
        action = np.zeros(7)
        action[:3] = np.clip(self.gain * error / POS_SCALE, -1.0, 1.0)
        action[6] = waypoint.gripper
        return action.astype(np.float32)
