"""Does a trained agent read the cube's position? Its first action against the expert's, on unseen scenes.

At the start of an embedded episode the expert's action points from the gripper to the target cube,
so over fresh scenes a policy that localizes the cube correlates with it on x and y. A policy that
replays the mean trajectory shows a correlation near 0 on y (and a small spread), whatever its loss.
On tasks with several cubes (pick_color) it also says which cube the first action heads for (the
largest cosine between the action's xy and the gripper-to-cube xy): the named one, or the nearest.
A policy that ignores the instruction heads for the named cube at the chance rate, 1 / cubes. Actions
are clipped per axis, so far from the cubes a first action is often a diagonal: the expert's own first
action heads for the named cube by this rule in only 80% of 30 pick_color scenes. So the check also rolls
the agent (and the expert) out to where the gripper first comes down or closes, and says which cube is
under it (`vla_agents.eval.heading`): the cube it goes for, 100% named for the expert. The
instruction check says how much the first chunk moves when only the instruction changes (every
instruction the task can give, same scene), against how much it moves from one scene to the next.
Half a minute on a CPU, so it can follow every intermediate checkpoint of a long training:

    python benchmarks/grounding_check.py --agent runs/oft/checkpoint --env embedded/lift --scenes 20
"""
from __future__ import annotations

import argparse

import numpy as np

from vla_agents.agent import load_agent
from vla_agents.eval.heading import cube_gone_for, cube_headed_for
from vla_agents.sim import make_env
from vla_agents.sim.experts import ScriptedExpert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", required=True, help="agent folder (save_pretrained or a training checkpoint)")
    parser.add_argument("--env", default="embedded/lift")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1000, help="first scene seed (evaluation seeds start at 1000)")
    args = parser.parse_args()
    if args.scenes < 2:
        parser.error(f"--scenes must be at least 2 to compute a correlation, got {args.scenes}")

    agent, env, expert = load_agent(args.agent), make_env(args.env), ScriptedExpert()
    expert.bind(env)
    predicted, wanted, heads_for_named, heads_for_nearest, by_instruction = [], [], [], [], []
    expert_heads_for_named, goes_for_named, expert_goes_for_named = [], [], []
    for seed in range(args.seed, args.seed + args.scenes):
        obs, _ = env.reset(seed=seed)
        expert.reset()
        agent.reset()
        wanted.append(expert.act(obs)[:2])
        predicted.append(agent.act_chunk(obs)[0, :2])
        to_cube = {c: (env.sim.cube_pos(c) - env.sim.eef_pos())[:2] for c in env.sim.colors}
        heads_for = cube_headed_for(predicted[-1], to_cube)
        heads_for_named.append(heads_for == env.target)
        heads_for_nearest.append(heads_for == min(to_cube, key=lambda c: np.linalg.norm(to_cube[c])))
        expert_heads_for_named.append(cube_headed_for(wanted[-1], to_cube) == env.target)
        for act, record in ((agent.act, goes_for_named), (expert.act, expert_goes_for_named)):
            obs, _ = env.reset(seed=seed)
            agent.reset()
            expert.reset()
            record.append(cube_gone_for(act, env, obs) == env.target)
        obs, _ = env.reset(seed=seed)
        chunks = []
        for instruction in env.instructions:
            agent.reset()
            chunks.append(agent.act_chunk({**obs, "language_instruction": instruction})[:, :3])
        by_instruction.append(np.array(chunks))
    n_cubes = len(env.sim.colors)
    env.close()
    predicted, wanted = np.array(predicted), np.array(wanted)
    for axis, name in enumerate("xy"):
        corr = np.corrcoef(predicted[:, axis], wanted[:, axis])[0, 1]
        print(f"{name}: correlation {corr:+.2f}   spread (std) agent {predicted[:, axis].std():.3f}, expert {wanted[:, axis].std():.3f}")
    if n_cubes > 1:
        print(f"first action heads for the named cube in {np.mean(heads_for_named):.0%} of scenes, the nearest in "
              f"{np.mean(heads_for_nearest):.0%} (ignoring the instruction: {1 / n_cubes:.0%} named; the expert's own "
              f"clipped first action, same rule: {np.mean(expert_heads_for_named):.0%})")
        print(f"goes for the named cube (under the gripper when it first comes down or closes) in "
              f"{np.mean(goes_for_named):.0%} of scenes ({sum(goes_for_named)}/{len(goes_for_named)}; "
              f"the expert {sum(expert_goes_for_named)}/{len(expert_goes_for_named)})")
    if len(by_instruction[0]) > 1:
        chunks = np.array(by_instruction)  # scene, instruction, step, xyz
        across_instructions = np.abs(chunks - chunks.mean(axis=1, keepdims=True)).mean()
        across_scenes = np.abs(chunks - chunks.mean(axis=0, keepdims=True)).mean()
        print(f"first chunk's xyz, mean |deviation|: across instructions (same scene) {across_instructions:.3f}, "
              f"across scenes (same instruction) {across_scenes:.3f}")


if __name__ == "__main__":
    main()
