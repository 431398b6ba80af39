"""Evaluation layer: videos with overlays, crash-tolerant evaluation, eval_info.json, Wilson
intervals and comparison tables, on a tiny real Gymnasium env that emits LIBERO-style raw obs."""
from __future__ import annotations

import csv
import io
import json
import math
from functools import partial
from pathlib import Path

import gymnasium as gym
import imageio
import numpy as np
import pytest
from PIL import Image
from rich.console import Console

import vla_agents
from vla_agents.cli import main
from vla_agents.eval import (ComparisonResult, compare, compose_frame, diff_interval, eval_info, evaluate, mcnemar_exact,
                             paired_diff_interval, render_table, run_episode, table_console, wilson_interval)
from vla_agents.types import AttentionMaps

SIZE = 64
MAX_STEPS = 6


class ReachEnv(gym.Env):
    """Move a scalar toward a seed-dependent target (2, 3 or 4); success when reached.

    Raw images are gray with a white block in the raw top-left corner, which policies (rotated
    180 degrees) see bottom-right. `crash_seed` makes `step` raise for that seed."""

    metadata = {"render_modes": [], "render_fps": 20}

    def __init__(self, offset: int = 0, crash_seed: int | None = None):
        image = gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self.observation_space = gym.spaces.Dict({
            "agentview_image": image,
            "robot0_eye_in_hand_image": image,
            "language_instruction": gym.spaces.Text(64),
        })
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.max_episode_steps = MAX_STEPS
        self.offset, self.crash_seed = offset, crash_seed

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_, self.pos, self.t = seed, 0.0, 0
        self.target = 2 + (seed + self.offset) % 3
        return self._obs(), {"success": False}

    def step(self, action):
        if self.seed_ == self.crash_seed:
            raise ValueError("simulator exploded")
        self.pos += float(action[0])
        self.t += 1
        success = self.pos >= self.target - 1e-6
        truncated = not success and self.t >= self.max_episode_steps
        return self._obs(), float(success), success, truncated, {"success": success}

    def _obs(self):
        raw = np.full((SIZE, SIZE, 3), 100, np.uint8)
        raw[:8, :8] = 255
        return {"agentview_image": raw, "robot0_eye_in_hand_image": raw.copy(), "robot0_eef_pos": np.zeros(3),
                "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]), "robot0_gripper_qpos": np.zeros(2),
                "language_instruction": "reach the target, please"}


class TinyAgent:
    """Queues `chunk` identical actions per model call; attention is hot in the policy view's bottom-left cell."""

    policy_name = "tiny"

    def __init__(self, speed: float = 1.0, chunk: int = 4, attention: bool = True, fail_on_episode: int | None = None):
        self.speed, self.chunk, self.attention, self.fail_on_episode = speed, chunk, attention, fail_on_episode
        self.model_calls, self.episode = 0, -1

    def num_parameters(self) -> int:
        return 1_234_567

    def reset(self) -> None:
        self.episode += 1
        self.queue: list[np.ndarray] = []
        self.steps = 0
        self.last_attention = None

    def act(self, obs: dict) -> np.ndarray:
        if self.episode == self.fail_on_episode and self.steps == 1:
            raise RuntimeError("boom")
        self.steps += 1
        if not self.queue:
            self.model_calls += 1
            self.queue = [np.array([self.speed, 0.0], np.float32)] * self.chunk
            if self.attention:
                heat = np.zeros((4, 4))
                heat[3, 0] = 1.0
                self.last_attention = AttentionMaps(heatmaps={"agentview": heat})
        return self.queue.pop()


def _read_video(path) -> list[np.ndarray]:
    with imageio.get_reader(path) as reader:
        return [np.asarray(frame) for frame in reader]


