"""Vector envs over the embedded suite keep each env's instruction; forking after rendering fails fast."""
import multiprocessing

import gymnasium as gym
import numpy as np
import pytest

import vla_agents  # noqa: F401 - registers the Gymnasium ids
from vla_agents.sim.embedded import claim_offscreen_rendering

# pick_color's instruction per reset seed (a single env gives these).
INSTRUCTIONS = {0: "pick up the green cube", 1: "pick up the blue cube", 4: "pick up the blue cube",
                5: "pick up the red cube"}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_envs_return_each_envs_real_instruction(mode):
    """Async with Gymnasium's default shared memory used to return 128 'a's for every instruction."""
    envs = gym.make_vec("vla_agents/pick_color-v0", num_envs=2, vectorization_mode=mode, use_cameras=False)
    try:
        obs, info = envs.reset(seed=[0, 1])
        assert list(obs["language_instruction"]) == list(info["instruction"]) == [INSTRUCTIONS[0], INSTRUCTIONS[1]]
        obs, *_ = envs.step(np.zeros((2, 7)))
        assert list(obs["language_instruction"]) == [INSTRUCTIONS[0], INSTRUCTIONS[1]]
        obs, _ = envs.reset(seed=[5, 4])
        assert list(obs["language_instruction"]) == [INSTRUCTIONS[5], INSTRUCTIONS[4]]
        assert all(isinstance(text, str) for text in obs["language_instruction"])
    finally:
        envs.close()


def _claim(errors) -> None:
    try:
        claim_offscreen_rendering()
    except RuntimeError as error:
        errors.put(str(error))


def test_a_process_forked_after_rendering_refuses_to_render_instead_of_hanging():
    claim_offscreen_rendering()  # this process renders (as AsyncVectorEnv's first, parent-side env does)
    errors = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_claim, args=(errors,))
    child.start()
    child.join(30)
    assert "context='forkserver'" in errors.get(timeout=5)
