"""The grounding corpus: embedded-suite scenes with questions whose answers the simulator knows exactly.

It stands where a VLM's pretraining data stands at paper scale: the tiny backbone learns from it to
find a named object among distractors before behaviour cloning teaches it to act. One HDF5 file:

    attrs   format="vla-agents-grounding-corpus", version=1, seed, image_size, views, objects (JSON list
            of names: the named cubes, then the look-alikes), kinds (JSON: name -> "cube" | "lookalike"),
            clutter (number of clutter shapes), generator (package version)
    images/<view>        (N, S, S, 3) uint8, as the renderer returns them (upside down, like LIBERO)
    scene/eef_pos        (N, 3) float32, world metres
    scene/proprio        (N, 8) float32, the LIBERO adapter's proprio (eef pos, axis-angle, gripper qpos)
    scene/clutter        (N,) bool, clutter shapes on the table
    objects/present      (N, K) bool, K = len(objects)
    objects/pos          (N, K, 3) float32, world metres (zeros where absent)
    objects/uv           (N, K, V, 2) float32, fractions of each view in policy orientation (`sim.projection`)
    objects/in_view      (N, K, V) bool
    qa/scene             (M,) int32, the scene a question is about
    qa/question          (M,) str
    qa/kind              (M,) int8, QUESTION_KINDS index
    qa/object            (M,) int8, object index the answer is about (locate, nearest), -1 if none
    qa/answer            (M,) int8, nearest: object index; exists: 1 yes / 0 no; locate: -1

A locate answer is the object's `uv`, `in_view` and its offset from the gripper (`pos - eef_pos`), read
from the scene arrays, so every answer is the simulator's own state.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vla_agents.atomic import AtomicFile

FORMAT = "vla-agents-grounding-corpus"
VERSION = 1
QUESTION_KINDS = ("locate", "nearest", "exists")

# Question wordings per kind. Locate includes the suite's own instructions, so the colour word that
# selects a cube in pretraining is the one that selects it in behaviour cloning.
LOCATE_TEMPLATES = (
    "where is the {c} cube", "find the {c} cube", "point to the {c} cube", "pick up the {c} cube",
    "put the {c} cube on the {o} cube", "put the {o} cube on the {c} cube",  # both answered by the cube to move
)
LOCATE_ONLY_CUBE = ("pick up the cube", "where is the cube")  # scenes with exactly one cube
NEAREST_TEMPLATES = ("what colour is the cube nearest the gripper", "which cube is closest to the gripper")
EXISTS_TEMPLATES = ("is there a {c} cube", "is there a {c} cube on the table")


@dataclass
class Corpus:
    """A corpus file held in memory (images stay uint8; a 20k-scene, 128 px corpus is about 2 GB)."""

    path: Path
    views: list[str]
    objects: list[str]
    images: dict[str, np.ndarray]
    eef_pos: np.ndarray
    proprio: np.ndarray
    present: np.ndarray
    pos: np.ndarray
    uv: np.ndarray
    in_view: np.ndarray
    qa_scene: np.ndarray
    qa_question: list[str]
    qa_kind: np.ndarray
    qa_object: np.ndarray
    qa_answer: np.ndarray
    attrs: dict

    @property
    def num_scenes(self) -> int:
        return len(self.eef_pos)

    def __len__(self) -> int:
        return len(self.qa_scene)


class CorpusWriter:
    """Fills a corpus of `num_scenes` scenes scene by scene under a hidden name (`AtomicFile`), moved onto
    `path` only when every scene is written, so a killed generation never leaves a file that looks complete."""

    def __init__(self, path: str | Path, num_scenes: int, questions_per_scene: int, attrs: dict) -> None:
        self.path = Path(path)
        self.n, self.per_scene, self.attrs = num_scenes, questions_per_scene, attrs
        self.written = 0

    def __enter__(self) -> CorpusWriter:
        self.target = AtomicFile(self.path).__enter__()
        n, k, v, size = self.n, len(self.attrs["objects"]), len(self.attrs["views"]), self.attrs["image_size"]
        m = n * self.per_scene
        self.file = f = h5py.File(self.target.tmp, "w")
        f.attrs.update({"format": FORMAT, "version": VERSION,
                        **{key: json.dumps(val) if isinstance(val, (list, dict)) else val for key, val in self.attrs.items()}})
        for view in self.attrs["views"]:
            f.create_dataset(f"images/{view}", (n, size, size, 3), np.uint8, compression="lzf", chunks=(1, size, size, 3))
        shapes = {"scene/eef_pos": ((n, 3), np.float32), "scene/proprio": ((n, 8), np.float32), "scene/clutter": ((n,), bool),
                  "objects/present": ((n, k), bool), "objects/pos": ((n, k, 3), np.float32),
                  "objects/uv": ((n, k, v, 2), np.float32), "objects/in_view": ((n, k, v), bool),
                  "qa/scene": ((m,), np.int32), "qa/kind": ((m,), np.int8), "qa/object": ((m,), np.int8),
                  "qa/answer": ((m,), np.int8)}
        for name, (shape, dtype) in shapes.items():
            f.create_dataset(name, shape, dtype)
        f.create_dataset("qa/question", (m,), h5py.string_dtype())
        return self

    def add_scene(self, images: dict[str, np.ndarray], scene: dict[str, np.ndarray],
                  questions: list[tuple[str, int, int, int]]) -> None:
        if len(questions) != self.per_scene:
            raise ValueError(f"expected {self.per_scene} questions per scene, got {len(questions)}")
        i, f = self.written, self.file
        for view, image in images.items():
            f[f"images/{view}"][i] = image
        for name, value in scene.items():
            f[name][i] = value
        rows = slice(i * self.per_scene, (i + 1) * self.per_scene)
        f["qa/scene"][rows] = i
        for j, key in enumerate(("question", "kind", "object", "answer")):
            f[f"qa/{key}"][rows] = [q[j] for q in questions]
        self.written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self.file.close()
        with self.target:
            if exc is not None:
                raise exc
            if self.written != self.n:
                raise RuntimeError(f"{self.path}: only {self.written} of {self.n} scenes were written")


REQUIRED = ("scene/eef_pos", "scene/proprio", "objects/present", "objects/pos", "objects/uv", "objects/in_view",
            "qa/scene", "qa/question", "qa/kind", "qa/object", "qa/answer")


def read_corpus(path: str | Path) -> Corpus:
    """Load a corpus file, naming the file and field when it is missing, truncated or of another format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grounding corpus not found: {path} (make one with `vla-agents corpus --out {path}`)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 grounding corpus (truncated or another format?): {e}") from e
    with f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path}: attrs['format'] is {f.attrs.get('format')!r}, expected {FORMAT!r}")
        if int(f.attrs.get("version", -1)) != VERSION:
            raise ValueError(f"{path}: corpus version {f.attrs.get('version')}, this package reads version {VERSION}")
        missing = [name for name in REQUIRED if name not in f]
        views = json.loads(f.attrs["views"])
        missing += [f"images/{v}" for v in views if f"images/{v}" not in f]
        if missing:
            raise ValueError(f"{path}: missing field(s) {missing}")
        try:
            images = {v: f[f"images/{v}"][()] for v in views}
            arrays = {name: f[name][()] for name in REQUIRED}
        except OSError as e:
            raise ValueError(f"{path}: a field cannot be read (truncated file?): {e}") from e
        attrs = {k: (json.loads(v) if k in ("views", "objects", "kinds") else v) for k, v in f.attrs.items()}
    n = len(arrays["scene/eef_pos"])
    bad = [v for v, img in images.items() if len(img) != n]
    if bad:
        raise ValueError(f"{path}: images/{bad[0]} holds {len(images[bad[0]])} scenes, scene/eef_pos {n}")
    return Corpus(
        path=path, views=views, objects=list(attrs["objects"]), images=images,
        eef_pos=arrays["scene/eef_pos"], proprio=arrays["scene/proprio"], present=arrays["objects/present"],
        pos=arrays["objects/pos"], uv=arrays["objects/uv"], in_view=arrays["objects/in_view"],
        qa_scene=arrays["qa/scene"], qa_question=[q.decode() if isinstance(q, bytes) else str(q) for q in arrays["qa/question"]],
        qa_kind=arrays["qa/kind"], qa_object=arrays["qa/object"], qa_answer=arrays["qa/answer"], attrs=attrs,
    )


