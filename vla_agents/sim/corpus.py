"""Generate the grounding corpus (`vla_agents.data.corpus` documents the file) from embedded-suite scenes.

Every scene is the suite's table with a random subset of the named cubes (red, green, blue), of the
look-alike cubes (maroon, orange, teal, navy) and of the clutter shapes, at the suite's random layouts,
with the arm moved to a random gripper position above the table (so the wrist camera sees the scene
from the places it sees it from during a task). Scenes are posed and rendered, never simulated: no
physics step runs, which keeps a scene at a few tens of milliseconds. Deterministic for a seed.
"""
from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vla_agents.adapters.libero import quat2axisangle
from vla_agents.data.corpus import CorpusWriter, make_questions
from vla_agents.progress import LoggedProgress
from vla_agents.sim.embedded import CAMERAS, build_tabletop, load_suite, make_render_context_current
from vla_agents.sim.projection import project

VIEWS = {"agentview": "agentview", "eye_in_hand": "robot0_eye_in_hand"}  # policy view name -> camera
SCENE_TASK = "pick_color_clutter"  # the suite task whose scene holds every cube colour and distractor kind
HIDDEN_AT = np.array([3.0, 3.0, 0.5])  # where absent objects wait, outside every camera's view
REACH = {"x": (-0.18, 0.12), "y": (-0.18, 0.18), "z": (0.03, 0.25)}  # gripper targets, m, z above the table