def test_rollout_video_carries_overlay_and_policy_orientation(tmp_path):
    pattern = tmp_path / "episode=0--success={success}--task={task}.mp4"
    hot = run_episode(ReachEnv(), TinyAgent(), seed=0, video_path=pattern, min_view_px=0)
    plain = run_episode(ReachEnv(), TinyAgent(attention=False), seed=0, video_path=tmp_path / "plain.mp4", min_view_px=0)
    assert hot.success and hot.length == 2 and hot.error is None
    assert hot.video_path == str(tmp_path / "episode=0--success=True--task=reach_the_target_please.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["plain.mp4", "episode=0--success=True--task=reach_the_target_please.mp4"])

    hot_frames, plain_frames = _read_video(hot.video_path), _read_video(plain.video_path)
    assert len(hot_frames) == hot.length + 1
    views = {"agentview": np.zeros((SIZE, SIZE, 3), np.uint8), "eye_in_hand": np.zeros((SIZE, SIZE, 3), np.uint8)}
    lines = ["a", "b", "c"]
    for frames, attention in ((hot_frames, AttentionMaps({"agentview": np.ones((4, 4))})), (plain_frames, None)):
        expected = compose_frame(views, attention, lines).shape  # the colour bar only where there is attention
        assert frames[0].shape == (expected[0] + expected[0] % 2, expected[1], 3)

    hot0, plain0 = hot_frames[0].astype(float), plain_frames[0].astype(float)
    # Rotated 180 degrees: the raw top-left marker is at the policy-view bottom-right.
    assert plain0[SIZE - 8 + 2:SIZE - 2, SIZE - 8 + 2:SIZE - 2].mean() > 200
    assert plain0[SIZE - 14:SIZE - 2, 2:14].mean() < 130
    # The heatmap is hot in agentview's bottom-left cell; elsewhere, and in the wrist view, the frame is as it was.
    assert np.abs(hot0[SIZE - 14:SIZE - 2, 2:14] - plain0[SIZE - 14:SIZE - 2, 2:14]).mean() > 40
    assert np.abs(hot0[24:40, 36:60] - plain0[24:40, 36:60]).mean() < 4  # up to H.264's rounding
    assert np.abs(hot0[24:SIZE, SIZE + 4:2 * SIZE - 4] - plain0[24:SIZE, SIZE + 4:2 * SIZE - 4]).mean() < 4
    # The last frame shows the final observation without a stale overlay.
    last = hot_frames[-1].astype(float)[SIZE - 14:SIZE - 2, 2:14]
    assert np.abs(last - plain0[SIZE - 14:SIZE - 2, 2:14]).mean() < 6


def test_index_page_shows_each_episodes_first_and_last_frames_outcome_and_instruction(tmp_path):
    from vla_agents.eval.index import first_and_last_frames, write_index

    report = evaluate(lambda: TinyAgent(speed=0.5), ReachEnv, episodes=3, progress=False, video_dir=tmp_path / "videos")
    page = write_index([report], tmp_path, labels=["tiny on reach"]).read_text()
    assert "tiny on reach: 2/3 successes" in page and page.count("reach the target, please") == 3
    assert page.count('class="ok">success') == 2 and page.count('class="fail">failure') == 1
    for episode in report.episodes:
        assert f'href="videos/{Path(episode.video_path).name}"' in page
    thumbs = sorted((tmp_path / "thumbs").iterdir())
    assert len(thumbs) == 6 and all(f'src="thumbs/{t.name}"' in page for t in thumbs)
    first, last = first_and_last_frames(report.episodes[2].video_path)
    assert not np.array_equal(first, last)  # the caption's step and outcome change
    thumb = np.asarray(Image.open(thumbs[4]))
    assert thumb.shape[1] == min(360, first.shape[1]) and thumb.shape[0] == first.shape[0] * thumb.shape[1] // first.shape[1]


def test_crashing_agent_and_env_are_recorded_and_evaluation_goes_on():
    report = evaluate(TinyAgent(fail_on_episode=1), ReachEnv, episodes=3, progress=False)
    ok0, bad, ok2 = report.episodes
    assert bad.error.startswith("RuntimeError: boom") and "act" in bad.error and bad.error_source == "agent"
    assert not bad.success and bad.length == 1
    assert ok0.error is None and ok2.error is None and ok0.success and ok2.success

    made = []

    def factory():
        made.append(ReachEnv(crash_seed=1))
        return made[-1]

    report = evaluate(TinyAgent, factory, episodes=3, progress=False)
    assert [ep.error_source for ep in report.episodes] == [None, "env", None]
    assert "ValueError: simulator exploded" in report.episodes[1].error
    assert len(made) == 2 and report.episodes[2].success


def lerobot_reader(info: dict) -> dict:
    """What a script written for `lerobot-eval`'s eval_info.json reads: per-episode lists per task."""
    per_task = {}
    for task in info["per_task"]:
        m = task["metrics"]
        per_task[f"{task['task_group']}/{task['task_id']}"] = {
            "success_rate": sum(m["successes"]) / len(m["successes"]), "mean_return": float(np.mean(m["sum_rewards"])),
            "best_reward": max(m["max_rewards"]), "videos": list(m["video_paths"])}
    overall = info["overall"]
    return {"per_task": per_task, "overall": (overall["pc_success"], overall["n_episodes"], overall["avg_sum_reward"])}


def test_eval_info_shape_and_latencies(tmp_path):
    report = evaluate(lambda: TinyAgent(speed=0.5, chunk=4), ReachEnv, episodes=3, seed=0,
                      progress=False, env_name="reach/target", video_dir=tmp_path)
    info = json.loads(json.dumps(report.to_eval_info()))
    assert set(info) == {"per_episode", "per_task", "per_group", "overall"}
    assert lerobot_reader(info) == {
        "per_task": {"reach/target": {"success_rate": 2 / 3, "mean_return": 2 / 3, "best_reward": 1.0,
                                      "videos": [ep.video_path for ep in report.episodes]}},
        "overall": (pytest.approx(200 / 3), 3, pytest.approx(2 / 3))}
    metrics = info["per_task"][0]["metrics"]
    assert metrics["successes"] == [True, True, False] and metrics["n_successes"] == 2
    assert metrics["sum_rewards"] == metrics["max_rewards"] == [1.0, 1.0, 0.0]
    assert [ep["seed"] for ep in info["per_episode"]] == [0, 1, 2]
    assert set(info["per_episode"][0]) == {"episode_ix", "sum_reward", "max_reward", "success", "seed", "length", "error",
                                           "instruction", "video_path"}
    assert info["per_episode"][2]["instruction"] == "reach the target, please"
    assert info["per_episode"][2]["video_path"].endswith("episode=2--success=False--task=reach_the_target_please.mp4")
    # speed 0.5 needs 4, 6, 8 steps for targets 2, 3, 4; the limit is 6.
    assert [ep["length"] for ep in info["per_episode"]] == [4, 6, 6]
    assert [ep["success"] for ep in info["per_episode"]] == [True, True, False]
    assert info["per_task"][0]["task_group"] == "reach" and info["per_task"][0]["task_id"] == "target"
    overall = info["overall"]
    for key in ("avg_sum_reward", "avg_max_reward", "pc_success", "n_episodes", "eval_s", "eval_ep_s", "video_paths",
                "step_ms_p50", "step_ms_p95", "chunk_ms_p50", "chunk_ms_p95", "mean_length", "n_successes"):
        assert key in overall
    assert overall["pc_success"] == pytest.approx(200 / 3) and overall["n_episodes"] == 3
    assert overall["mean_length"] == pytest.approx(16 / 3) and overall["avg_max_reward"] == pytest.approx(2 / 3)
    assert overall["step_ms_p50"] >= 0 and overall["chunk_ms_p95"] >= 0
    # One model call per 4 steps: chunk latencies only where the model ran.
    assert [len(ep.chunk_latency_s) for ep in report.episodes] == [1, 2, 2]
    assert [len(ep.step_latency_s) for ep in report.episodes] == [4, 6, 6]


def test_provenance_names_the_agent_code_envs_and_seeds():
    from vla_agents.agent import make_agent
    from vla_agents.eval.provenance import provenance, recipe_sha256

    agent = make_agent("oft+dtp", image_size=32, vit_depth=1, llm_layers=2, backbone_path=None)
    block = provenance(agent, "runs/oft", ["embedded/lift", "reach/target"], seed=1000, episodes=3, n_envs=2)
    info = json.loads(json.dumps(eval_info([evaluate(TinyAgent(), ReachEnv, episodes=1, progress=False)], block)))
    got = info["provenance"]
    assert (got["agent"], got["policy"], got["seeds"], got["n_envs"]) == ("runs/oft", "oft+dtp", [1000, 1001, 1002], 2)
    assert got["envs"] == [{"spec": "embedded/lift", "gym_id": "vla_agents/lift-v0"}, {"spec": "reach/target", "gym_id": None}]
    assert got["recipe_sha256"] == recipe_sha256(agent.recipe) != recipe_sha256(agent.recipe.replace(chunk=4, n_open_loop=4))
    assert got["dtp"]["tau"] == agent.model.tau and got["vla_agents_version"] == vla_agents.__version__
    assert got["git"] is None or len(got["git"]["commit"]) == 40


def test_wilson_and_newcombe_intervals():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    # Newcombe (1998), Table II example (h): 56/70 vs 48/80 -> 0.0524 to 0.3339.
    low, high = diff_interval(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mcnemar_exact_against_hand_computed_binomial_tails():
    assert mcnemar_exact(7, 1) == pytest.approx(2 * (1 + 8) / 2**8)  # 0.0703: P(<= 1 of 8 fair coins), both sides
    assert mcnemar_exact(1, 7) == mcnemar_exact(7, 1)
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 2**10)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0  # no evidence either way
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_exact(-1, 2)


def test_paired_interval_against_hand_computed_cases():
    # Hand-computed with Newcombe's paired formula: 36 both, 12 gained, 2 lost, 0 neither.
    low, high = paired_diff_interval(gained=12, lost=2, both=36, neither=0)
    assert (round(low, 4), round(high, 4)) == (0.0569, 0.3404)
    # Uncorrelated outcomes (phi = 0): the paired interval is the unpaired one.
    assert paired_diff_interval(1, 1, 1, 1) == pytest.approx(diff_interval(2, 4, 2, 4))
    # Identical outcomes at 50%: phi = 1 and the Wilson margins cancel, so nothing separates the agents.
    assert paired_diff_interval(0, 0, 25, 25) == pytest.approx((0.0, 0.0), abs=1e-12)
    # Pairing only narrows when outcomes correlate: 7 gained, 0 lost, 35 both, 8 neither.
    paired, unpaired = paired_diff_interval(7, 0, 35, 8), diff_interval(42, 50, 35, 50)
    assert unpaired[0] < 0 < paired[0] and paired[1] < unpaired[1]
    with pytest.raises(ValueError, match="non-negative"):
        paired_diff_interval(-1, 0, 3, 3)


def test_compare_table_json_and_csv(tmp_path):
    envs = {"reach/a": lambda: ReachEnv(offset=0), "reach/b": lambda: ReachEnv(offset=1)}
    agents = [("fast", lambda: TinyAgent(speed=1.0)), ("slow", lambda: TinyAgent(speed=0.5))]
    result = compare(agents, envs, episodes=3, progress=False)

    console = Console(record=True, width=200, file=io.StringIO())
    console.print(render_table(result))
    text = console.export_text()
    assert "fast" in text and "slow" in text and "1.2M" in text
    assert "100.0% [44-100] n=3" in text and "66.7% [21-94] n=3" in text and "66.7% [30-90] n=6" in text
    result.rows[1].name = "slow-tiny-embedded+dtp"  # agents whose names differ only at the end
    narrow = Console(record=True, width=60, file=io.StringIO())  # a non-TTY console is 80 columns
    narrow.print(render_table(result))
    policy_cells = "".join(line.split("│")[1].strip() for line in narrow.export_text().splitlines() if line.count("│") > 2)
    assert "slow-tiny-embedded+dtp" in policy_cells  # wrapped over lines, never cut to "slow-t…"
    result.rows[1].name = "slow"
    assert table_console().width == 160  # pytest captures stdout: not a terminal, so the wide file width

    json_path, csv_path = result.save(tmp_path / "comparison")
    assert json_path.parent == csv_path.parent
    data = json.loads(json_path.read_text())
    assert data["tasks"] == ["reach/a", "reach/b"]
    slow = data["rows"][1]
    assert slow["policy"] == "slow" and slow["num_parameters"] == 1_234_567
    assert slow["metrics"]["reach/a"]["successes"] == 2 and slow["metrics"]["overall"]["n_episodes"] == 6
    lines = list(csv.DictReader(csv_path.open()))
    assert [(r["policy"], r["task"]) for r in lines] == [(a, t) for a in ("fast", "slow") for t in ("reach/a", "reach/b", "overall")]
    slow_overall = lines[-1]
    assert float(slow_overall["pc_success"]) == pytest.approx(400 / 6)
    assert float(slow_overall["ci95_low"]) == pytest.approx(100 * wilson_interval(4, 6)[0])

    # Rows from evaluations already run, e.g. by a demo script.
    precomputed = ComparisonResult()
    precomputed.add("again", [evaluate(TinyAgent(), envs["reach/a"], episodes=2, progress=False, env_name="reach/a")])
    assert precomputed.rows[0].num_parameters == 1_234_567
    assert math.isclose(precomputed.rows[0].metrics()["overall"]["pc_success"], 100.0)


def missing_checkpoint() -> TinyAgent:
    raise FileNotFoundError("no config.json in runs/missing")


def broken_env() -> gym.Env:
    raise RuntimeError("no GL context")


@pytest.mark.parametrize("workers", [1, 2])
def test_evaluations_that_cannot_start_are_recorded_and_the_others_still_run(tmp_path, workers):
    envs = {"reach/a": partial(ReachEnv, offset=0), "reach/broken": broken_env}
    agents = [("broken", missing_checkpoint), ("fast", partial(TinyAgent, speed=1.0))]
    result = compare(agents, envs, episodes=2, progress=False, workers=workers)

    assert [(agent, task) for agent, task, _ in result.failures] == [
        ("broken", "reach/a"), ("broken", "reach/broken"), ("fast", "reach/broken")]
    errors = [error for _, _, error in result.failures]
    assert errors[0].startswith("FileNotFoundError: no config.json in runs/missing (at test_eval.py:")
    assert errors[2].startswith("RuntimeError: no GL context (at test_eval.py:")
    fast = result.rows[1]
    assert [ep.success for ep in fast.reports["reach/a"].episodes] == [True, True]  # the others still ran
    assert fast.reports["reach/broken"].episodes == [] and fast.metrics()["reach/broken"]["n_episodes"] == 0

    console = Console(record=True, width=200, file=io.StringIO())
    console.print(render_table(result))
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[3:6]]
            for line in console.export_text().splitlines() if line.count("│") > 2}
    assert rows["broken"] == ["failed", "failed", "-"]  # an overall over fewer tasks would not compare
    assert rows["fast"] == ["100.0% [34-100] n=2", "failed", "-"]

    json_path, csv_path = result.save(tmp_path / "comparison")
    assert json.loads(json_path.read_text())["rows"][1]["errors"] == {"reach/broken": errors[2]}
    assert [(r["policy"], r["task"], r["error"][:12]) for r in csv.DictReader(csv_path.open())] == [
        ("broken", "reach/a", "FileNotFound"), ("broken", "reach/broken", "FileNotFound"), ("broken", "overall", ""),
        ("fast", "reach/a", ""), ("fast", "reach/broken", "RuntimeError"), ("fast", "overall", "")]


