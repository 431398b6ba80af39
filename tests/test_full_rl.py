"""Full RL: the VLA as an SB3 actor-critic (a Gaussian around its L1 head), PPO updates reaching
the VLA's weights, the BC regulariser, and a CLI run whose output loads back as a plain agent."""
from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ActionRecorder
from stable_baselines3.common.vec_env import DummyVecEnv

from vla_agents.agent import VLAAgent, load_agent, make_agent
from vla_agents.data.hdf5 import DemoWriter
from vla_agents.data.normalization import compute_norm_stats
from vla_agents.sim import make_env
from vla_agents.train.full_rl import BCRegulariser, ChunkEnv, FullPPO, VLAActorCriticPolicy

SMALL = dict(image_size=32, vit_depth=1, llm_layers=1, backbone_path=None)
ENV, ENV_KWARGS = "embedded/lift", {"image_size": 32}


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    stats = compute_norm_stats(rng.normal(scale=0.3, size=(100, 7)), rng.normal(size=(100, 8)))
    torch.manual_seed(0)
    return make_agent("oft", stats=stats, **SMALL).save_pretrained(tmp_path_factory.mktemp("full") / "bc")


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "lift.hdf5"
    rng = np.random.default_rng(1)
    T = 12
    with DemoWriter(path, instruction="pick up the cube") as writer:
        writer.add_episode(rng.uniform(-1, 1, (T, 7)), {
            "agentview_rgb": rng.integers(0, 255, (T, 32, 32, 3), dtype=np.uint8),
            "eye_in_hand_rgb": rng.integers(0, 255, (T, 32, 32, 3), dtype=np.uint8),
            "ee_pos": rng.normal(size=(T, 3)), "ee_ori": np.zeros((T, 3)), "gripper_states": np.zeros((T, 2)),
            "joint_states": np.zeros((T, 7)),
        })
    return path


def chunk_env(agent: VLAAgent, env: gym.Env | None = None, reward: str = "sparse") -> ChunkEnv:
    env = env or make_env(ENV, **ENV_KWARGS)
    return ChunkEnv(env, agent.recipe, agent.stats, agent.adapter_name, env.unwrapped.instructions, reward)


def policy_for(agent: VLAAgent, env: ChunkEnv, bc: BCRegulariser | None = None) -> VLAActorCriticPolicy:
    return VLAActorCriticPolicy(env.observation_space, env.action_space, lambda _: 1e-3, agent=agent,
                                instructions=env.instructions, bc=bc)


def ppo(agent: VLAAgent, bc: BCRegulariser | None = None) -> FullPPO:
    env = chunk_env(agent, reward="shaped")
    return FullPPO(VLAActorCriticPolicy, DummyVecEnv([lambda: env]), learning_rate=1e-3, n_steps=4, batch_size=4,
                   n_epochs=1, seed=0, policy_kwargs=dict(agent=agent, instructions=env.instructions, bc=bc))


