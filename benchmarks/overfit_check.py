"""Can a policy memorise the first action of a few demonstrations? A five-minute gate before hours of BC.

The first action of an `embedded/lift` episode moves the gripper towards the cube, so its lateral
component (y) is set by where the cube is in the image and by nothing else the policy sees. A model
that cannot fit y on 32 start frames in a few hundred full-batch steps will not learn to reach for
the cube in any amount of training; it sits on the L1 median (predicting y = 0 for every frame).

    vla-agents collect embedded/lift --episodes 200 --seed 100000 --out runs/data/lift200.hdf5
    OMP_NUM_THREADS=1 python benchmarks/overfit_check.py --policy oft --steps 250
    OMP_NUM_THREADS=1 python benchmarks/overfit_check.py --policy oft --set llm_init_std=0.02   # HF's default

Prints the L1 per axis of chunk step 0 every 25 steps. Images are centre-cropped (`crop_area` 1.0)
so the frames are fixed; `--set key=value` overrides recipe keys (values are JSON).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from vla_agents.agent import make_agent
from vla_agents.data.dataset import DemoDataset
from vla_agents.models.blocks import action_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="oft")
    parser.add_argument("--data", default="runs/data/lift200.hdf5")
    parser.add_argument("--frames", type=int, default=32, help="episode-start frames to fit (one per episode)")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides, e.g. llm_init_std=0.02")
    args = parser.parse_args()

    overrides = {"crop_area": 1.0}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            parser.error(f"--set {key}: value must be JSON (a number, true/false, \"text\"), got {value!r}")

    torch.manual_seed(args.seed)
    dataset = DemoDataset([args.data], chunk_size=8)
    lengths = [len(episode) for episode in dataset.episodes[: args.frames]]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]  # samples are (episode, t) in order
    agent = make_agent(args.policy, "tiny", adapter=dataset.adapter_name, stats=dataset.stats, **overrides)
    batch = agent.collate([dataset[i] for i in starts], train=False)
    first = batch["actions"][:, 0]
    median_l1 = (first[:, 1] - first[:, 1].median()).abs().mean().item()
    print(f"{args.policy}, {len(starts)} frames, overrides {overrides}: y targets span "
          f"[{first[:, 1].min():.2f}, {first[:, 1].max():.2f}], the median predictor's y L1 is {median_l1:.2f}")

    optimizer = torch.optim.AdamW([p for p in agent.model.parameters() if p.requires_grad], lr=args.lr)
    agent.model.train()
    start = time.perf_counter()
    for step in range(args.steps + 1):
        actions = agent.model(batch).actions
        loss = action_loss(actions, batch["actions"], batch["action_is_pad"], agent.recipe.training.loss)
        if step % 25 == 0:
            err = (actions[:, 0] - first).abs().mean(0).detach()
            print(f"step {step:4d}  loss {loss.item():.3f}  first-action L1 x {err[0]:.2f} y {err[1]:.2f} z {err[2]:.2f}"
                  f"  spread of predicted y {actions[:, 0, 1].std().item():.3f}  {time.perf_counter() - start:.0f} s", flush=True)
        if step == args.steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