def test_cli_compare_saves_what_ran_and_exits_with_an_error_naming_what_did_not(tmp_path, capsys):
    missing = tmp_path / "no-such-agent"
    assert main(["compare", str(missing), "--env", "embedded/lift", "--episodes", "1", "--json", str(tmp_path / "t.json")]) == 2
    assert "vla-agents compare: error: no-such-agent on embedded/lift could not be evaluated: " in capsys.readouterr().err
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["errors"]["embedded/lift"]


def test_compare_in_worker_processes_gives_the_same_episodes_as_one_process():
    envs = {"reach/a": partial(ReachEnv, offset=0), "reach/b": partial(ReachEnv, offset=1)}
    agents = [("fast", partial(TinyAgent, speed=1.0)), ("slow", partial(TinyAgent, speed=0.5))]
    one = compare(agents, envs, episodes=3, progress=False)
    two = compare(agents, envs, episodes=3, progress=False, workers=2)

    def outcomes(result):
        return {(row.name, task): [(ep.seed, ep.success, ep.length, ep.instruction) for ep in report.episodes]
                for row in result.rows for task, report in row.reports.items()}

    assert [row.name for row in two.rows] == ["fast", "slow"] and two.tasks == ["reach/a", "reach/b"]
    assert outcomes(two) == outcomes(one)
    assert [ep.success for ep in two.rows[1].reports["reach/a"].episodes] == [True, True, False]  # targets 2, 3, 4; 6 steps of 0.5 reach 3
    with pytest.raises(ValueError, match="the one for 'unpicklable' on 'reach/a' cannot be pickled"):
        compare([("unpicklable", lambda: TinyAgent())], envs, episodes=1, progress=False, workers=2)
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        compare(agents, envs, episodes=1, workers=0)


