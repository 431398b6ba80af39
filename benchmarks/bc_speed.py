"""Behaviour-cloning throughput (samples/s) of this checkout against an earlier commit, in one run.

Each configuration trains in its own subprocess with one thread, twice (W and W+N steps), and the
difference of the two wall times gives the rate of N steps with set-up cancelled out. The baseline is
the package as it was at `--baseline-ref`, exported with `git archive`, on the same data file.

    OMP_NUM_THREADS=1 python benchmarks/bc_speed.py --policies oft vla_adapter --steps 40

Rows: the baseline; this checkout in fp32 with the byte tokenizer (the batched image pipeline alone);
with bf16 autocast; and the default tiny recipe (pretrained backbone with its word-level tokenizer,
bf16, auxiliary grounding loss).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the architecture the baseline commit builds, where a recipe's default has changed since (issue 37)
SAME_ARCHITECTURE = {"vla_adapter": {"variant": "original"}}
TRAIN = """
import json, sys, time, torch
torch.set_num_threads(1)
from vla_agents.train.bc import train_bc
policy, data, steps, out, kwargs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
tic = time.perf_counter()
train_bc(policy, [data], steps, out, batch_size=16, progress=False, **kwargs)
print(time.perf_counter() - tic)
"""


def timed_run(package_root: Path, policy: str, data: str, steps: int, kwargs: dict) -> float:
    env = {**os.environ, "PYTHONPATH": str(package_root), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-c", TRAIN, policy, data, str(steps), out, json.dumps(kwargs)],
                              env=env, cwd=package_root, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{policy} {kwargs} failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def samples_per_s(package_root: Path, policy: str, data: str, warmup: int, steps: int, kwargs: dict) -> float:
    short = timed_run(package_root, policy, data, warmup, kwargs)
    long = timed_run(package_root, policy, data, warmup + steps, kwargs)
    return 16 * steps / (long - short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="+", default=["oft", "vla_adapter"])
    parser.add_argument("--data", default=None, help="an HDF5 file with target positions (default: collect 10 pick_color episodes)")
    parser.add_argument("--baseline-ref", default="e7ecb1b", help="the commit to compare against (today's code)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--backbone", default=None,
                        help="pretrained backbone folder for the grounded row (default: the tiny recipe's backbone_path)")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(args.data).resolve()) if args.data else str(Path(tmp) / "pick_color10.hdf5")
        if not args.data:
            from vla_agents.sim.collect import collect_demos

            collect_demos("embedded/pick_color", 10, data, seed=100000)
        baseline = Path(tmp) / "baseline"
        baseline.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_ref, "vla_agents", "policies", "envs"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        no_grounding = {"backbone_path": None, "aux_target_weight": 0.0}
        grounded = {"overrides": {"backbone_path": args.backbone}} if args.backbone else {}
        configs = [
            (f"baseline ({args.baseline_ref}): byte tokenizer, fp32", baseline, {}),
            ("this checkout: byte tokenizer, fp32", ROOT, {"overrides": no_grounding, "mixed_precision": "no"}),
            ("this checkout: byte tokenizer, bf16", ROOT, {"overrides": no_grounding}),
            ("this checkout: pretrained backbone (word tokenizer), bf16, auxiliary loss", ROOT, grounded),
        ]
        rows = []
        for policy in args.policies:
            for name, root, kwargs in configs:
                if root == ROOT and policy in SAME_ARCHITECTURE:
                    kwargs = {**kwargs, "overrides": {**kwargs.get("overrides", {}), **SAME_ARCHITECTURE[policy]}}
                rate = samples_per_s(root, policy, data, args.warmup, args.steps, kwargs)
                rows.append({"policy": policy, "config": name, "samples_per_s": round(rate, 1)})
                print(f"{policy:12s} {rate:7.1f} samples/s  {name}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "batch_size": 16, "threads": 1, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
