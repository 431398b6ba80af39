"""HDF5 layout (ours and LIBERO's), normalization numbers, dataset chunking."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from vla_agents.data import DemoDataset, DemoWriter, NormStats, compute_norm_stats, read_demos

INSTRUCTION = "put the red cube on the blue cube"


def make_obs(rng: np.random.Generator, T: int, size: int = 4) -> dict[str, np.ndarray]:
    return {
        "agentview_rgb": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
        "eye_in_hand_rgb": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
        "ee_pos": rng.normal(size=(T, 3)),
        "ee_ori": rng.normal(size=(T, 3)),
        "gripper_states": rng.normal(size=(T, 2)),
        "joint_states": rng.normal(size=(T, 7)),
    }


def write_file(path, episodes, instruction=INSTRUCTION):
    with DemoWriter(path, instruction, env_name="embedded/stack", env_kwargs={"image_size": 4}) as w:
        for actions, obs in episodes:
            w.add_episode(actions, obs)


def test_hdf5_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [(rng.normal(size=(T, 7)).astype(np.float32), make_obs(rng, T)) for T in (5, 3)]
    path = tmp_path / "demos.hdf5"
    write_file(path, episodes)
    assert not (tmp_path / "demos.hdf5.tmp").exists()

    read = read_demos(path)
    assert len(read) == 2
    for (actions, obs), ep in zip(episodes, read):
        assert ep.instruction == INSTRUCTION
        np.testing.assert_array_equal(ep.actions, actions)
        assert set(ep.obs) == set(obs)
        for k in obs:
            np.testing.assert_array_equal(ep.obs[k], obs[k])

    with h5py.File(path, "r") as f:
        data = f["data"]
        assert sorted(data) == ["demo_0", "demo_1"]
        assert data.attrs["total"] == 8 and data.attrs["num_demos"] == 2
        assert data.attrs["env_name"] == "embedded/stack"
        info = json.loads(data.attrs["problem_info"])
        assert info["language_instruction"] == INSTRUCTION and info["problem_name"] == "embedded/stack"
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "embedded/stack" and env_args["env_kwargs"] == {"image_size": 4}
        demo = data["demo_0"]
        assert demo.attrs["num_samples"] == 5
        np.testing.assert_array_equal(demo["rewards"][()], [0, 0, 0, 0, 1])
        np.testing.assert_array_equal(demo["dones"][()], [0, 0, 0, 0, 1])
        assert sorted(demo["obs"]) == sorted(episodes[0][1])


def test_writer_is_atomic_on_error(tmp_path):
    path = tmp_path / "demos.hdf5"
    rng = np.random.default_rng(0)
    with pytest.raises(RuntimeError, match="boom"):
        with DemoWriter(path, INSTRUCTION) as w:
            w.add_episode(np.zeros((2, 7), np.float32), make_obs(rng, 2))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_instruction_per_episode(tmp_path):
    """Templated tasks store each episode's wording; the file keeps the template as LIBERO's task."""
    rng = np.random.default_rng(0)
    with DemoWriter(tmp_path / "a.hdf5", instruction="pick up the {target} cube") as w:
        w.add_episode(np.zeros((2, 7), np.float32), make_obs(rng, 2), instruction="pick up the red cube")
        w.add_episode(np.zeros((2, 7), np.float32), make_obs(rng, 2), instruction="pick up the blue cube")
    episodes = read_demos(tmp_path / "a.hdf5")
    assert [e.instruction for e in episodes] == ["pick up the red cube", "pick up the blue cube"]
    with h5py.File(tmp_path / "a.hdf5", "r") as f:
        assert json.loads(f["data"].attrs["problem_info"])["language_instruction"] == "pick up the {target} cube"
    with pytest.raises(ValueError, match="no instruction"):
        with DemoWriter(tmp_path / "b.hdf5") as w:
            w.add_episode(np.zeros((2, 7), np.float32), make_obs(rng, 2))
    assert not (tmp_path / "b.hdf5").exists() and not (tmp_path / "b.hdf5.tmp").exists()


@pytest.mark.parametrize("change, expected", [
    (lambda a, o: (a[:, :6], o), r"actions must have shape \(T, 7\)"),
    (lambda a, o: (a, {k: v for k, v in o.items() if k != "ee_ori"}), r"missing key\(s\) \['ee_ori'\]"),
    (lambda a, o: (a, {**o, "agentview_rgb": o["agentview_rgb"].astype(np.float32)}), r"'agentview_rgb' must be uint8"),
    (lambda a, o: (a, {**o, "gripper_states": o["gripper_states"][:, :1]}), r"'gripper_states' must have shape \(3, 2\)"),
])
def test_writer_rejects_bad_episode(tmp_path, change, expected):
    rng = np.random.default_rng(0)
    actions, obs = change(np.zeros((3, 7), np.float32), make_obs(rng, 3))
    with DemoWriter(tmp_path / "x.hdf5", INSTRUCTION) as w:
        with pytest.raises(ValueError, match=expected):
            w.add_episode(actions, obs)


def write_libero_file(path, rng, lengths=(4, 6), drop=None):
    """A file with exactly LIBERO's own layout (`scripts/create_dataset.py`), written with raw h5py."""
    with h5py.File(path, "w") as f:
        grp = f.create_group("data")
        grp.attrs["env_name"] = "Libero_Tabletop_Manipulation"
        grp.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop_manipulation", "domain_name": "robosuite",
                                                "language_instruction": "open the top drawer of the cabinet"})
        grp.attrs["macros_image_convention"] = "opengl"
        grp.attrs["bddl_file_name"] = "libero/bddl_files/libero_goal/open_the_top_drawer_of_the_cabinet.bddl"
        grp.attrs["bddl_file_content"] = "(define (problem ...))"
        grp.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Libero_Tabletop_Manipulation", "env_kwargs": {}})
        episodes = []
        # demo_10 before demo_2 in h5py's alphabetical order: the reader must sort numerically
        for i, T in zip((2, 10), lengths):
            demo = grp.create_group(f"demo_{i}")
            obs = make_obs(rng, T, size=8)
            obs["ee_states"] = np.concatenate([obs["ee_pos"], obs["ee_ori"]], axis=1)
            for k, v in obs.items():
                if (f"demo_{i}", k) != drop:
                    demo.create_dataset(f"obs/{k}", data=v)
            actions = rng.normal(size=(T, 7))  # LIBERO stores float64 actions
            if (f"demo_{i}", "actions") != drop:
                demo.create_dataset("actions", data=actions)
            demo.create_dataset("states", data=rng.normal(size=(T, 79)))
            demo.create_dataset("robot_states", data=rng.normal(size=(T, 9)))
            demo.create_dataset("rewards", data=np.eye(T, dtype=np.uint8)[-1])
            demo.create_dataset("dones", data=np.eye(T, dtype=np.uint8)[-1])
            demo.attrs["num_samples"] = T
            demo.attrs["init_state"] = rng.normal(size=79)
            episodes.append((actions, obs))
        grp.attrs["num_demos"] = len(lengths)
        grp.attrs["total"] = sum(lengths)
    return episodes


