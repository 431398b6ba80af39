"""LeRobotDataset v3.0 in and out (`vla-agents convert`), no-op filtering as OpenVLA-OFT's, frames read lazily."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from vla_agents.cli import main as cli
from vla_agents.data import DemoDataset
from vla_agents.data.formats import read_episodes
from vla_agents.data.frames import FrameCache, VideoFrames
from vla_agents.data.hdf5 import DemoWriter, read_demos
from vla_agents.data.lerobot import read_lerobot
from vla_agents.data.noop import keep_steps

STILL = [0, 0, 0, 0, 0, 0, -1.0]


def frames(T: int, size: int = 32, shade: int = 0) -> np.ndarray:
    """Frames far apart from step to step (a 40-level jump in blue), smooth enough for AV1 to keep them close."""
    y, x = np.mgrid[:size, :size]
    return np.stack([np.stack([x * 6, y * 6 + shade, np.full_like(x, 40 * t)], -1) for t in range(T)]).astype(np.uint8)


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two LIBERO-layout episodes of different tasks; the first starts with three no-op steps."""
    path = tmp_path_factory.mktemp("lerobot") / "demos.hdf5"
    rng = np.random.default_rng(0)
    with DemoWriter(path, instruction="put the bowl on the plate") as writer:
        for T, task in ((6, "put the bowl on the plate"), (5, "open the drawer")):
            actions = rng.uniform(-1, 1, (T, 7))
            if T == 6:
                actions[:3] = STILL
            obs = {"agentview_rgb": frames(T), "eye_in_hand_rgb": frames(T, shade=60), "ee_pos": rng.normal(size=(T, 3)),
                   "ee_ori": rng.normal(size=(T, 3)), "gripper_states": rng.normal(size=(T, 2)),
                   "joint_states": rng.normal(size=(T, 7))}
            writer.add_episode(actions, obs, instruction=task)
    return path


@pytest.fixture(scope="module")
def dataset(demos: Path) -> Path:
    out = demos.parent / "dataset"
    assert cli(["convert", str(demos), str(out)]) == 0
    return out


