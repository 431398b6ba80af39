"""Behaviour cloning launched as 2 CPU processes (torchrun; accelerate over gloo): the learning rate at every
step and the trained weights are a 1-process run's with the same global batch, exactly one process
writes, and a 2-process run resumes under 2 processes (and is refused under 1)."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_bc import SMALL, demos  # noqa: F401 (the fixture)

from vla_agents.train.bc import train_bc

pytestmark = pytest.mark.slow
# No random crop: both runs see the same pixels. Chunks of one action: no padded steps, so the mean of the two
# processes' losses is the loss of their whole batch.
EXACT = {**SMALL, "crop_area": 1.0, "chunk": 1, "n_open_loop": 1}
ROOT = Path(__file__).resolve().parents[1]

# Runs `vla-agents` in a launched process and records, through Python's audit hooks, every file
# and folder the process writes, renames, creates or removes under WATCHED: one JSON list per rank.
DRIVER = """
import atexit, json, os, sys
watched, record = os.path.realpath(sys.argv[1]), sys.argv[2]
writes = []

def audit(event, args):
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        paths = [path] if writing else []
    elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
        paths = list(args[:2] if event == "os.rename" else args[:1])
    else:
        return
    for p in paths:
        if isinstance(p, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(p)).startswith(watched):
            writes.append([event, os.fsdecode(p)])

sys.addaudithook(audit)
atexit.register(lambda: open(f"{record}/rank{os.environ['RANK']}.json", "w").write(json.dumps(writes)))
from vla_agents.cli import main
sys.exit(main(sys.argv[3:]))
"""


def launch(tmp_path: Path, watched: Path, *argv: str) -> tuple[str, dict[int, list]]:
    """`torchrun --nproc_per_node 2 ... vla-agents argv` (on a CPU, accelerate launch runs one process or
    needs MPI): its output and each rank's writes."""
    driver, record = tmp_path / "driver.py", tmp_path / f"writes-{len(list(tmp_path.glob('writes-*')))}"
    driver.write_text(DRIVER)
    record.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port), str(driver), str(watched), str(record), *argv],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout, {r: json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)}


def train_args(demos: Path, out: Path, **flags: object) -> list[str]:
    options = {"--policy": "oft", "--data": demos, "--batch-size": 2, "--lr": 1e-3, "--seed": 4,
               "--mixed-precision": "no", "--overrides": json.dumps(EXACT), "--out": out, **flags}
    words = [[option] if value is True else [option, str(value)] for option, value in options.items()]
    return ["train", "bc", *[word for pair in words for word in pair]]


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def assert_same_weights(a: Path, b: Path) -> None:
    """Equal up to float rounding: two processes average two half-batch gradients, one process the whole.
    Attention key biases are left out: softmax is blind to them, so their gradient is rounding noise, which
    Adam scales up to the learning rate."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in (k for k in wa if not k.endswith("attn.k.bias")):
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_processes_run_the_one_process_schedule_and_one_writes(demos: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "two"
    stdout, writes = launch(tmp_path, out.parent, *train_args(demos, out, **{"--steps": 6, "--warmup-steps": 2,
                                                                            "--save-every": 3}))
    one = train_bc("oft", [demos], steps=6, out_dir=tmp_path / "one", batch_size=4, lr=1e-3, warmup_steps=2, seed=4,
                   overrides=EXACT, progress=False, mixed_precision="no")
    # linear warmup over 2 steps, then a cosine over the remaining 4, by hand:
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * (k - 2) / 4)) for k in (3, 4, 5, 6)]
    assert [r["lr"] for r in one.history] == pytest.approx([5e-4, 1e-3, *cosine], abs=1e-12)
    assert [r["lr"] for r in log(out)] == [r["lr"] for r in one.history]
    assert [r["loss"] for r in log(out)] == pytest.approx([r["loss"] for r in one.history], rel=1e-4)  # float32 sums in another order
    assert_same_weights(out, tmp_path / "one")
    assert stdout.count("agent saved to") == 1
    assert writes[1] == [], writes[1][:5]
    assert {Path(p).name for _, p in writes[0]} >= {"train_log.jsonl", "checkpoint", "tokenizer_config.json"}


def test_a_two_process_run_resumes_under_two_processes_only(demos: Path, tmp_path: Path) -> None:
    """The multistep schedule drops x0.1 at step 4, past the step-3 checkpoint the run resumes from."""
    out, multistep = tmp_path / "runs" / "two", {**EXACT, "lr_schedule": "multistep", "lr_decay_step": 4}
    first = train_args(demos, out, **{"--steps": 3, "--save-every": 3, "--overrides": json.dumps(multistep)})
    launch(tmp_path, out.parent, *first)
    launch(tmp_path, out.parent, *train_args(demos, out, **{"--steps": 6, "--save-every": 3, "--resume": True,
                                                           "--overrides": json.dumps(multistep)}))
    assert [r["step"] for r in log(out)] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in log(out)] == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4], abs=1e-12)
    one = train_bc("oft", [demos], steps=6, out_dir=tmp_path / "one", batch_size=4, lr=1e-3, seed=4, overrides=multistep,
                   progress=False, mixed_precision="no")
    # the losses, not the weights: at a constant 1e-3, Adam lifts the rounding noise of near-zero gradients to
    # weight differences of about 1e-3, which move the loss by less than this tolerance
    assert [r["loss"] for r in log(out)] == pytest.approx([r["loss"] for r in one.history], rel=1e-4)  # float32 sums in another order
    with pytest.raises(ValueError, match=rf"--resume: the checkpoint in {out / 'checkpoint'} was trained with "
                                         r"processes=2 \(asked: 1\)"):
        train_bc("oft", [demos], steps=6, out_dir=out, resume=True, seed=4, overrides=multistep, progress=False)
