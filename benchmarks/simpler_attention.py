"""Does a SIMPLER agent's attention overlay show the object its next actions depend on?

The SIMPLER counterpart of `attention_target.py`. For each model call of SimplerEnv's evaluation episodes
(the agent acting, as in `vla-agents eval`), the object of the moment is the one to pick until the simulator
reports it grasped, then the one it goes on (what `SimplerExpert.focus` records as the demonstrations'
grounding target). Its centre is projected into the policy camera's frame, mapped through the centre crop
the policy sees onto the attention map's cells, and that cell's rank among the cells is recorded (0 = hottest).
Reports, per phase, the share of calls with the object in the top 5 cells, the median rank, and the mean
attention on its cell against a uniform map. Calls with the object outside the crop are skipped (and counted).

    MS_ASSET_DIR=DIR python benchmarks/simpler_attention.py --agent policies/checkpoints/vat-tiny-simpler --episodes 10
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from vla_agents.agent import load_agent
from vla_agents.data.images import crop_box, uv_in_crop
from vla_agents.sim import make_env
from vla_agents.sim.simpler import CAMERA
from vla_agents.train.auxiliary import target_cells


def object_cell(env, name: str, frame_hw: tuple[int, int], heat: np.ndarray, crop_area: float) -> int:
    """The attention cell (row-major) over the object's centre, or -1 where the crop cuts it away."""
    sim = env.unwrapped
    height, width = frame_hw
    top, left, crop_h, crop_w = crop_box(height, width, crop_area, train=False)
    box = torch.tensor([[top / height, left / width, crop_h / height, crop_w / width]])
    uv = torch.from_numpy(sim.project(sim.object_pose(name)[0][None]))
    cell = int(target_cells(uv_in_crop(uv, box), *heat.shape)[0])
    return cell if cell < heat.size else -1


def phase_ranks(agent_dir: str, env_spec: str, episodes: int, seed: int) -> dict:
    agent, env = load_agent(agent_dir), make_env(env_spec)
    phases = {"source_before_grasp": [], "target_after_grasp": []}
    skipped, successes = 0, 0
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode, options={"episode_id": episode})
        agent.reset()
        source, target = env.unwrapped.objects
        grasped = False
        while True:
            calls, frame_hw = agent.model_calls, obs["sensor_data"][CAMERA]["rgb"].shape[1:3]
            action = agent.act(obs)
            if agent.model_calls > calls:
                heat = np.asarray(agent.last_attention.heatmaps[CAMERA])
                cell = object_cell(env, target if grasped else source, frame_hw, heat, agent.recipe.backbone.crop_area)
                if cell < 0:
                    skipped += 1
                else:
                    flat = heat.ravel()
                    phases["target_after_grasp" if grasped else "source_before_grasp"].append(
                        (int((flat > flat[cell]).sum()), float(flat[cell] / flat.sum() * flat.size)))
            obs, _, terminated, truncated, info = env.step(action)
            grasped = grasped or bool(info["is_src_obj_grasped"])
            if terminated or truncated:
                break
        successes += bool(info["success"])
    env.close()
    result = {"agent": agent_dir, "env": env_spec, "episodes": episodes, "seed": seed, "view": CAMERA,
              "cells": int(heat.size), "calls_object_outside_crop": skipped, "successes": successes}
    for phase, rows in phases.items():
        ranks = np.array([r for r, _ in rows])
        result[phase] = {"calls": len(rows),
                         "share_top5": float(np.mean(ranks < 5)) if len(rows) else None,
                         "median_rank": float(np.median(ranks)) if len(rows) else None,
                         "mean_attention_vs_uniform": float(np.mean([x for _, x in rows])) if rows else None}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--env", default="simpler/widowx_carrot_on_plate")
    parser.add_argument("--episodes", type=int, default=10, help="SimplerEnv's episodes 0..N-1")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", default=None, help="write the result as JSON to this file")
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error(f"--episodes must be at least 1, got {args.episodes}")
    result = phase_ranks(args.agent, args.env, args.episodes, args.seed)
    for phase in ("source_before_grasp", "target_after_grasp"):
        r = result[phase]
        if r["calls"]:
            print(f"{phase}: in the top 5 of {result['cells']} cells in {r['share_top5']:.0%} of {r['calls']} model calls, "
                  f"median rank {r['median_rank']:.0f}, {r['mean_attention_vs_uniform']:.1f}x uniform")
    print(f"{result['calls_object_outside_crop']} calls with the object outside the crop; "
          f"{result['successes']}/{args.episodes} successes")
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
