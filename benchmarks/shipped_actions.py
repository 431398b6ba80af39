"""What each shipped checkpoint does on fixed seeded observations, recorded as the reference that
`tests/test_shipped_actions.py` holds the code to: a refactor must leave every number unchanged.

    .venv/bin/python benchmarks/shipped_actions.py             # rewrite tests/data/shipped_actions.json

Each entry is keyed by the checkpoint's model.safetensors SHA-256, so a retrained checkpoint is told
apart from changed code: the test then asks for this command to be run again (on code known to be
right, e.g. main before the change under test), not for its tolerance to be loosened.
Recorded per observation: the env-ready chunk of `act_chunk`, the attention maps, the chunk of the
agent wrapped in DTP (where the policy has prompt tokens), and the observation residual RL sees
(the VLA features it pools), so changes to wrappers and feature plumbing are caught too.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "policies" / "checkpoints"
REFERENCE = ROOT / "tests" / "data" / "shipped_actions.json"
INSTRUCTIONS = ("pick up the red cube", "put the blue cube on the green cube", "lift the cube")
SIMPLER_INSTRUCTIONS = ("put carrot on plate", "put the spoon on the towel", "stack the green block on the yellow block")
REGENERATE = "python benchmarks/shipped_actions.py"


def sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def observations(adapter: str = "libero") -> list[dict[str, Any]]:
    """Three seeded raw observations of the benchmark the agent's adapter reads (random images, plausible
    robot state): LIBERO-format for `libero` and `embedded`, ManiSkill3's (batch of one) for `simpler_widowx`."""
    from vla_agents.adapters.simpler import CAMERAS, PROPRIO_DIMS

    if adapter in ("libero", "embedded"):
        return [libero_observation(np.random.default_rng(1000 + i), text) for i, text in enumerate(INSTRUCTIONS)]
    if adapter == "simpler_widowx":
        return [{"agent": {"qpos": rng.normal(0, 0.3, (1, PROPRIO_DIMS["widowx"])).astype(np.float32)},
                 "sensor_data": {CAMERAS["widowx"]: {"rgb": rng.integers(0, 255, (1, 480, 640, 3), dtype=np.uint8)}},
                 "language_instruction": text}
                for rng, text in ((np.random.default_rng(1000 + i), t) for i, t in enumerate(SIMPLER_INSTRUCTIONS))]
    raise ValueError(f"no recorded observations for adapter {adapter!r}; this script has libero, embedded, simpler_widowx")


def libero_observation(rng: np.random.Generator, instruction: str) -> dict[str, Any]:
    return {"agentview_image": rng.integers(0, 255, (128, 128, 3), dtype=np.uint8),
            "robot0_eye_in_hand_image": rng.integers(0, 255, (128, 128, 3), dtype=np.uint8),
            "robot0_eef_pos": np.array([0.05, -0.02, 0.9]) + rng.normal(0, 0.02, 3),
            "robot0_eef_quat": np.array([1.0, 0.0, 0.0, 0.0]),
            "robot0_gripper_qpos": np.array([0.02, -0.02]),
            "language_instruction": instruction}


def rounded(x: Any) -> Any:
    return np.round(np.asarray(x, np.float64), 6).tolist()


def record(folder: Path) -> dict[str, Any]:
    """One checkpoint's outputs on `observations()`."""
    from vla_agents.agent import load_agent
    from vla_agents.models.dtp import DTP, can_wrap

    agent = load_agent(folder)
    dtp = DTP(agent) if can_wrap(agent.model) else None
    rows = []
    for obs in observations(agent.adapter_name):
        row = {"actions": rounded(agent.act_chunk(obs)),
               "attention": {v: rounded(m) for v, m in agent.last_attention.heatmaps.items()}}
        if dtp is not None:
            row["dtp_actions"] = rounded(dtp.act_chunk(obs))
        rows.append(row)
    return {"model_sha256": sha256(folder / "model.safetensors"), "observations": rows,
            "residual_obs": residual_observations(folder)}


def residual_observations(folder: Path) -> list[Any] | None:
    """The vector a fresh residual policy observes at the first step of each observation (the VLA's
    pooled features among it); None where residual RL cannot wrap the policy."""
    from vla_agents.agent import load_agent
    from vla_agents.residual import ResidualAgent

    try:
        residual = ResidualAgent(load_agent(folder))
    except (AttributeError, TypeError, ValueError):
        return None
    out = []
    for obs in observations(residual.base.adapter_name):
        residual.reset()
        out.append(rounded(residual.observe(obs)[1]))
    return out


def main() -> None:
    torch.set_num_threads(1)
    reference = {folder.name: record(folder) for folder in sorted(CHECKPOINTS.iterdir()) if (folder / "config.json").is_file()}
    REFERENCE.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {REFERENCE.relative_to(ROOT)}: {', '.join(reference)}")


if __name__ == "__main__":
    main()
