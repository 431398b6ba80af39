"""Does the attention overlay show the target? Rank the named cube's patch in every model call's map.

For each model call of seeded episodes (the agent acting, as in `vla-agents eval`), the named cube's
centre is projected into the agentview frame, mapped through the centre crop the policy sees onto the
attention map's patch grid, and that cell's rank among the map's cells is recorded (0 = hottest). Reports
the share of calls with the target in the top 5 cells, the median rank, and the mean attention on the
target's cell against a uniform map (1 / cells). Calls where the cube is outside the crop are skipped
(and counted).

    python benchmarks/attention_target.py --agent policies/checkpoints/oft-tiny-embedded --env embedded/pick_color --episodes 10
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from vla_agents.agent import load_agent
from vla_agents.sim import make_env
from vla_agents.sim.projection import grid_cell, project


def target_ranks(agent_dir: str, env_spec: str, episodes: int, seed: int, view: str = "agentview") -> dict:
    agent, env = load_agent(agent_dir), make_env(env_spec)
    sim = env.unwrapped.sim
    camera = {"agentview": "agentview", "eye_in_hand": "robot0_eye_in_hand"}[view]
    ranks, ratios, skipped, successes = [], [], 0, 0
    for episode_seed in range(seed, seed + episodes):
        obs, info = env.reset(seed=episode_seed)
        agent.reset()
        done = False
        while not done:
            target = sim.cube_pos(env.unwrapped.target)  # where the cube is in the frame the model sees
            calls = agent.model_calls
            action = agent.act(obs)
            if agent.model_calls > calls:
                heat = agent.last_attention.heatmaps[view]
                uv, in_view = project(sim.sim, camera, target[None], env.unwrapped.image_size)
                size = env.unwrapped.image_size
                cell = int(grid_cell(uv, heat.shape[0], size, agent.recipe.backbone.crop_area)[0]) if in_view[0] else -1
                if cell < 0:
                    skipped += 1
                else:
                    flat = heat.ravel()
                    ranks.append(int((flat > flat[cell]).sum()))
                    ratios.append(float(flat[cell] / flat.sum() * flat.size))
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        successes += bool(info["success"])
    env.close()
    ranks_arr = np.array(ranks)
    return {
        "agent": agent_dir, "env": env_spec, "episodes": episodes, "seed": seed, "view": view,
        "cells": int(heat.size), "calls": len(ranks), "calls_target_outside_crop": skipped, "successes": successes,
        "share_top5": float(np.mean(ranks_arr < 5)) if len(ranks) else None,
        "median_rank": float(np.median(ranks_arr)) if len(ranks) else None,
        "mean_attention_vs_uniform": float(np.mean(ratios)) if ratios else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--env", default="embedded/pick_color")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--view", default="agentview", choices=["agentview", "eye_in_hand"])
    parser.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    result = target_ranks(args.agent, args.env, args.episodes, args.seed, args.view)
    print(f"{args.agent} on {args.env}: target in the top 5 of {result['cells']} cells in {result['share_top5']:.0%} of "
          f"{result['calls']} model calls, median rank {result['median_rank']:.0f}, attention on the target "
          f"{result['mean_attention_vs_uniform']:.2f}x uniform ({result['calls_target_outside_crop']} calls with the "
          f"target outside the crop; {result['successes']}/{args.episodes} successes)")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