def test_cli_compare_json_writes_exactly_the_files_it_names(tmp_path, capsys):
    runs = tmp_path / "runs" / "cmp"
    runs.mkdir(parents=True)
    (runs / "results.json").write_text("earlier results")
    assert main(["compare", str(tmp_path / "missing"), "--env", "embedded/lift", "--episodes", "1",
                 "--json", str(runs / "results.v2.json")]) == 2
    assert f"wrote {runs / 'results.v2.json'}, {runs / 'results.v2.csv'}\n" in capsys.readouterr().out
    assert json.loads((runs / "results.v2.json").read_text())["rows"][0]["policy"] == "missing"
    assert (runs / "results.v2.csv").read_text().startswith("policy,num_parameters,task")
    assert (runs / "results.json").read_text() == "earlier results"
    assert sorted(p.name for p in runs.iterdir()) == ["results.json", "results.v2.csv", "results.v2.json"]


class BrokenAgent(TinyAgent):
    def act(self, obs: dict) -> np.ndarray:
        raise RuntimeError("no arm")


class InterruptedAgent(TinyAgent):
    """Ctrl-C during its third episode; first records how many episodes the log already holds."""

    log = None
    logged: list[int] = []

    def act(self, obs: dict) -> np.ndarray:
        if self.episode == 2:
            if self.log is not None:
                InterruptedAgent.logged.append(len(self.log.read_text().splitlines()))  # what a kill -9 here leaves
            raise KeyboardInterrupt
        return super().act(obs)


