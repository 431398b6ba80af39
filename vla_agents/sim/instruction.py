"""The language instruction as an observation that survives Gymnasium's vector envs.

Gymnasium's `AsyncVectorEnv` (with its default `shared_memory=True`) reads a `Text` observation out
of shared memory once, when it starts: every later batch repeats those first characters, 128 'a's
for our charset, and a VLA fed from it gets a garbage prompt without any error. `InstructionSpace`
is a `Text` space whose shared memory holds each instruction's Unicode code points and is read as a
live NumPy string array, so the real instructions arrive with every step:

    envs = gym.vector.AsyncVectorEnv([lambda: make_env("embedded/pick_color")] * 2)
    obs, info = envs.reset(seed=[0, 1])
    obs["language_instruction"]        # array(['pick up the green cube', 'pick up the red cube'])

`SyncVectorEnv` and `AsyncVectorEnv(shared_memory=False)` batch it as Gymnasium batches any `Text`:
a tuple of str. `info["instruction"]` carries it as well.
"""
from __future__ import annotations

import multiprocessing
from types import ModuleType

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory


class InstructionSpace(gym.spaces.Text):
    """A `Text` space that Gymnasium's shared-memory vector envs carry intact."""


def _as_strings(space: InstructionSpace, shared_memory) -> np.ndarray:
    """The shared int32 buffer viewed as one fixed-width string per env (UCS-4: one int per character)."""
    return np.frombuffer(shared_memory.get_obj(), dtype=np.dtype((np.str_, space.max_length)))


@create_shared_memory.register(InstructionSpace)
def _create(space: InstructionSpace, n: int = 1, ctx: ModuleType = multiprocessing):
    return ctx.Array(np.dtype(np.int32).char, n * space.max_length)


@read_from_shared_memory.register(InstructionSpace)
def _read(space: InstructionSpace, shared_memory, n: int = 1) -> np.ndarray:
    return _as_strings(space, shared_memory)[:n]


@write_to_shared_memory.register(InstructionSpace)
def _write(space: InstructionSpace, index: int, value: str, shared_memory) -> None:
    if len(value) > space.max_length:
        raise ValueError(f"instruction of {len(value)} characters exceeds the space's max_length {space.max_length}: {value!r}")
    _as_strings(space, shared_memory)[index] = value
