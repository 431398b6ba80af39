"""The hub, offline: `load_agent("org/name")` reads a Hugging Face cache laid out as huggingface_hub lays
it (blobs, refs, snapshots of symlinks) with HF_HUB_OFFLINE set, and `push_to_hub` / `vla-agents push`
send the agent folder and a model card to a stand-in that records what would be uploaded."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL
from vla_agents.agent import make_agent
from vla_agents.data.normalization import compute_norm_stats
from vla_agents.hub import push_to_hub

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    agent = make_agent("oft", stats=compute_norm_stats(rng.normal(size=(50, 7)), rng.normal(size=(50, 8))), **SMALL)
    agent.training = {"data": ["lift.hdf5"], "steps": 40, "batch_size": 8, "processes": 2, "lr": 5e-4, "seed": 0}
    folder = agent.save_pretrained(tmp_path_factory.mktemp("agent") / "oft")
    (folder / "checkpoint").mkdir()
    (folder / "checkpoint" / "trainer_state.pt").write_bytes(b"not for the hub")
    return folder


def lay_out_cache(cache: Path, repo_id: str, folder: Path, commit: str, ref: str = "main") -> Path:
    """huggingface_hub's cache: models--owner--name/ with blobs/<etag> (sha256 for LFS files, the git blob
    sha1 for the others), snapshots/<commit>/<path> as relative symlinks to them, refs/<ref> holding the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and "checkpoint" not in p.parts):
        data, rel = file.read_bytes(), file.relative_to(folder)
        lfs = file.suffix == ".safetensors"
        etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / etag).write_bytes(data)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(rel.parts) + 1), "blobs", etag))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return repo


def offline(cache: Path, code: str) -> subprocess.CompletedProcess:
    """Python `code` in a fresh process with HF_HUB_OFFLINE=1 and HF_HUB_CACHE=cache, as a user sets them."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


def test_load_agent_reads_a_hub_id_from_the_cache_offline(agent_dir: Path, tmp_path: Path) -> None:
    from vla_agents.agent import load_agent

    cache, local = tmp_path / "hub", load_agent(agent_dir)
    torch.manual_seed(1)
    other = make_agent("oft", stats=local.stats, **SMALL)  # other weights: the tag v2's
    lay_out_cache(cache, "org/oft-lift", agent_dir, COMMIT)
    lay_out_cache(cache, "org/oft-lift", other.save_pretrained(tmp_path / "v2"), "f" * 40, ref="v2")
    run = offline(cache, """
import json, numpy as np
from vla_agents.agent import load_agent
obs = {"agentview_image": np.zeros((32, 32, 3), np.uint8), "robot0_eye_in_hand_image": np.zeros((32, 32, 3), np.uint8),
       "robot0_eef_pos": np.zeros(3), "robot0_eef_quat": np.array([0, 0, 0, 1.0]), "robot0_gripper_qpos": np.zeros(2),
       "robot0_joint_pos": np.zeros(7), "language_instruction": "lift"}
out = {}
for revision in (None, "v2", "0123456789abcdef0123456789abcdef01234567"):
    agent = load_agent("org/oft-lift", revision=revision)
    out[str(revision)] = agent.act(obs).tolist()
try:
    load_agent("org/missing")
except FileNotFoundError as e:
    out["missing"] = str(e)