def run_cli_eval(monkeypatch, agent, args) -> int:
    monkeypatch.setattr("vla_agents.agent.load_agent", lambda path: agent)
    monkeypatch.setattr("vla_agents.sim.make_env", lambda spec: ReachEnv())
    return main(["eval", "--agent", "unused", "--env", "reach/target", *args])


def test_an_evaluation_where_every_episode_fails_reports_it_and_compare_marks_it_failed(tmp_path, monkeypatch, capsys):
    info_path = tmp_path / "eval_info.json"
    assert run_cli_eval(monkeypatch, BrokenAgent(), ["--episodes", "3", "--json", str(info_path)]) == 2
    out, err = capsys.readouterr()
    assert "reach/target: success 0.0% over 3 episodes, 3 raised (act p50 - ms/step, - ms/chunk)" in out
    assert "evaluation failed: reach/target: all 3 episodes raised an error; the first: RuntimeError: no arm" in err
    assert json.loads(info_path.read_text())["overall"]["n_errors"] == 3
    assert len((tmp_path / "eval_info.episodes.jsonl").read_text().splitlines()) == 3

    result = compare([("broken", BrokenAgent), ("fast", TinyAgent)], {"reach/a": ReachEnv}, episodes=2, progress=False)
    assert [(agent, task, error[:40]) for agent, task, error in result.failures] == [
        ("broken", "reach/a", "all 2 episodes raised an error; the firs")]
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(render_table(result))
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip()
            for line in console.export_text().splitlines() if line.count("│") > 2}
    assert rows["broken"] == "failed" and rows["fast"].startswith("100.0%")


def test_an_interrupted_evaluation_keeps_the_episodes_that_finished(tmp_path, monkeypatch, capsys):
    info_path = tmp_path / "eval_info.json"
    agent = InterruptedAgent()
    agent.log = tmp_path / "eval_info.episodes.jsonl"
    assert run_cli_eval(monkeypatch, agent, ["--episodes", "5", "--seed", "7", "--json", str(info_path)]) == 130
    assert InterruptedAgent.logged == [2]  # each episode is in the log as soon as it ends
    info = json.loads(info_path.read_text())
    assert info["interrupted"] is True and [ep["seed"] for ep in info["per_episode"]] == [7, 8]
    assert "partial results of 2 finished episodes in" in capsys.readouterr().err

    result = compare([("tiny", InterruptedAgent)], {"reach/a": ReachEnv, "reach/b": ReachEnv}, episodes=5, progress=False)
    assert result.interrupted and result.failures == [("tiny", "reach/a", "interrupted after 2 episodes"),
                                                      ("tiny", "reach/b", "KeyboardInterrupt: interrupted before it ran")]