class CorpusScenes:
    """Poses and renders corpus scenes in one robosuite table scene that holds every object."""

    def __init__(self, image_size: int = 128) -> None:
        spec = load_suite()[SCENE_TASK]
        self.sim = build_tabletop(list(spec.cubes), spec.scene, image_size, use_cameras=False, offscreen=True)
        self.image_size = image_size
        self.named, self.lookalikes = list(spec.cubes), list(spec.scene["lookalikes"])
        self.objects = self.named + self.lookalikes
        self.kinds = {**{c: "cube" for c in self.named}, **{c: "lookalike" for c in self.lookalikes}}

    def close(self) -> None:
        self.sim.close()

    def pose(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Lay out a new random scene; returns its state (see the corpus layout) and rendered images."""
        sim = self.sim
        sim.rng = np.random.default_rng(rng.integers(2**63))
        sim.reset()
        present = self._choose_objects(rng)
        for color, here in zip(self.objects, present):
            if not here:
                sim.sim.data.set_joint_qpos(sim.cubes[color].joints[0], np.concatenate([HIDDEN_AT, [1, 0, 0, 0]]))
        clutter = bool(rng.random() < 0.5)
        if not clutter:
            for body in sim.clutter_body_ids:
                sim.sim.model.body_pos[body] = HIDDEN_AT
        mujoco.mj_forward(sim.sim.model._model, sim.sim.data._data)
        self._move_gripper(rng, [sim.cube_pos(c) for c, here in zip(self.objects, present) if here])
        pos = np.array([sim.cube_pos(c) if here else np.zeros(3) for c, here in zip(self.objects, present)], np.float32)
        uv = np.zeros((len(self.objects), len(VIEWS), 2), np.float32)
        in_view = np.zeros((len(self.objects), len(VIEWS)), bool)
        for v, camera in enumerate(VIEWS.values()):
            uv[:, v], in_view[:, v] = project(sim.sim, camera, pos, self.image_size)
        in_view &= present[:, None]
        eef = sim.eef_pos()
        site = sim.robots[0].eef_site_id["right"]
        quat_wxyz = np.empty(4)
        mujoco.mju_mat2Quat(quat_wxyz, sim.sim.data.site_xmat[site])
        gripper = sim.sim.data.qpos[sim.robots[0]._ref_gripper_joint_pos_indexes["right"]]
        proprio = np.concatenate([eef, quat2axisangle(np.roll(quat_wxyz, -1)), gripper]).astype(np.float32)
        make_render_context_current(sim.sim)
        images = {view: sim.sim.render(camera_name=camera, width=self.image_size, height=self.image_size)
                  for view, camera in VIEWS.items()}
        return {"images": images, "eef_pos": eef.astype(np.float32), "proprio": proprio, "clutter": clutter,
                "present": present, "pos": pos, "uv": uv, "in_view": in_view}

    def _choose_objects(self, rng: np.random.Generator) -> np.ndarray:
        """Named cubes: all three in half the scenes (the tasks' scenes), else a random non-empty subset;
        each look-alike on the table with probability 0.4."""
        named = np.ones(len(self.named), bool)
        if rng.random() >= 0.5:
            named = np.zeros(len(self.named), bool)
            named[rng.choice(len(self.named), size=rng.integers(1, len(self.named) + 1), replace=False)] = True
        return np.concatenate([named, rng.random(len(self.lookalikes)) < 0.4])

    def _move_gripper(self, rng: np.random.Generator, cubes: list[np.ndarray]) -> None:
        """Inverse kinematics (damped least squares on the arm joints) to a random gripper position,
        keeping the gripper's downward orientation; a third of the time just above one of the cubes.
        The fingers open to a random width."""
        sim, robot = self.sim, self.sim.robots[0]
        table = sim.table_height
        if cubes and rng.random() < 0.3:
            cube = cubes[rng.integers(len(cubes))]
            target = cube + [*rng.normal(0, 0.015, 2), rng.uniform(0.01, 0.12)]
        else:
            target = np.array([rng.uniform(*REACH["x"]), rng.uniform(*REACH["y"]), table + rng.uniform(*REACH["z"])])
        model, data = sim.sim.model._model, sim.sim.data._data
        site = robot.eef_site_id["right"]
        joints = robot._ref_joint_pos_indexes
        dofs = robot._ref_joint_vel_indexes
        keep = data.site_xmat[site].reshape(3, 3).copy()
        jacp, jacr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
        for _ in range(50):
            mujoco.mj_kinematics(model, data)
            mujoco.mj_comPos(model, data)
            err_pos = target - data.site_xpos[site]
            now = data.site_xmat[site].reshape(3, 3)
            err_rot = 0.5 * sum(np.cross(now[:, k], keep[:, k]) for k in range(3))
            if np.linalg.norm(err_pos) < 1e-3:
                break
            mujoco.mj_jacSite(model, data, jacp, jacr, site)
            jac = np.vstack([jacp, jacr])[:, dofs]
            data.qpos[joints] += jac.T @ np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(6), np.concatenate([err_pos, err_rot]))
        width = rng.uniform(0.0, 0.04)
        data.qpos[robot._ref_gripper_joint_pos_indexes["right"]] = [width, -width]
        mujoco.mj_forward(model, data)


def generate_corpus(out: str | Path, scenes: int, seed: int = 0, image_size: int = 128, questions_per_scene: int = 4,
                    progress: bool = True) -> Path:
    """Render `scenes` random scenes with `questions_per_scene` questions each into one corpus file."""
    if scenes < 1:
        raise ValueError(f"--scenes must be at least 1, got {scenes}")
    if questions_per_scene < 1:
        raise ValueError(f"--questions-per-scene must be at least 1, got {questions_per_scene}")
    from vla_agents import __version__

    rng = np.random.default_rng(seed)
    maker = CorpusScenes(image_size)
    attrs = {"seed": seed, "image_size": image_size, "views": list(VIEWS), "cameras": list(CAMERAS),
             "objects": maker.objects, "kinds": maker.kinds, "clutter": len(maker.sim.clutter), "generator": __version__}
    columns = (TextColumn("[bold]corpus"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    try:
        with CorpusWriter(out, scenes, questions_per_scene, attrs) as writer, \
                LoggedProgress(*columns, disable=not progress) as bar:
            task = bar.add_task("scenes", total=scenes)
            for _ in range(scenes):
                s = maker.pose(rng)
                questions = make_questions(rng, maker.objects, maker.kinds, s["present"], s["pos"], s["eef_pos"],
                                           questions_per_scene)
                writer.add_scene(s["images"], {"scene/eef_pos": s["eef_pos"], "scene/proprio": s["proprio"],
                                               "scene/clutter": s["clutter"], "objects/present": s["present"],
                                               "objects/pos": s["pos"], "objects/uv": s["uv"], "objects/in_view": s["in_view"]},
                                 questions)
                bar.advance(task)
    finally:
        maker.close()
    return Path(out)