def test_reads_libero_layout(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "open_the_top_drawer_of_the_cabinet_demo.hdf5"
    written = write_libero_file(path, rng)
    episodes = read_demos(path)
    assert [len(ep) for ep in episodes] == [4, 6]
    for (actions, obs), ep in zip(written, episodes):
        assert ep.instruction == "open the top drawer of the cabinet"
        assert ep.actions.dtype == np.float32
        np.testing.assert_array_equal(ep.actions, actions.astype(np.float32))
        assert "ee_states" not in ep.obs
        for k in ("agentview_rgb", "eye_in_hand_rgb", "ee_pos", "ee_ori", "gripper_states", "joint_states"):
            np.testing.assert_array_equal(ep.obs[k], obs[k])


@pytest.mark.parametrize("drop, expected", [
    (("demo_10", "actions"), r"demo_10 has no 'actions'"),
    (("demo_2", "gripper_states"), r"demo_2/obs is missing key\(s\) \['gripper_states'\]"),
])
def test_bad_libero_file_names_file_demo_key(tmp_path, drop, expected):
    path = tmp_path / "bad.hdf5"
    write_libero_file(path, np.random.default_rng(0), drop=drop)
    with pytest.raises(ValueError, match=r"bad\.hdf5.*" + expected):
        read_demos(path)


def test_missing_data_group_and_instruction(tmp_path):
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("mask")
    with pytest.raises(ValueError, match=r"empty\.hdf5.*no 'data' group"):
        read_demos(tmp_path / "empty.hdf5")
    with h5py.File(tmp_path / "noinfo.hdf5", "w") as f:
        f.create_group("data").attrs["problem_info"] = json.dumps({"problem_name": "x"})
    with pytest.raises(ValueError, match=r"noinfo\.hdf5.*language_instruction"):
        read_demos(tmp_path / "noinfo.hdf5")


def test_norm_stats_hand_computed():
    x = np.tile(np.arange(101, dtype=np.float64)[:, None], (1, 7))  # 0..100 in every dim
    stats = compute_norm_stats(x, x[:, :3] * 2)
    np.testing.assert_allclose(stats.action.q01, 1.0)
    np.testing.assert_allclose(stats.action.q99, 99.0)
    np.testing.assert_allclose(stats.action.mean, 50.0)
    np.testing.assert_allclose(stats.action.std, np.arange(101).std())
    np.testing.assert_array_equal(stats.action.min, 0.0)
    np.testing.assert_array_equal(stats.action.max, 100.0)
    np.testing.assert_array_equal(stats.action.mask, [True] * 6 + [False])
    np.testing.assert_array_equal(stats.proprio.mask, [True] * 3)
    np.testing.assert_allclose(stats.proprio.q99, 198.0)

    a = np.array([1.0, 99.0, 50.0, 0.0, 200.0, 25.5, 0.7])
    y = stats.normalize_action(a)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [-1.0, 1.0, 0.0, -1.0, 1.0, -0.5, 0.7], atol=1e-6)
    np.testing.assert_allclose(stats.unnormalize_action(np.array([-1, 1, 0, 0.5, -0.5, 0.25, -1.0])),
                               [1.0, 99.0, 50.0, 74.5, 25.5, 62.25, -1.0], atol=1e-5)
    np.testing.assert_allclose(stats.normalize_proprio(np.array([2.0, 198.0, 100.0])), [-1, 1, 0], atol=1e-6)
    np.testing.assert_allclose(stats.unnormalize_proprio(np.array([-1.0, 1.0, 0.0])), [2, 198, 100], atol=1e-5)
    with pytest.raises(ValueError, match="last dimension is 7"):
        stats.normalize_action(np.zeros(6))


