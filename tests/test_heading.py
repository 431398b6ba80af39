"""Which cube an agent goes for: the cube under the gripper when it first comes down or closes."""
from __future__ import annotations

import numpy as np

from vla_agents.eval.heading import cube_gone_for, cube_headed_for
from vla_agents.sim.embedded import EmbeddedEnv
from vla_agents.sim.experts import ScriptedExpert


def test_the_expert_goes_for_the_named_cube_where_its_clipped_first_action_points_elsewhere() -> None:
    env = EmbeddedEnv("pick_color", use_cameras=False)
    expert = ScriptedExpert(env)
    obs, _ = env.reset(seed=1005)  # a scene where the expert's first action is a diagonal nearer another cube
    to_cube = {c: (env.sim.cube_pos(c) - env.sim.eef_pos())[:2] for c in env.sim.colors}
    assert cube_headed_for(expert.act(obs)[:2], to_cube) != env.target
    expert.reset()
    assert cube_gone_for(expert.act, env, obs) == env.target
    for seed in (1000, 1001, 1002):
        obs, _ = env.reset(seed=seed)
        expert.reset()
        assert cube_gone_for(expert.act, env, obs) == env.target
    env.close()


def test_an_agent_going_for_another_cube_is_named_and_one_that_never_comes_down_is_none() -> None:
    env = EmbeddedEnv("pick_color", use_cameras=False)
    obs, _ = env.reset(seed=1000)
    named = env.target
    other = next(c for c in env.sim.colors if c != named)
    wrong = ScriptedExpert(env)
    env.target = other  # the expert's plan is made for the cube it reads here
    assert cube_gone_for(wrong.act, env, obs) == other
    env.target = named
    obs, _ = env.reset(seed=1001)
    up = np.array([0, 0, 1, 0, 0, 0, -1], np.float32)
    assert cube_gone_for(lambda o: up, env, obs, max_steps=10) is None
    env.close()
