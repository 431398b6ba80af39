"""The shipped checkpoints act exactly as recorded in tests/data/shipped_actions.json (actions,
attention maps, the DTP-wrapped agent's actions, residual RL's observation), so refactors that must
not change behaviour are held to it. A checkpoint retrained since is not compared: the test names the
command that records it again."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "shipped_actions", Path(__file__).resolve().parents[1] / "benchmarks" / "shipped_actions.py")
shipped = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shipped)
CHECKPOINTS, REFERENCE, REGENERATE, record, sha256 = (
    shipped.CHECKPOINTS, shipped.REFERENCE, shipped.REGENERATE, shipped.record, shipped.sha256)

SHIPPED = sorted(folder.name for folder in CHECKPOINTS.iterdir() if (folder / "config.json").is_file())


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_acts_as_recorded(name: str, reference: dict) -> None:
    digest = sha256(CHECKPOINTS / name / "model.safetensors")
    expected = reference.get(name)
    if expected is None or expected["model_sha256"] != digest:
        pytest.fail(f"{name}'s model.safetensors (SHA-256 {digest[:12]}) is not the one recorded in {REFERENCE.name}: "
                    f"it was retrained. Record it again with `{REGENERATE}` on code known to act as before")
    got = record(CHECKPOINTS / name)
    assert (got["residual_obs"] is None) == (expected["residual_obs"] is None)
    pairs = [(got["residual_obs"], expected["residual_obs"], "residual observation")] if expected["residual_obs"] else []
    for i, (g, e) in enumerate(zip(got["observations"], expected["observations"], strict=True)):
        assert sorted(g) == sorted(e), f"observation {i}: recorded {sorted(e)}, got {sorted(g)}"
        pairs += [(g[key], e[key], f"observation {i} {key}") for key in g if key != "attention"]
        pairs += [(g["attention"][v], e["attention"][v], f"observation {i} attention {v}") for v in e["attention"]]
    for g, e, what in pairs:
        np.testing.assert_allclose(g, e, atol=2e-5, rtol=0, err_msg=f"{name}: {what}")