def test_norm_stats_dict_round_trip_and_validation():
    rng = np.random.default_rng(0)
    stats = compute_norm_stats(rng.normal(size=(50, 7)), rng.normal(size=(50, 8)))
    d = json.loads(json.dumps(stats.to_dict()))
    back = NormStats.from_dict(d)
    for field in ("action", "proprio"):
        for k in ("q01", "q99", "mean", "std", "min", "max", "mask"):
            np.testing.assert_array_equal(getattr(getattr(back, field), k), getattr(getattr(stats, field), k))
    assert back.action.mask.dtype == bool

    without_mask = json.loads(json.dumps(d))
    del without_mask["proprio"]["mask"]  # OpenVLA's proprio stats have no mask
    np.testing.assert_array_equal(NormStats.from_dict(without_mask).proprio.mask, [True] * 8)

    bad = json.loads(json.dumps(d))
    bad["action"]["q99"] = bad["action"]["q99"][:6]
    with pytest.raises(ValueError, match=r"'action'\.q99 must have length 7"):
        NormStats.from_dict(bad)
    bad = json.loads(json.dumps(d))
    del bad["proprio"]["std"]
    with pytest.raises(ValueError, match=r"'proprio' is missing key\(s\) \['std'\]"):
        NormStats.from_dict(bad)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['proprio'\]"):
        NormStats.from_dict({"action": d["action"]})


