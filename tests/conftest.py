"""Fixtures and helpers shared by the test files: import the plain ones with `from conftest import ...`."""
import os

import gymnasium as gym
import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

# Recipe overrides that make a tiny agent tinier still (32 px, 2x2 patches per view, one ViT block, two
# LLM layers, no pretrained backbone): seconds to build and act on a CPU.
SMALL = dict(image_size=32, vit_depth=1, llm_layers=2, backbone_path=None)
# DeepVision builds two vision branches and couples LLM layers to an expert: its own small sizes.
DEEPVISION_SMALL = dict(image_size=48, vla_image_size=32, vit_dim=32, vit_depth=1, expert_dim=32, expert_depth=3,
                        llm_dim=32, llm_intermediate=64, llm_layers=4, coupled_layers=2, agvp_layers=[0, 1],
                        backbone_path=None)


def small(policy: str) -> dict:
    """`policy`'s SMALL overrides: the keys of SMALL its tiny recipe has (VAT has no LLM keys)."""
    from vla_agents.policies import recipe_keys

    if policy == "deepvision":
        return dict(DEEPVISION_SMALL)
    return {k: v for k, v in SMALL.items() if k in recipe_keys(policy)}


def stats(action_dim: int = 7, seed: int = 0):
    """Normalization statistics of random actions and 8-D proprio, as a trained agent carries."""
    from vla_agents.data.normalization import compute_norm_stats

    rng = np.random.default_rng(seed)
    return compute_norm_stats(rng.normal(size=(100, action_dim)), rng.normal(size=(100, 8)))


def raw_obs(size: int = 48, seed: int = 0) -> dict:
    """A raw LIBERO-format observation: random images, random end-effector position."""
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


@pytest.fixture
def tiny_hf_models(tmp_path):
    """Tiny random SigLIP, DINOv2 and Qwen2 (+ byte tokenizer) saved to disk: the paper-scale
    `from_pretrained` path without downloads. Returns the recipe overrides that point at them."""
    from transformers import Dinov2Config, Dinov2Model, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from vla_agents.models.backbones import build_byte_tokenizer

    vit = dict(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    SiglipVisionModel(SiglipVisionConfig(**vit)).save_pretrained(tmp_path / "siglip")
    Dinov2Model(Dinov2Config(**vit)).save_pretrained(tmp_path / "dinov2")
    Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "qwen")
    build_byte_tokenizer().save_pretrained(tmp_path / "qwen")
    return dict(siglip_path=str(tmp_path / "siglip"), dinov2_path=str(tmp_path / "dinov2"), llm_path=str(tmp_path / "qwen"))


class ActionRecorder(gym.Wrapper):
    """Keeps the actions the env really receives and the latest raw observation."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.actions: list[np.ndarray] = []

    def reset(self, **kwargs):
        self.last_obs, info = self.env.reset(**kwargs)
        return self.last_obs, info

    def step(self, action):
        self.actions.append(np.array(action))
        self.last_obs, *rest = self.env.step(action)
        return (self.last_obs, *rest)
