"""`vla-agents eval --n-envs 2`: a shipped agent on a vector env of the embedded suite runs the episodes
one process runs, and writes LeRobot's eval_info.json, the videos and their index page."""
import json
from pathlib import Path

from vla_agents.agent import load_agent
from vla_agents.cli import main
from vla_agents.eval.rollout import evaluate

CHECKPOINT = Path(__file__).resolve().parents[1] / "policies" / "checkpoints" / "oft-tiny-embedded"


def test_cli_eval_on_two_envs_runs_one_process_episodes_and_writes_json_videos_and_index(tmp_path):
    # pick_color's instruction changes with the seed (green, blue, red cube): each env's own must reach the agent.
    # Three episodes on two envs: the worker that finishes first runs the third.
    assert main(["eval", "--agent", str(CHECKPOINT), "--env", "embedded/pick_color", "--episodes", "3", "--seed", "0",
                 "--max-steps", "12", "--n-envs", "2", "--json", str(tmp_path / "eval_info.json"),
                 "--video-dir", str(tmp_path / "videos")]) == 0
    info = json.loads((tmp_path / "eval_info.json").read_text())
    one = evaluate(load_agent(CHECKPOINT), "embedded/pick_color", episodes=3, seed=0, max_steps=12, progress=False)

    rows = [(e["seed"], e["instruction"], e["length"], e["success"], e["error"]) for e in info["per_episode"]]
    assert rows == [(ep.seed, ep.instruction, ep.length, ep.success, ep.error) for ep in one.episodes]
    assert [row[1] for row in rows] == ["pick up the green cube", "pick up the blue cube", "pick up the red cube"]
    metrics = info["per_task"][0]["metrics"]
    assert metrics["successes"] == [ep.success for ep in one.episodes] and len(metrics["video_paths"]) == 3
    assert info["provenance"]["n_envs"] == 2 and info["provenance"]["envs"][0]["gym_id"] == "vla_agents/pick_color-v0"
    assert all(Path(e["video_path"]).is_file() for e in info["per_episode"])
    page = (tmp_path / "videos" / "index.html").read_text()
    assert all(Path(e["video_path"]).name in page for e in info["per_episode"])
