"""embedded/pick_color_clutter (pick_color's three cubes among look-alike cubes and visual clutter) and
embedded/lift_clutter (lift plus clutter) and embedded/lift_lookalikes (lift's red cube among red look-alikes).
check_env and the scripted expert run in test_embedded_env.py with the other tasks."""
import numpy as np
import pytest

import vla_agents
from vla_agents.sim.embedded import load_suite
from vla_agents.sim.tabletop import COLORS

SPEC = load_suite()["pick_color_clutter"]
NAMED = ("red", "green", "blue")


@pytest.fixture(scope="module")
def env():
    env = vla_agents.make_env("embedded/pick_color_clutter", image_size=32)
    yield env
    env.close()


def rgba(env, obj) -> np.ndarray:
    model = env.sim.sim.model
    return np.array([model.geom_rgba[model.geom_name2id(g)] for g in obj.visual_geoms])


def test_scene_holds_the_declared_lookalikes_and_clutter(env):
    env.reset(seed=0)
    sim, model = env.sim, env.sim.sim.model
    assert SPEC.cubes == NAMED and SPEC.instruction == "pick up the {target} cube"
    assert sim.lookalike_colors == list(SPEC.scene["lookalikes"]) and len(sim.lookalike_colors) == 4
    assert set(sim.cubes) == {*NAMED, *sim.lookalike_colors}
    for color in sim.lookalike_colors:
        np.testing.assert_allclose(rgba(env, sim.cubes[color]), [COLORS[color]])
        near = min(np.linalg.norm(np.subtract(COLORS[color], COLORS[c])) for c in NAMED)
        assert near < 0.5, f"{color} is no look-alike of a named colour"
        assert sim.half_sizes[color] == SPEC.scene["lookalike_half_size"] < SPEC.scene["cube_half_size"]
    assert len(sim.clutter) == SPEC.scene["clutter"] == 6
    for obj, body in zip(sim.clutter, sim.clutter_body_ids):
        assert model.body_jntnum[body] == 0  # fixed: cannot be picked up
        geoms = [model.geom_name2id(g) for g in obj.visual_geoms]
        assert (model.geom_contype[geoms] == 0).all() and (model.geom_conaffinity[geoms] == 0).all()


def snapshot(env, seed: int) -> dict:
    obs, info = env.reset(seed=seed)
    sim = env.sim
    return {
        "cubes": np.array([sim.cube_pos(c) for c in sim.cubes]),
        "clutter": np.array([sim.sim.model.body_pos[b] for b in sim.clutter_body_ids]),
        "clutter_rgba": np.concatenate([rgba(env, obj) for obj in sim.clutter]),
        "image": obs["agentview_image"],
        "instruction": info["instruction"],
    }


def test_seeded_resets_reproduce_the_whole_scene(env):
    first, other, again = snapshot(env, 5), snapshot(env, 6), snapshot(env, 5)
    assert first["instruction"] == again["instruction"]
    for key in ("cubes", "clutter", "clutter_rgba", "image"):
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.allclose(first["cubes"], other["cubes"]) and not np.allclose(first["clutter"], other["clutter"])


def test_cubes_and_clutter_are_placed_apart(env):
    scene = SPEC.scene
    for seed in range(5):
        env.reset(seed=seed)
        cubes = np.array([env.sim.cube_pos(c)[:2] for c in env.sim.cubes])
        clutter = np.array([env.sim.sim.model.body_pos[b][:2] for b in env.sim.clutter_body_ids])
        gaps = np.linalg.norm(cubes[:, None] - cubes[None], axis=-1) + np.eye(len(cubes))
        assert gaps.min() >= scene["min_cube_distance"] - 1e-3 and np.abs(cubes).max() <= scene["placement_range"] + 1e-3
        near = np.linalg.norm(clutter[:, None] - np.concatenate([cubes, clutter])[None], axis=-1)
        near[:, len(cubes):] += np.eye(len(clutter))
        assert near.min() >= scene["clutter_distance"] - 1e-3 and np.abs(clutter).max() <= scene["clutter_range"]


def _lift(env, color: str, height: float = 0.1) -> None:
    sim = env.sim
    pos = sim.cube_pos(color) + [0, 0, height]
    sim.sim.data.set_joint_qpos(sim.cubes[color].joints[0], np.concatenate([pos, [1, 0, 0, 0]]))
    sim.sim.forward()


def test_the_instruction_names_only_the_target_and_only_it_counts(env):
    targets = set()
    for seed in range(12):
        _, info = env.reset(seed=seed)
        targets.add(info["target"])
        assert info["instruction"] == f"pick up the {info['target']} cube"
        others = set(env.sim.cubes) - {info["target"]}
        assert not others & set(info["instruction"].split())
    assert targets == set(NAMED)

    env.reset(seed=0)
    for color in set(env.sim.cubes) - {env.target}:  # every look-alike and the other named cubes
        _lift(env, color)
    assert not env.success()
    _lift(env, env.target)
    assert env.success()


def test_lift_clutter_is_lift_plus_clutter_only():
    """The DTP testbed for agents trained on lift: the same single cube and instruction, only visual clutter added."""
    lift, cluttered = load_suite()["lift"], load_suite()["lift_clutter"]
    assert (cluttered.cubes, cluttered.instruction, cluttered.max_episode_steps) == (lift.cubes, lift.instruction, lift.max_episode_steps)
    env = vla_agents.make_env("embedded/lift_clutter", image_size=32)
    env.reset(seed=0)
    assert set(env.sim.cubes) == {"red"} and env.sim.lookalike_colors == [] and len(env.sim.clutter) == 6
    env.close()


def test_lift_lookalikes_has_a_fixed_target_among_its_lookalikes():
    """DeepVision's testbed: lift's red cube and instruction, with graspable near-red cubes that do not count."""
    lift, spec = load_suite()["lift"], load_suite()["lift_lookalikes"]
    assert (spec.cubes, spec.max_episode_steps, spec.randomize_target) == (lift.cubes, lift.max_episode_steps, False)
    env = vla_agents.make_env("embedded/lift_lookalikes", image_size=32)
    for seed in range(3):
        _, info = env.reset(seed=seed)
        assert (info["target"], info["instruction"]) == ("red", "pick up the red cube")
    assert env.sim.lookalike_colors == ["maroon", "orange"] and len(env.sim.clutter) == 6
    assert all(env.sim.half_sizes[c] < env.sim.half_sizes["red"] for c in env.sim.lookalike_colors)
    _, _, _, _, info = env.step(np.zeros(7))
    assert info["lifted"] == []
    for color in env.sim.lookalike_colors:
        _lift(env, color)
    assert not env.success()
    _, _, terminated, _, info = env.step(np.zeros(7))
    assert info["lifted"] == ["maroon", "orange"] and not terminated
    _lift(env, "red")
    assert env.success()
    _, _, terminated, _, info = env.step(np.zeros(7))
    assert sorted(info["lifted"]) == ["maroon", "orange", "red"] and terminated and info["success"]
    env.close()