def test_convert_writes_the_v3_layout(dataset: Path) -> None:
    files = sorted(str(p.relative_to(dataset)) for p in dataset.rglob("*") if p.is_file())
    assert files == ["data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet", "meta/info.json",
                     "meta/stats.json", "meta/tasks.parquet", "videos/observation.images.image/chunk-000/file-000.mp4",
                     "videos/observation.images.wrist_image/chunk-000/file-000.mp4"]
    info = json.loads((dataset / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, 11, 2)
    assert info["features"]["observation.state"]["shape"] == [8] and info["features"]["action"]["shape"] == [7]
    assert info["features"]["observation.images.image"]["dtype"] == "video"
    data = pq.read_table(dataset / "data/chunk-000/file-000.parquet")
    assert {"action", "observation.state", "timestamp", "frame_index", "episode_index", "index", "task_index"} <= set(data.column_names)
    assert data["index"].to_pylist() == list(range(11)) and data["frame_index"].to_pylist()[6:] == list(range(5))
    episodes = pq.read_table(dataset / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["length"], e["tasks"], e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [
        (6, ["put the bowl on the plate"], 0, 6), (5, ["open the drawer"], 6, 11)]
    assert episodes[1]["videos/observation.images.image/from_timestamp"] == pytest.approx(6 / 20)
    tasks = pq.read_table(dataset / "meta/tasks.parquet")
    assert tasks["task"].to_pylist() == ["put the bowl on the plate", "open the drawer"]
    assert tasks.schema.pandas_metadata["index_columns"] == ["task"]  # pandas reads the task as the index, as LeRobot does


def test_a_round_trip_keeps_every_episode(demos: Path, dataset: Path) -> None:
    """Vectors exactly (float32); frames within AV1's loss and each at its own step, upside down again."""
    for before, after in zip(read_demos(demos), read_lerobot(dataset), strict=True):
        assert after.instruction == before.instruction and after.adapter == "libero"
        np.testing.assert_allclose(after.actions, before.actions, atol=1e-6)
        for key in ("ee_pos", "ee_ori", "gripper_states", "joint_states"):
            np.testing.assert_allclose(after.obs[key], before.obs[key], atol=1e-6)
        for key in ("agentview_rgb", "eye_in_hand_rgb"):
            original, decoded = np.asarray(before.obs[key]).astype(float), np.asarray(after.obs[key]).astype(float)
            errors = np.abs(decoded[:, None] - original[None]).mean(axis=(2, 3, 4))  # decoded step x original step
            assert np.all(np.argmin(errors, axis=1) == np.arange(len(original))) and errors.diagonal().max() < 8
    back = dataset.parent / "back.hdf5"
    assert cli(["convert", str(dataset), str(back)]) == 0
    assert [ep.instruction for ep in read_demos(back)] == ["put the bowl on the plate", "open the drawer"]


def test_lerobot_libero_without_our_metadata_reads_as_libero(dataset: Path, tmp_path: Path) -> None:
    """LeRobot's own LIBERO conversions: no 'vla_agents' key, no joint states, the task as an unnamed pandas index."""
    plain = tmp_path / "libero"
    shutil.copytree(dataset, plain)
    info = json.loads((plain / "meta/info.json").read_text())
    del info["vla_agents"], info["features"]["observation.states.joint_state"]
    (plain / "meta/info.json").write_text(json.dumps(info))
    tasks = pq.read_table(plain / "meta/tasks.parquet")
    meta = json.dumps({**tasks.schema.pandas_metadata, "index_columns": ["__index_level_0__"]}).encode()
    pq.write_table(tasks.rename_columns(["task_index", "__index_level_0__"]).replace_schema_metadata({b"pandas": meta}),
                   plain / "meta/tasks.parquet")
    episodes = read_lerobot(plain)
    assert [ep.instruction for ep in episodes] == ["put the bowl on the plate", "open the drawer"]
    assert np.all(episodes[0].obs["joint_states"] == 0)
    assert len(DemoDataset([plain], chunk_size=4)) == 11


def test_other_formats_and_versions_are_refused_naming_the_file(dataset: Path, demos: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match=r"has no meta/info.json: not a LeRobotDataset folder"):
        read_episodes(tmp_path)
    old = tmp_path / "v21"
    shutil.copytree(dataset, old)
    info = json.loads((old / "meta/info.json").read_text())
    (old / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(ValueError, match=r"v21/meta/info.json: codebase_version is 'v2.1'; this package reads LeRobotDataset 'v3.0'"):
        read_episodes(old)
    (old / "meta/info.json").write_text(json.dumps({**info, "features": {**info["features"], "action": {"dtype": "float32", "shape": [14]}}}))
    with pytest.raises(ValueError, match=r"features\['action'\] has shape \[14\]; adapter 'libero' takes 7-D actions"):
        read_episodes(old)
    (old / "meta/info.json").write_text(json.dumps(info))
    table = pq.read_table(old / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(table.drop_columns(["length"]), old / "meta/episodes/chunk-000/file-000.parquet")
    with pytest.raises(ValueError, match=r"file-000.parquet: no column\(s\) \['length'\]"):
        read_episodes(old)
    assert cli(["convert", str(demos), str(dataset)]) != 0
    assert f"{dataset} exists; a LeRobotDataset is written into a new folder" in capsys.readouterr().err


def test_noops_are_dropped_as_openvla_oft_drops_them(demos: Path, dataset: Path) -> None:
    """regenerate_libero_dataset.py's is_noop: arm norm < 1e-4, and the gripper equal to the last kept action's."""
    actions = np.array([STILL, STILL, [0.5, 0, 0, 0, 0, 0, -1], STILL, [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 5e-5, 1],
                        [0, 0, 0, 0, 0, 2e-4, 1]])
    # the still start goes; so does a still step with the same gripper; a gripper change alone stays
    assert keep_steps(actions).tolist() == [2, 4, 6]
    # still steps before the first kept one all go, whatever their gripper: "previous" is the last kept action
    assert keep_steps(np.array([[0, 0, 0, 0, 0, 0, 1.0], STILL, [0.5, 0, 0, 0, 0, 0, -1]])).tolist() == [2]
    for source in (demos, dataset):
        assert len(DemoDataset([source], chunk_size=4)) == 11
        assert len(DemoDataset([source], chunk_size=4, without_noops=True)) == 8
    filtered = DemoDataset([demos], chunk_size=4, without_noops=True)
    np.testing.assert_array_equal(filtered.episodes[0].obs["agentview_rgb"][0], frames(6)[3])


def test_hdf5_frames_stay_in_the_file_until_a_sample_needs_them(demos: Path) -> None:
    dataset = DemoDataset([demos], chunk_size=4)
    assert all(isinstance(ep.obs[k], h5py.Dataset) for ep in dataset.episodes for k in ("agentview_rgb", "eye_in_hand_rgb"))
    np.testing.assert_array_equal(dataset[1]["images"]["agentview"], frames(6)[1][::-1, ::-1])


def test_frames_are_decoded_once_per_episode_within_a_byte_budget(dataset: Path) -> None:
    video = dataset / "videos/observation.images.image/chunk-000/file-000.mp4"
    cache = FrameCache(max_bytes=6 * 32 * 32 * 3)  # one 6-step episode
    first, second = (VideoFrames(video, start, T, 20, (32, 32), cache=cache) for start, T in ((0.0, 6), (0.3, 5)))
    assert first[2] is not None and cache.bytes == first.shape[0] * 32 * 32 * 3
    second[0]
    assert cache.bytes == 5 * 32 * 32 * 3 and len(cache._arrays) == 1  # the first was evicted