def test_log_prob_entropy_and_values_are_the_diagonal_gaussian_ones(agent_dir) -> None:
    agent = load_agent(agent_dir)
    env = chunk_env(agent)
    policy = policy_for(agent, env)
    with torch.no_grad():
        policy.log_std.copy_(torch.linspace(-2.0, 0.5, policy.log_std.numel()))
    observations = [env.reset(seed=s)[0] for s in (0, 1)]
    obs = {k: torch.as_tensor(np.stack([o[k] for o in observations])) for k in observations[0]}
    actions = torch.randn(2, 8 * 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean = policy.get_distribution(obs).distribution.mean
        values, log_prob, entropy = policy.evaluate_actions(obs, actions)
        sampled, _, sampled_log_prob = policy(obs)
    log_std = policy.log_std.detach().double()

    def density(a: torch.Tensor) -> torch.Tensor:
        z = (a.double() - mean.double()) / log_std.exp()
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=1)

    assert mean.shape == (2, 56) and not torch.allclose(mean[0], mean[1])
    assert values.shape == (2,) and sampled.shape == (2, 8, 7)
    torch.testing.assert_close(log_prob, density(actions).float())  # float32 tolerances
    torch.testing.assert_close(sampled_log_prob, density(sampled.flatten(1)).float())
    torch.testing.assert_close(entropy, (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum().float().expand(2))
    env.close()


def test_actor_mean_at_init_is_the_bc_agents_chunk_and_runs_as_its_actions(agent_dir) -> None:
    agent, bc = load_agent(agent_dir), load_agent(agent_dir)
    recorder = ActionRecorder(make_env(ENV, **ENV_KWARGS))
    env = chunk_env(agent, recorder)
    policy = policy_for(agent, env)
    obs, _ = env.reset(seed=0)
    with torch.no_grad():
        mean = policy.get_distribution(policy.obs_to_tensor(obs)[0]).distribution.mean.reshape(8, 7).numpy()
    expected = bc._predict(recorder.last_obs, None)  # un-normalized chunk, from the raw observation
    np.testing.assert_allclose(agent.stats.unnormalize_action(mean), expected, atol=2e-3)

    bc.reset()
    bc_actions = [bc.act(recorder.last_obs) for _ in range(8)]  # one chunk, open-loop
    _, _, _, _, info = env.step(mean)
    assert info["env_steps"] == 8
    np.testing.assert_allclose(np.stack(recorder.actions), np.stack(bc_actions), atol=2e-3)
    env.close()


def test_bc_regulariser_adds_weight_times_its_l1_gradient(agent_dir, demos) -> None:
    agent = load_agent(agent_dir)
    env = chunk_env(agent)
    policy = policy_for(agent, env, bc=BCRegulariser(agent, [demos], weight=0.5, batch_size=4, seed=3))
    policy.optimizer.zero_grad()  # what PPO.train calls right before loss.backward()
    seeded = {n: p.grad.clone() for n, p in agent.model.named_parameters()}
    agent.model.zero_grad(set_to_none=True)
    (0.5 * BCRegulariser(agent, [demos], weight=0.5, batch_size=4, seed=3).loss()).backward()
    for name, p in agent.model.named_parameters():
        torch.testing.assert_close(seeded[name], p.grad, msg=name)
    assert any(g.abs().sum() > 0 for g in seeded.values())

    plain = policy_for(load_agent(agent_dir), env)
    plain.optimizer.zero_grad()
    assert all(p.grad is None for p in plain.parameters())
    env.close()


def test_ppo_update_trains_the_vla_and_log_std_and_bc_weight_changes_it(agent_dir, demos) -> None:
    results = {}
    for weight in (0.0, 1.0):
        agent = load_agent(agent_dir)
        bc = BCRegulariser(agent, [demos], weight, batch_size=4) if weight else None
        model = ppo(agent, bc)
        before = {k: v.clone() for k, v in model.policy.state_dict().items()}
        model.learn(total_timesteps=4)
        after = model.policy.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert {"log_std", "value_head.1.weight", "vla.action_head.out.1.weight"} <= changed
        assert any(k.startswith("vla.backbone.llm.") for k in changed)
        assert any(k.startswith("vla.backbone.vision.") for k in changed)
        assert model.policy.vla is agent.model
        results[weight] = after
        model.get_env().close()
    assert not torch.equal(results[0.0]["vla.action_head.out.1.weight"], results[1.0]["vla.action_head.out.1.weight"])


def test_cli_full_mode_with_subprocess_envs_saves_a_loadable_agent(agent_dir, demos, tmp_path) -> None:
    from vla_agents.cli import main

    out = tmp_path / "full"
    assert main(["train", "rl", "--agent", str(agent_dir), "--env", ENV, "--mode", "full", "--steps", "64",
                 "--n-envs", "2", "--eval-episodes", "0", "--bc-weight", "0.5", "--bc-data", str(demos),
                 "--lr", "1e-3", "--out", str(out)]) == 0
    log = json.loads((out / "rl_log.json").read_text())
    assert log["config"]["algo"] == "ppo" and log["env_steps"] == 64 and len(log["train_episodes"]) == 0
    assert len(log["updates"]) == 1 and np.isfinite(log["updates"][0]["bc_l1"])
    assert (out / "curve.png").stat().st_size > 0

    tuned, bc = load_agent(out), load_agent(agent_dir)
    assert isinstance(tuned, VLAAgent)
    env = make_env(ENV, **ENV_KWARGS)
    raw, _ = env.reset(seed=5)
    assert not np.allclose(tuned._predict(raw, None), bc._predict(raw, None), atol=1e-4)  # the RL weights act
    tuned.reset()
    for _ in range(3):
        raw, *_ = env.step(tuned.act(raw))
    env.close()
