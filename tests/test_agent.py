"""VLAAgent: queue semantics, save/load round trip, paper-scale loading path, clear load errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_agents.agent import load_agent, make_agent
from vla_agents.data.normalization import compute_norm_stats

SMALL = dict(image_size=32, vit_depth=1, llm_layers=2)


def raw_obs(size: int = 48, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "agentview_image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        "robot0_eye_in_hand_image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        "robot0_eef_pos": rng.normal(size=3),
        "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
        "robot0_gripper_qpos": np.array([0.02, -0.02]),
        "robot0_joint_pos": np.zeros(7),
        "language_instruction": "pick up the red cube",
    }


def stats(action_dim: int = 7):
    rng = np.random.default_rng(0)
    return compute_norm_stats(rng.normal(size=(100, action_dim)), rng.normal(size=(100, 8)))


def count_predict(agent) -> list[int]:
    calls = [0]
    predict = agent.model.predict

    def spy(batch):
        calls[0] += 1
        return predict(batch)

    agent.model.predict = spy
    return calls


@pytest.mark.parametrize("policy", ["oft", "vla_adapter"])
def test_queue_runs_model_once_per_chunk(policy: str) -> None:
    agent = make_agent(policy, stats=stats(), **SMALL)
    assert agent.policy_name == policy
    calls = count_predict(agent)
    actions = [agent.act(raw_obs()) for _ in range(17)]
    assert calls[0] == 3  # steps 0, 8, 16
    assert all(a.shape == (7,) and a[6] in (-1.0, 1.0) for a in actions)
    heat = agent.last_attention.heatmaps
    assert set(heat) == {"agentview", "eye_in_hand"} and heat["agentview"].shape == (2, 2)
    agent.reset()
    agent.act(raw_obs())
    assert calls[0] == 4  # reset empties the queue
    assert agent.act_chunk(raw_obs()).shape == (8, 7)


@pytest.mark.parametrize("policy", ["oft", "vla_adapter+dtp"])
def test_act_batch_equals_one_act_per_env(policy: str) -> None:
    """Three envs with different images, proprio and instructions (so prompts are padded); env 1
    starts a new episode at step 5. Each env's actions are those of its own `act` sequence, from one
    model call per step that needs one. Arm actions agree to float32 rounding, not bit for bit: a CPU
    matrix product's rounding depends on the batch size (1 vs 3 rows differ by ~1e-7, amplified to ~1e-5)."""
    agent = make_agent(policy, stats=stats(), **SMALL)
    envs = [raw_obs(seed=i) for i in range(3)]
    for env, text in zip(envs, ("pick up the red cube", "lift it", "put the red cube on the green cube")):
        env["language_instruction"] = text
    single = []
    for env in envs:
        agent.reset()
        single.append(np.stack([agent.act(env) for _ in range(10)]))
    agent.reset()
    calls = count_predict(agent)
    batched = {key: np.stack([env[key] for env in envs]) for key in envs[0] if key != "language_instruction"}
    batched["language_instruction"] = tuple(env["language_instruction"] for env in envs)  # as a vector env batches Text
    actions, queried = [], {}
    for t in range(10):
        actions.append(agent.act_batch(batched, episode_start=np.array([False, t == 5, False])))
        if agent.batch_queried.any():
            queried[t] = agent.batch_queried.tolist()
    actions = np.stack(actions, axis=1)
    assert queried == {0: [True] * 3, 5: [False, True, False], 8: [True, False, True]}
    expected = np.stack(single)
    expected[1, 5:] = single[1][:5]  # env 1 restarted: its queue was emptied and refilled from the same observation
    assert actions.shape == (3, 10, 7) and calls[0] == 3  # one model call per step that needs one
    np.testing.assert_array_equal(actions[..., 6], expected[..., 6])
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-4)
    assert np.abs(expected[0] - expected[2]).max() > 1e-2  # the envs' actions differ: a mix-up would show
    assert set(agent.batch_attention[1].heatmaps) == {"agentview", "eye_in_hand"}
    with pytest.raises(NotImplementedError, match="temporal_ensemble"):
        make_agent("oft", stats=stats(), temporal_ensemble=True, **SMALL).act_batch(batched)


def test_temporal_ensembling_queries_every_step() -> None:
    agent = make_agent("oft", stats=stats(), temporal_ensemble=True, **SMALL)
    calls = count_predict(agent)
    for _ in range(10):
        agent.act(raw_obs())
    assert calls[0] == 10 and len(agent._history) == 8


