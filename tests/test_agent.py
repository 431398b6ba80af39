"""VLAAgent: queue semantics, save/load round trip, paper-scale loading path, clear load errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL, raw_obs, stats
from vla_agents.agent import load_agent, make_agent
from vla_agents.data.normalization import NormStats, compute_norm_stats


def drop_digests(path: Path) -> None:
    """Make `path` look like a folder saved before config.json recorded SHA-256 digests."""
    config = json.loads((path / "config.json").read_text())
    config.pop("sha256", None)
    (path / "config.json").write_text(json.dumps(config))


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


def test_a_shorter_open_loop_horizon_runs_the_model_that_often_and_executes_the_chunk_head() -> None:
    agent = make_agent("oft", stats=stats(), **SMALL)
    chunk = agent.act_chunk(raw_obs())
    agent.set_n_open_loop(3)
    calls = count_predict(agent)
    actions = [agent.act(raw_obs()) for _ in range(7)]
    assert calls[0] == 3 and agent.recipe.agent.n_open_loop == 3  # steps 0, 3, 6
    np.testing.assert_array_equal(actions[:3], chunk[:3])  # same observation: the head of the same chunk
    np.testing.assert_array_equal(actions[3:6], chunk[:3])
    for bad in (0, 9, 2.0, True):
        with pytest.raises(ValueError, match=r"n_open_loop must be an integer from 1 to the agent's chunk \(8\)"):
            agent.set_n_open_loop(bad)


def test_eval_n_open_loop_runs_the_agent_with_it_and_records_it(tmp_path: Path, monkeypatch) -> None:
    from vla_agents.cli import main

    agent = make_agent("oft", stats=stats(), **SMALL)
    calls = count_predict(agent)
    monkeypatch.setattr("vla_agents.agent.load_agent", lambda path: agent)
    assert main(["eval", "--agent", "unused", "--env", "embedded/lift", "--episodes", "1", "--max-steps", "6",
                 "--n-open-loop", "2", "--json", str(tmp_path / "info.json")]) == 0
    assert calls[0] == 3  # 6 steps, 2 actions per model call
    assert json.loads((tmp_path / "info.json").read_text())["provenance"]["n_open_loop"] == 2


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
    drop_digests(path)  # as saved before config.json recorded them: the dimensions are what tells
    (path / "norm_stats.json").write_text(json.dumps(stats(6).to_dict()))
    with pytest.raises(ValueError, match="action-dimension mismatch"):
        load_agent(path)

    path = broken("weights-vs-config")
    config = json.loads((path / "config.json").read_text())
    config["action_dim"] = config["recipe"]["action_dim"] = 6
    config.pop("sha256", None)
    (path / "config.json").write_text(json.dumps(config))
    (path / "norm_stats.json").write_text(json.dumps(stats(6).to_dict()))
    with pytest.raises(ValueError, match="action-dimension"):
        load_agent(path)

    with pytest.raises(ValueError, match="action-dimension mismatch"):
        make_agent("oft", stats=stats(6), **SMALL)


@pytest.fixture
def saved(tmp_path: Path):
    """A saved agent, and a function giving a fresh copy of its folder to break."""
    import shutil

    good = make_agent("oft", stats=stats(), **SMALL).save_pretrained(tmp_path / "good")

    def copy(name: str) -> Path:
        shutil.copytree(good, tmp_path / name)
        return tmp_path / name
    return copy


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def test_norm_stats_are_validated_on_load(saved) -> None:
    def flip(d):
        d["action"]["q01"][0], d["action"]["q99"][0] = 1.0, -1.0
        return d

    cases = [
        ({}, r"norm_stats.json: norm stats missing key\(s\) \['action', 'proprio'\]"),
        (None, r"norm_stats.json is null; expected the 'action' and 'proprio' statistics"),
        (flip(stats().to_dict()), r"norm_stats.json: norm stats 'action': q01 > q99 at dim\(s\) \[0\]"),
        (stats().to_dict() | {"proprio": compute_norm_stats(np.zeros((9, 7)), np.zeros((9, 6))).proprio.to_dict()},
         r"proprio-dimension mismatch .*recipe proprio_dim=8, norm_stats.json proprio has 6"),
    ]
    for i, (content, error) in enumerate(cases):
        path = saved(f"case{i}")
        drop_digests(path)  # the checks that hold for folders saved before digests too
        (path / "norm_stats.json").write_text(json.dumps(content))
        with pytest.raises(ValueError, match=error):
            load_agent(path)
    flat = stats().to_dict()
    flat["action"]["q99"][0] = flat["action"]["q01"][0]  # the data varied, its quantiles say it did not
    with pytest.warns(UserWarning, match=r"'action': q01 == q99 at dim\(s\) \[0\] although the data ranged over"):
        NormStats.from_dict(flat)
    path = saved("other-agent")  # same dimensions, another agent's statistics: the digest tells
    (path / "norm_stats.json").write_text(json.dumps(stats(7).to_dict() | {"proprio": stats().proprio.to_dict()}))
    with pytest.raises(ValueError, match=r"norm_stats.json does not match the SHA-256 digest that config.json records"):
        load_agent(path)


def test_an_agent_saved_without_statistics_says_so(tmp_path: Path) -> None:
    make_agent("oft", **SMALL).save_pretrained(tmp_path / "raw")
    with pytest.warns(UserWarning, match="saved without normalization statistics"):
        assert load_agent(tmp_path / "raw").stats is None


def test_damaged_weights_fail_their_digest_and_old_folders_load_without_one(saved) -> None:
    path = saved("damaged")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)  # the second half zeroed: still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.safetensors does not match the SHA-256 digest that config.json records"):
        load_agent(path)

    config = json.loads((saved("recorded") / "config.json").read_text())
    assert set(config["sha256"]) == {"model.safetensors", "norm_stats.json"}
    legacy = saved("legacy")  # a folder saved before digests were recorded
    config = json.loads((legacy / "config.json").read_text())
    del config["sha256"]
    (legacy / "config.json").write_text(json.dumps(config))
    assert load_agent(legacy).act_chunk(raw_obs(32)).shape == (8, 7)  # no digest: loads as before


def _set(key: str, value):
    def change(config):
        config["recipe"][key] = value
        return config
    return change


def _drop(key: str):
    def change(config):
        del config["recipe"][key]
        return config
    return change


@pytest.mark.parametrize("change, error", [
    (_drop("vit_dim"), r"config.json: recipe has no value for 'vit_dim'; vision 'tiny_vit' needs vit_dim"),
    (_drop("prompt_template"), r"config.json: the recipe has no key\(s\) prompt_template; expected every key of policies/oft-tiny.yaml"),
    (_drop("n_open_loop"), r"config.json: the recipe has no key\(s\) n_open_loop"),
    (_set("n_open_loop", 0), r"config.json: recipe key 'n_open_loop' is 0; expected an integer from 1 to chunk \(8\)"),
    (_set("n_open_loop", 9), r"recipe key 'n_open_loop' is 9; expected an integer from 1 to chunk"),
    (_set("views", ["front"]), r"views \['front'\] and proprio_dim 8 do not fit adapter 'libero'"),
    (_set("image_size", "big"), r"config.json: recipe key 'image_size' is 'big'; expected an integer"),
    (lambda c: {**c, "recipe": [1, 2]}, r"config.json: 'recipe' must be an object"),
    (lambda c: {**c, "dtp": {"tau": 0.5, "taus": 1}}, r"config.json: 'dtp' has unknown setting\(s\) \['taus'\]"),
    (lambda c: {**c, "lora": {"rank": 4}}, r"config.json: 'lora' must be an object with 'rank' and 'alpha'"),
    (lambda c: {**c, "format_version": 99}, r"config.json has format_version 99; this vla-agents reads up to 1"),
])
def test_malformed_config_names_the_file_and_the_key(saved, change, error) -> None:
    path = saved("bad")
    edit_json(path / "config.json", change)
    with pytest.raises(ValueError, match=error):
        load_agent(path).act(raw_obs())


def test_unreadable_weights_and_tokenizer_name_the_file(saved) -> None:
    import shutil

    for name, content in (("truncated", None), ("empty", b"")):
        path = saved(name)
        drop_digests(path)
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000] if content is None else content)
        with pytest.raises(ValueError, match=rf"{name}/model.safetensors is not a readable safetensors file"):
            load_agent(path)
    path = saved("no-tokenizer")
    shutil.rmtree(path / "tokenizer")
    (path / "tokenizer").mkdir()
    with pytest.raises(ValueError, match=r"tokenizer folder .*no-tokenizer/tokenizer has no tokenizer.json"):
        load_agent(path)


def test_observations_that_cannot_be_right_are_refused_naming_the_key() -> None:
    from vla_agents.adapters import ObservationError

    agent = make_agent("oft", stats=stats(), **SMALL)
    cases = [
        (None, "the raw observation must be a mapping"),
        (raw_obs() | {"robot0_eef_quat": np.array([0.0, 0.0, 0.0, 2.0])}, r"'robot0_eef_quat' must be a unit quaternion"),
        (raw_obs() | {"robot0_eef_pos": "abc"}, r"'robot0_eef_pos' must be a vector of 3 numbers, got 'abc'"),
        (raw_obs() | {"language_instruction": "   "}, r"the instruction '   ' is only white space"),
        (raw_obs() | {"language_instruction": "a" * 10_000}, r"the instruction is 10000 characters .*at most 512"),
        (raw_obs() | {"agentview_image": np.zeros((1, 1, 3), np.uint8)}, r"'agentview_image' is 1x1 px; expected .* 2x2"),
        (raw_obs() | {"robot0_eye_in_hand_image": np.zeros((0, 0, 3), np.uint8)}, r"'robot0_eye_in_hand_image' is 0x0"),
    ]
    for obs, error in cases:
        agent.reset()
        with pytest.raises(ObservationError, match=error):
            agent.act(obs)


def test_inputs_unlike_the_training_data_are_acted_on_with_one_warning_each() -> None:
    import warnings

    agent = make_agent("oft", stats=stats(), **SMALL)
    wide = raw_obs() | {"agentview_image": np.zeros((48, 64, 3), np.uint8)}
    far = raw_obs() | {"robot0_eef_pos": np.full(3, 1e6)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = make_agent("oft", stats=stats(), **SMALL)
        for obs in (raw_obs(), *[far] * 16):  # mid-episode, a failing policy may drift anywhere: not checked
            fresh.act(obs)
        assert caught == []
        for obs in (wide, wide, far, far, raw_obs()):
            agent.reset()
            assert agent.act(obs).shape == (7,)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert "the 'agentview' image is 48x64 px; it is stretched to the policy's square 32x32 input" in messages[0]
    assert messages[1].startswith("proprio far outside the range the agent was trained on (dim 0: 1e+06 not in")


def test_a_quaternion_given_as_wxyz_is_caught_by_the_training_range() -> None:
    """One order cannot be told from the other in a single quaternion; the shipped agent's proprio
    range tells: a downward gripper's axis-angle moves by about 30 widths of it."""
    import warnings

    from vla_agents.sim import make_env

    shipped = Path(__file__).resolve().parents[1] / "policies" / "checkpoints" / "oft-tiny-embedded"
    agent = load_agent(shipped)
    env = make_env("embedded/lift")
    obs, _ = env.reset(seed=0)
    env.close()
    x, y, z, w = obs["robot0_eef_quat"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agent.act(obs)
        assert caught == []
        agent.reset()
        agent.act({**obs, "robot0_eef_quat": np.array([w, x, y, z])})
    assert len(caught) == 1 and "quaternion order (x, y, z, w)" in str(caught[0].message)