def make_questions(rng: np.random.Generator, objects: list[str], kinds: dict[str, str], present: np.ndarray,
                   pos: np.ndarray, eef_pos: np.ndarray, per_scene: int) -> list[tuple[str, int, int, int]]:
    """`per_scene` questions (text, kind, object, answer) about one scene, answered from its state.
    Locate asks about present cubes (named or look-alike); exists is balanced between yes and no."""
    here = [i for i in range(len(objects)) if present[i]]
    cubes = [i for i in here if kinds[objects[i]] == "cube"]
    questions = []
    for _ in range(per_scene):
        kind = rng.choice(3, p=(0.7, 0.15, 0.15))
        if kind == 0:
            if len(here) == 1 and rng.random() < 0.5:
                questions.append((str(rng.choice(LOCATE_ONLY_CUBE)), 0, here[0], -1))
                continue
            i = int(rng.choice(here))
            templates = LOCATE_TEMPLATES if len(here) > 1 else LOCATE_TEMPLATES[:4]
            j = int(rng.choice([k for k in here if k != i])) if len(here) > 1 else -1
            template = str(rng.choice(templates))
            text = template.format(c=objects[i], o=objects[j] if j >= 0 else "")
            # "put A on B" asks for A, the cube to pick, whichever of the two was drawn first
            questions.append((text, 0, j if template.startswith("put the {o}") else i, -1))
        elif kind == 1:
            nearest = here[int(np.argmin(np.linalg.norm(pos[here] - eef_pos, axis=1)))]
            questions.append((str(rng.choice(NEAREST_TEMPLATES)), 1, nearest, nearest))
        else:
            pool = cubes if rng.random() < 0.5 and cubes else [i for i in range(len(objects)) if not present[i]] or here
            i = int(rng.choice(pool))
            questions.append((str(rng.choice(EXISTS_TEMPLATES)).format(c=objects[i]), 2, -1, int(present[i])))
    return questions