def test_prompt_tokenization_is_cached() -> None:
    agent = make_agent("oft", **SMALL)
    assert agent.prompt_ids("pick up the red cube") is agent.prompt_ids("pick up the red cube")
    images = {"agentview": np.zeros((48, 48, 3), np.uint8), "eye_in_hand": np.zeros((48, 48, 3), np.uint8)}
    items = [{"images": images, "proprio": np.zeros(8, np.float32), "instruction": s} for s in ("a", "longer one")]
    batch = agent.collate(items, train=True)
    assert batch["images"].shape == (2, 2, 3, 32, 32)
    assert batch["attention_mask"][0, 0] == 1 and batch["attention_mask"][0, 1] == 0  # start token, then left pad


@pytest.mark.parametrize("policy", ["oft", "vla_adapter"])
def test_save_load_round_trip(policy: str, tmp_path: Path) -> None:
    agent = make_agent(policy, stats=stats(), gate_mode="output_scale", **SMALL) if policy == "vla_adapter" \
        else make_agent(policy, stats=stats(), film=True, **SMALL)  # OFT+ FiLM weights travel too
    agent.save_pretrained(tmp_path / "agent")
    agent.save_pretrained(tmp_path / "agent")  # overwriting is atomic too
    loaded = load_agent(tmp_path / "agent")
    np.testing.assert_array_equal(agent.act_chunk(raw_obs()), loaded.act_chunk(raw_obs()))
    assert loaded.recipe == agent.recipe and loaded.num_parameters() == agent.num_parameters()
    assert (loaded.model.backbone.film is not None) == (policy == "oft")
    assert not list(tmp_path.glob(".agent.*"))


def test_paper_scale_loading_path(tmp_path: Path, tiny_hf_models: dict[str, str]) -> None:
    """Tiny random SigLIP + DINOv2 + Qwen2 saved locally and loaded through the paper recipe."""
    paths = tiny_hf_models
    for policy in ("oft", "vla_adapter"):
        agent = make_agent(policy, scale="paper", stats=stats(), image_size=28, film=policy == "oft", **paths)
        assert agent.model.backbone.vision.fused and agent.model.backbone.vision.dim == 64
        assert agent.act(raw_obs()).shape == (7,)
        assert agent.last_attention.heatmaps["eye_in_hand"].shape == (2, 2)
        agent.enable_lora(rank=4, alpha=8)
        assert any("lora_" in n for n, p in agent.model.named_parameters() if p.requires_grad)
        agent.save_pretrained(tmp_path / f"agent-{policy}")
    import shutil
    for name in ("siglip", "dinov2", "qwen"):
        shutil.rmtree(tmp_path / name)  # a saved agent no longer needs the original folders
    for policy in ("oft", "vla_adapter"):
        loaded = load_agent(tmp_path / f"agent-{policy}")
        assert loaded.act_chunk(raw_obs()).shape == (8, 7)
        assert (loaded.model.backbone.film is not None) == (policy == "oft")  # FiLM in SigLIP and DINOv2 blocks


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="agent folder not found"):
        load_agent(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        make_agent("nope")

    good = tmp_path / "good"
    make_agent("oft", stats=stats(), **SMALL).save_pretrained(good)

    def broken(name: str) -> Path:
        import shutil
        path = tmp_path / name
        shutil.copytree(good, path)
        return path

    path = broken("no-weights")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_agent(path)

    path = broken("corrupt")
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"corrupt agent file .*config.json"):
        load_agent(path)

    path = broken("unknown-policy")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "policy": "nope"}))
    with pytest.raises(ValueError, match="unknown policy"):
        load_agent(path)

    path = broken("config-vs-stats")
    (path / "norm_stats.json").write_text(json.dumps(stats(6).to_dict()))
    with pytest.raises(ValueError, match="action-dimension mismatch"):
        load_agent(path)

    path = broken("weights-vs-config")
    config = json.loads((path / "config.json").read_text())
    config["action_dim"] = config["recipe"]["action_dim"] = 6
    (path / "config.json").write_text(json.dumps(config))
    (path / "norm_stats.json").write_text(json.dumps(stats(6).to_dict()))
    with pytest.raises(ValueError, match="action-dimension"):
        load_agent(path)

    with pytest.raises(ValueError, match="action-dimension mismatch"):
        make_agent("oft", stats=stats(6), **SMALL)