def test_dataset_chunks_padding_and_tasks(tmp_path):
    rng = np.random.default_rng(0)
    ep_a = (np.arange(5 * 7, dtype=np.float32).reshape(5, 7), make_obs(rng, 5))
    ep_b = (-np.arange(3 * 7, dtype=np.float32).reshape(3, 7), make_obs(rng, 3))
    write_file(tmp_path / "b.hdf5", [ep_a], instruction="zzz stack")
    write_file(tmp_path / "a.hdf5", [ep_b], instruction="aaa lift")
    ds = DemoDataset([tmp_path / "b.hdf5", tmp_path / "a.hdf5"], chunk_size=4)
    assert len(ds) == 8
    assert ds.instructions == ["aaa lift", "zzz stack"]
    all_actions = np.concatenate([ep_a[0], ep_b[0]])
    np.testing.assert_allclose(ds.stats.action.q01, np.quantile(all_actions, 0.01, axis=0))

    item = ds[3]  # episode a, t = 3 of 5: steps 3, 4, then two pads
    assert item["instruction"] == "zzz stack" and item["task_index"] == 1
    np.testing.assert_array_equal(item["action_is_pad"], [False, False, True, True])
    expected = ds.stats.normalize_action(ep_a[0][[3, 4, 4, 4]])
    assert item["actions"].dtype == np.float32 and item["actions"].shape == (4, 7)
    np.testing.assert_array_equal(item["actions"], expected)
    np.testing.assert_array_equal(item["actions"][:, 6], ep_a[0][[3, 4, 4, 4], 6])  # gripper passes through
    obs = ep_a[1]
    proprio = np.concatenate([obs["ee_pos"][3], obs["ee_ori"][3], obs["gripper_states"][3]])
    assert item["proprio"].dtype == np.float32 and item["proprio"].shape == (8,)
    np.testing.assert_allclose(item["proprio"], ds.stats.normalize_proprio(proprio), atol=1e-6)
    img = item["images"]["agentview"]
    assert img.dtype == np.uint8 and img.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(img, obs["agentview_rgb"][3][::-1, ::-1])
    np.testing.assert_array_equal(img[0, 0], obs["agentview_rgb"][3][3, 3])
    np.testing.assert_array_equal(item["images"]["eye_in_hand"], obs["eye_in_hand_rgb"][3][::-1, ::-1])

    first_b = ds[5]  # episode b, t = 0 of 3
    assert first_b["task_index"] == 0
    np.testing.assert_array_equal(first_b["action_is_pad"], [False, False, False, True])
    np.testing.assert_array_equal(first_b["actions"], ds.stats.normalize_action(ep_b[0][[0, 1, 2, 2]]))

    fixed = DemoDataset([tmp_path / "a.hdf5"], chunk_size=2, stats=ds.stats)
    assert fixed.stats is ds.stats
    np.testing.assert_array_equal(fixed[0]["actions"], first_b["actions"][:2])


def test_unreadable_data_files_name_the_file(tmp_path):
    good = tmp_path / "good.hdf5"
    write_file(good, [(np.zeros((3, 7), np.float32), make_obs(np.random.default_rng(0), 3))])
    data = good.read_bytes()
    cases = {
        "truncated.hdf5": data[: len(data) // 2],
        "garbage.hdf5": bytes(range(256)) * 8,
        "empty.hdf5": b"",
        "notes.json": b'{"not": "hdf5"}',
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name} is not a readable HDF5 file .*empty, truncated or of another format"):
            read_demos(tmp_path / name)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match=r"folder has no meta/info.json: not a LeRobotDataset folder .*HDF5 demonstrations are passed as the .hdf5 files"):
        DemoDataset([tmp_path / "folder"])
    (tmp_path / "lift.hdf5.tmp").write_bytes(data)  # what a killed `collect` of vla-agents 0.1 left
    with pytest.raises(ValueError, match=r"lift.hdf5.tmp is the unfinished file of an interrupted `collect`"):
        read_demos(tmp_path / "lift.hdf5.tmp")


def test_a_killed_writer_leaves_only_a_hidden_file_that_the_next_one_removes(tmp_path):
    path = tmp_path / "demos.hdf5"
    rng = np.random.default_rng(0)
    writer = DemoWriter(path, INSTRUCTION).__enter__()  # killed before its exit: the file stays unfinished
    writer.add_episode(np.zeros((2, 7), np.float32), make_obs(rng, 2))
    writer._file.close()
    assert [p.name.startswith(".demos.hdf5.tmp-") for p in tmp_path.iterdir()] == [True]
    write_file(path, [(np.zeros((2, 7), np.float32), make_obs(rng, 2))])
    assert [p.name for p in tmp_path.iterdir()] == ["demos.hdf5"] and len(read_demos(path)) == 1
