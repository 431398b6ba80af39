"""`compare(..., backend="ray")` on a local Ray instance: (agent, task, episode shard) Ray tasks give
the results one process gives for the same seeds."""
import os
import sys
from functools import partial
from pathlib import Path

import pytest

from vla_agents.eval import compare
from vla_agents.eval.ray_backend import require_ray, shards

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'vla-agents[ray]' (it is in [dev])")

from test_eval import ReachEnv, TinyAgent, missing_checkpoint  # noqa: E402 - after the skip

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def local_ray():
    """Two CPUs, no dashboard; workers import this test package's helpers from tests/. On a busy
    machine Ray's agents take longer to start than its default 15 s wait, so it waits up to 2 min."""
    address = os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()
    if address is not None:
        os.environ["RAY_ADDRESS"] = address


def outcomes(result):
    return {(row.name, task): [(ep.seed, ep.success, ep.length, ep.sum_reward, ep.instruction, len(ep.chunk_latency_s), ep.error)
                               for ep in report.episodes]
            for row in result.rows for task, report in row.reports.items()}


def test_ray_shards_give_the_results_of_one_process_for_the_same_seeds(local_ray, tmp_path):
    envs = {"reach/a": partial(ReachEnv, offset=0), "reach/b": partial(ReachEnv, offset=1)}
    agents = [("fast", partial(TinyAgent, speed=1.0)), ("slow", partial(TinyAgent, speed=0.5))]
    local = compare(agents, envs, episodes=5, seed=100, progress=False)
    on_ray = compare(agents, envs, episodes=5, seed=100, progress=False, backend="ray", shard_episodes=2,
                     video_dir=tmp_path)
    assert outcomes(on_ray) == outcomes(local)
    # Shards of 2, 2, 1 episodes: episode i keeps seed 100 + i and its video name wherever it ran.
    assert [ep.seed for ep in on_ray.rows[0].reports["reach/b"].episodes] == [100, 101, 102, 103, 104]
    assert sorted(p.name.split("--")[0] for p in (tmp_path / "slow" / "reach_a").iterdir()) == [f"episode={i}" for i in range(5)]
    slow = on_ray.rows[1].reports["reach/a"].episodes
    assert [ep.success for ep in slow] == [True, False, True, True, False]  # targets 3, 4, 2, 3, 4

    broken = compare([("broken", missing_checkpoint)], envs, episodes=3, progress=False, backend="ray", shard_episodes=2)
    assert [(agent, task) for agent, task, _ in broken.failures] == [("broken", "reach/a"), ("broken", "reach/b")]
    assert broken.failures[0][2].startswith("FileNotFoundError: no config.json in runs/missing")


def test_shards_cover_every_episode_once_and_a_missing_ray_is_named(monkeypatch):
    assert shards(5, 2) == [(0, 2), (2, 2), (4, 1)] and shards(3, 10) == [(0, 3)]
    with pytest.raises(ValueError, match="shard_episodes must be at least 1"):
        shards(3, 0)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'vla-agents\[ray\]'"):
        require_ray()