print(json.dumps(out))
""")
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    obs = {"agentview_image": np.zeros((32, 32, 3), np.uint8), "robot0_eye_in_hand_image": np.zeros((32, 32, 3), np.uint8),
           "robot0_eef_pos": np.zeros(3), "robot0_eef_quat": np.array([0, 0, 0, 1.0]), "robot0_gripper_qpos": np.zeros(2),
           "robot0_joint_pos": np.zeros(7), "language_instruction": "lift"}
    main_action, v2_action = local.act(obs), other.act(obs)
    assert not np.allclose(main_action, v2_action)
    for revision, expected in (("None", main_action), (COMMIT, main_action), ("v2", v2_action)):
        np.testing.assert_allclose(out[revision], expected, rtol=1e-5, atol=1e-6, err_msg=revision)
    assert out["missing"] == ("'org/missing' (revision main) is neither an agent folder here nor in the Hugging Face "
                              f"cache ({cache}), and HF_HUB_OFFLINE is set: download it once online (hf download "
                              "org/missing), or give the path of an agent folder")


def test_a_revision_is_for_hub_ids_only(agent_dir: Path) -> None:
    from vla_agents.agent import load_agent

    with pytest.raises(ValueError, match=f"revision 'v2' is for hub ids; {agent_dir} is a folder here"):
        load_agent(agent_dir, revision="v2")


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: keeps what create_repo and create_commit would send."""

    def __init__(self, *args, **kwargs) -> None:
        self.repos: list[tuple] = []
        self.commits: list[dict] = []

    def create_repo(self, repo_id: str, private: bool | None = None, exist_ok: bool = False) -> None:
        self.repos.append((repo_id, private, exist_ok))

    def create_commit(self, repo_id: str, operations: list, commit_message: str, revision: str | None = None):
        files = {}
        for op in operations:
            with op.as_file() as f:
                files[op.path_in_repo] = f.read()
        self.commits.append({"repo_id": repo_id, "message": commit_message, "revision": revision, "files": files})
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{COMMIT}"})()


def test_push_sends_the_agent_folder_and_a_model_card_in_one_commit(agent_dir: Path) -> None:
    api = RecordingApi()
    url = push_to_hub(agent_dir, "org/oft-lift", api=api, private=True)
    assert url == f"https://huggingface.co/org/oft-lift/commit/{COMMIT}"
    assert api.repos == [("org/oft-lift", True, True)]
    [commit] = api.commits
    expected = sorted(p.relative_to(agent_dir).as_posix() for p in agent_dir.rglob("*")
                      if p.is_file() and "checkpoint" not in p.parts)
    assert sorted(commit["files"]) == sorted([*expected, "README.md"])
    assert commit["files"]["model.safetensors"] == (agent_dir / "model.safetensors").read_bytes()
    card = commit["files"]["README.md"].decode()
    assert card.startswith("---\nlibrary_name: vla-agents\nlicense: mit\ntags:\n- robotics\n")
    for line in ('agent = load_agent("org/oft-lift")', "- policy: `oft`, recipe scale `tiny`, action chunk 8",
                 "- demonstrations: `lift.hdf5`", "- steps: 40", "- processes: 2", "No evaluation in this folder"):
        assert line in card, line


def test_the_card_reports_an_evaluation_in_the_folder(agent_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(agent_dir, tmp_path / "oft"))
    metrics = {"pc_success": 40.0, "n_episodes": 5}
    (folder / "eval_info.json").write_text(json.dumps({
        "per_task": [{"task_group": "embedded", "task_id": "lift", "metrics": metrics}], "overall": metrics}))
    api = RecordingApi()
    push_to_hub(folder, "org/oft-lift", api=api)
    card = api.commits[0]["files"]["README.md"].decode()
    assert "| lift | 40.0 | 5 |\n| **overall** | **40.0** | 5 |" in card


def test_vla_agents_push(agent_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import huggingface_hub

    from vla_agents.cli import main

    made: list[RecordingApi] = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: made.append(RecordingApi()) or made[-1])
    assert main(["push", str(agent_dir), "org/oft-lift", "--revision", "dev"]) == 0
    assert capsys.readouterr().out == f"pushed {agent_dir} to https://huggingface.co/org/oft-lift/commit/{COMMIT}\n"
    assert made[0].commits[0]["revision"] == "dev" and made[0].repos == [("org/oft-lift", None, True)]
    assert main(["push", str(agent_dir.parent), "org/oft-lift"]) == 2
    assert "is not an agent folder (no config.json)" in capsys.readouterr().err
