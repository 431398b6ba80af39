"""Saving never loses data: "." and its parents are refused, a kill at any step of a folder swap
leaves a loadable copy and the user's files, and a full disk says so and keeps the previous copy."""
from __future__ import annotations

import errno
import os
import re
import shutil
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL, stats
from vla_agents.agent import load_agent, make_agent



def raw_obs() -> dict:
    rng = np.random.default_rng(0)
    return {"agentview_image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
            "robot0_eye_in_hand_image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
            "robot0_eef_pos": np.zeros(3), "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
            "robot0_gripper_qpos": np.zeros(2), "language_instruction": "pick up the red cube"}


class Killed(BaseException):
    """A kill -9: nothing after it runs, not even the writer's clean-up."""


class KillAt:
    """Kill the process at its k-th filesystem step (a rename or a tree removal), and make every later
    step fail too, as a dead process takes none."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, k: int) -> None:
        self.k, self.calls = k, 0
        for module, name in ((os, "rename"), (os, "replace"), (shutil, "rmtree")):
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name)))

    def _wrap(self, step):
        def killable(*args, **kwargs):
            self.calls += 1
            if self.calls >= self.k:
                raise Killed(f"killed at step {self.calls}")
            return step(*args, **kwargs)
        return killable


def folder_with_user_files(path: Path, agent) -> None:
    agent.save_pretrained(path)
    (path / "notes.txt").write_text("mine")
    (path / "checkpoint").mkdir()
    (path / "checkpoint" / "trainer_state.pt").write_text("state")


def test_save_pretrained_refuses_the_current_directory_and_its_parents(tmp_path, monkeypatch) -> None:
    work = tmp_path / "t"
    (work / "d").mkdir(parents=True)
    (work / "a").write_text("a")
    monkeypatch.chdir(work)
    agent = make_agent("oft", stats=stats(), **SMALL)
    for target in (".", "..", str(work), "d/.."):
        with pytest.raises(ValueError, match="refusing to write into .*: it is the current directory or one of its parents"):
            agent.save_pretrained(target)
    assert sorted(p.name for p in work.iterdir()) == ["a", "d"] and (work / "a").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_a_kill_at_every_step_of_a_folder_swap_leaves_a_loadable_agent_and_the_users_files(tmp_path, monkeypatch) -> None:
    old, new = make_agent("oft", stats=stats(seed=0), **SMALL), make_agent("oft", stats=stats(seed=1), **SMALL)
    expected = {"old": old.act_chunk(raw_obs()), "new": new.act_chunk(raw_obs())}
    out = tmp_path / "runs" / "out"

    steps = 0
    for k in range(1, 100):  # until a save runs to the end: every step of the swap gets its kill
        if out.parent.exists():
            shutil.rmtree(out.parent)
        folder_with_user_files(out, old)
        with monkeypatch.context() as patch:
            killer = KillAt(patch, k)
            try:
                new.save_pretrained(out)
                done = True
            except Killed:
                done = False
        steps = max(steps, killer.calls)
        interrupted = any(p.name in (".out.new", ".out.old") for p in out.parent.iterdir())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            acted = load_agent(out).act_chunk(raw_obs())  # a reader finds a complete copy, changing nothing
        assert any(np.array_equal(acted, chunk) for chunk in expected.values()), f"kill at step {k}"
        assert interrupted == any("was interrupted" in str(w.message) for w in caught)

        new.save_pretrained(out)  # the next save finishes the interrupted one first
        assert sorted(p.name for p in out.parent.iterdir()) == ["out"], f"leftovers after a kill at step {k}"
        assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoint" / "trainer_state.pt").is_file()
        np.testing.assert_array_equal(load_agent(out).act_chunk(raw_obs()), expected["new"])
        if done:
            break
    assert steps >= 5  # staging -> .new, out -> .old, .new -> out, two entries back, .old removed


def test_a_full_disk_during_a_save_says_so_and_keeps_the_previous_copy(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    old = make_agent("oft", stats=stats(seed=0), **SMALL)
    old.save_pretrained(out)
    before = old.act_chunk(raw_obs())

    def full_disk(*args, **kwargs):  # what torch.save and safetensors say when the device fills up
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1472 vs 1360")

    monkeypatch.setattr("vla_agents.agent.save_file", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: namedtuple("usage", "total used free")(10**9, 10**9, 0))
    with pytest.raises(OSError, match=rf"no space left on the device of {out} while writing it .*unexpected pos") as error:
        make_agent("oft", stats=stats(seed=1), **SMALL).save_pretrained(out)
    assert error.value.errno == errno.ENOSPC
    np.testing.assert_array_equal(load_agent(out).act_chunk(raw_obs()), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_leftovers_of_the_previous_swap_scheme_are_recovered(tmp_path) -> None:
    """vla-agents 0.1 moved the folder's other entries into `.out.tmp-<id>` with the new agent, then
    renamed `out` to `.out.old-<id>`; killed before its last rename, `out` was gone."""
    from vla_agents.atomic import recover

    old, new = make_agent("oft", stats=stats(seed=0), **SMALL), make_agent("oft", stats=stats(seed=1), **SMALL)
    old.save_pretrained(tmp_path / ".out.old-1a2b3c4d")
    new.save_pretrained(tmp_path / ".out.tmp-5e6f7a8b")
    (tmp_path / ".out.tmp-5e6f7a8b" / "notes.txt").write_text("mine")
    (tmp_path / ".checkpoint.tmp-9c0d1e2f").mkdir()  # an unfinished checkpoint, beside a complete one
    (tmp_path / "checkpoint").mkdir()
    recover(tmp_path / "out")
    recover(tmp_path / "checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "out"]
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    np.testing.assert_array_equal(load_agent(tmp_path / "out").act_chunk(raw_obs()), new.act_chunk(raw_obs()))


def test_an_atomic_file_replaces_the_old_one_only_when_complete(tmp_path) -> None:
    from vla_agents.atomic import AtomicFile

    path = tmp_path / "log.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), AtomicFile(path) as file:
        file.tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["log.json"]
    file = AtomicFile(tmp_path / "pending.mp4", suffix=".mp4")
    assert file.tmp.name.startswith(".pending.mp4.tmp-") and file.tmp.suffix == ".mp4"
    file.tmp.write_text("new")
    file.path = tmp_path / "success.mp4"  # named once the outcome is known
    assert file.commit().read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["log.json", "success.mp4"]


def test_every_file_the_package_writes_in_place_goes_through_atomic() -> None:
    """One write-then-rename helper: no module renames files onto their final names itself."""
    root = Path(__file__).resolve().parents[1] / "vla_agents"
    own = [f"{p.relative_to(root)}:{n}" for p in root.rglob("*.py") if p.name != "atomic.py"
           for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"os\.(replace|rename)\(|tmp\.(replace|rename)\(", line)]
    assert own == []
