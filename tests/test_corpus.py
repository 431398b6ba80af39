"""The grounding corpus: answers are the simulator's state, the file round-trips, bad files are named."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from vla_agents.data.corpus import QUESTION_KINDS, make_questions, read_corpus
from vla_agents.sim.corpus import CorpusScenes, generate_corpus
from vla_agents.sim.projection import grid_cell, project


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "c.hdf5"
    generate_corpus(path, scenes=6, seed=3, image_size=64, questions_per_scene=5, progress=False)
    return path


def _dominant(pixel: np.ndarray) -> str:
    return ("red", "green", "blue")[int(np.argmax(pixel))]


def test_projection_lands_on_hand_placed_cubes() -> None:
    scenes = CorpusScenes(image_size=64)
    try:
        sim = scenes.sim
        sim.reset()
        placed = {"red": (-0.08, -0.08), "green": (0.0, 0.09), "blue": (0.09, -0.02)}
        for color, xy in placed.items():
            sim.sim.data.set_joint_qpos(sim.cubes[color].joints[0], [*xy, 0.821, 1, 0, 0, 0])
        for color in scenes.lookalikes:
            sim.sim.data.set_joint_qpos(sim.cubes[color].joints[0], [3, 3, 0.5, 1, 0, 0, 0])
        for body in sim.clutter_body_ids:
            sim.sim.model.body_pos[body] = [3, 3, 0.5]
        sim.sim.forward()
        image = sim.sim.render(camera_name="agentview", width=64, height=64)[::-1, ::-1]  # policy orientation
        for color, xy in placed.items():
            (u, v), = project(sim.sim, "agentview", np.array([[*xy, 0.821]]), 64)[0]
            assert _dominant(image[int(v * 64), int(u * 64)]) == color
        # a point off the table's edge, behind the camera's field, is flagged out of view
        assert not project(sim.sim, "agentview", np.array([[3.0, 3.0, 0.5]]), 64)[1][0]
    finally:
        scenes.close()


def test_grid_cell_maps_uv_through_the_centre_crop() -> None:
    uv = np.array([[0.0, 0.0], [0.5, 0.5], [0.99, 0.01], [0.03, 0.5]])
    assert grid_cell(uv, 8, frame_size=100).tolist() == [0, 36, 7, 32]
    # crop_area 0.81 keeps the central 90 of 100 px (from px 5): 0.03 is cropped away, 0.06 is in column 0
    assert grid_cell(np.array([[0.03, 0.5], [0.06, 0.5]]), 8, frame_size=100, crop_area=0.81).tolist() == [-1, 32]


def test_questions_are_answered_from_the_scene_state() -> None:
    objects = ["red", "green", "blue", "maroon"]
    kinds = {"red": "cube", "green": "cube", "blue": "cube", "maroon": "lookalike"}
    present = np.array([True, False, True, True])
    pos = np.array([[0.1, 0, 0.8], [0, 0, 0], [-0.05, 0.02, 0.8], [0.0, 0.1, 0.8]])
    eef = np.array([-0.04, 0.0, 0.9])  # nearest present object: blue
    questions = make_questions(np.random.default_rng(0), objects, kinds, present, pos, eef, per_scene=200)
    seen = set()
    for text, kind, obj, answer in questions:
        seen.add(QUESTION_KINDS[kind])
        if QUESTION_KINDS[kind] == "locate":
            assert present[obj] and (objects[obj] in text or text in ("pick up the cube", "where is the cube"))
            if text.startswith("put the "):  # "put A on B" is answered by A, the cube to pick up
                assert text.split()[2] == objects[obj]
        elif QUESTION_KINDS[kind] == "nearest":
            assert obj == answer == 2
        else:
            named = [i for i, name in enumerate(objects) if f" {name} " in f" {text} "]
            assert len(named) == 1 and answer == int(present[named[0]])
    assert seen == set(QUESTION_KINDS)


def test_corpus_file_round_trips_and_matches_its_images(corpus: Path) -> None:
    c = read_corpus(corpus)
    assert c.num_scenes == 6 and len(c) == 30 and c.views == ["agentview", "eye_in_hand"]
    assert c.images["agentview"].shape == (6, 64, 64, 3) and c.uv.shape == (6, 7, 2, 2)
    checked = 0
    for q in range(len(c)):
        s, obj = c.qa_scene[q], c.qa_object[q]
        if QUESTION_KINDS[c.qa_kind[q]] != "locate" or c.objects[obj] not in ("red", "green", "blue"):
            continue
        assert c.present[s, obj]
        np.testing.assert_allclose(c.eef_pos[s], c.proprio[s, :3])
        if c.in_view[s, obj, 0]:
            u, v = c.uv[s, obj, 0]
            image = c.images["agentview"][s][::-1, ::-1]
            assert _dominant(image[int(v * 64), int(u * 64)].astype(int)) == c.objects[obj]
            checked += 1
    assert checked >= 3


def test_generation_is_deterministic_for_a_seed(corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.hdf5"
    generate_corpus(again, scenes=6, seed=3, image_size=64, questions_per_scene=5, progress=False)
    a, b = read_corpus(corpus), read_corpus(again)
    assert a.qa_question == b.qa_question
    np.testing.assert_array_equal(a.pos, b.pos)
    np.testing.assert_array_equal(a.images["eye_in_hand"], b.images["eye_in_hand"])


def test_bad_corpus_files_are_named(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vla-agents corpus"):
        read_corpus(tmp_path / "missing.hdf5")
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(corpus.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.hdf5"):
        read_corpus(truncated)
    demo = tmp_path / "demo.hdf5"
    with h5py.File(demo, "w") as f:
        f.create_group("data")
    with pytest.raises(ValueError, match="expected 'vla-agents-grounding-corpus'"):
        read_corpus(demo)
    gutted = tmp_path / "gutted.hdf5"
    gutted.write_bytes(corpus.read_bytes())
    with h5py.File(gutted, "a") as f:
        del f["qa/answer"]
    with pytest.raises(ValueError, match=r"missing field\(s\) \['qa/answer'\]"):
        read_corpus(gutted)
