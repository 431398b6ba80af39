"""The robosuite scene behind the embedded suite: a Panda at a table with coloured cubes.

One scene class serves every embedded task; the task (which cube to lift, which to stack on which)
is chosen per episode by the Gymnasium wrapper in `embedded.py`. Cluttered tasks add look-alike
cubes (graspable, near shades of the named colours, a little smaller) and small clutter shapes
(visual only: they fill the images with irrelevant tokens without changing the physics). Every
position, yaw and clutter colour and the robot's initial joint noise are drawn from `self.rng`,
which the wrapper reseeds on `reset(seed=...)`, so seeded resets are reproducible.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
from robosuite.models.arenas import TableArena
from robosuite.models.objects import BallObject, BoxObject, CylinderObject
from robosuite.models.tasks import ManipulationTask

COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.1, 0.1, 1.0),
    "green": (0.1, 0.7, 0.15, 1.0),
    "blue": (0.1, 0.25, 0.9, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "purple": (0.55, 0.15, 0.75, 1.0),
    "orange": (1.0, 0.5, 0.05, 1.0),
    # look-alikes: near shades of red, green and blue
    "maroon": (0.6, 0.06, 0.1, 1.0),
    "teal": (0.05, 0.6, 0.5, 1.0),
    "navy": (0.1, 0.15, 0.6, 1.0),
}

# Clutter: small shapes (cheap primitives) that cycle through these kinds, with a random colour
# from CLUTTER_COLORS at every reset. Sizes are robosuite's (half-extents / radius, m).
CLUTTER_SHAPES = (
    ("disc", CylinderObject, [0.015, 0.004]),
    ("ball", BallObject, [0.012]),
    ("bar", BoxObject, [0.03, 0.008, 0.005]),
)
CLUTTER_COLORS = np.array([
    (0.5, 0.5, 0.5, 1.0), (0.95, 0.95, 0.95, 1.0), (0.95, 0.85, 0.1, 1.0),
    (0.55, 0.15, 0.75, 1.0), (0.45, 0.3, 0.15, 1.0), (1.0, 0.6, 0.75, 1.0),
])

LIFT_HEIGHT = 0.04  # m above the table, as robosuite's Lift task counts success


class TabletopCubes(ManipulationEnv):
    """A table with one cube per colour in `colors`, placed at random non-overlapping positions,
    plus optional look-alike cubes (`lookalikes`, colours too) and `clutter` small visual shapes."""

    def __init__(
        self,
        colors: list[str],
        cube_half_size: float = 0.02,
        placement_range: float = 0.12,
        min_cube_distance: float = 0.07,
        lookalikes: Sequence[str] = (),
        lookalike_half_size: float = 0.017,
        clutter: int = 0,
        clutter_range: float = 0.18,
        clutter_distance: float = 0.06,
        **robosuite_kwargs,
    ):
        unknown = [c for c in [*colors, *lookalikes] if c not in COLORS]
        if unknown:
            raise ValueError(f"unknown cube colour(s) {unknown}; expected some of {sorted(COLORS)}")
        if set(colors) & set(lookalikes) or len(set(lookalikes)) < len(lookalikes):
            raise ValueError(f"look-alike colours {list(lookalikes)} must be distinct and differ from the cubes {list(colors)}")
        self.colors = list(colors)
        self.cube_half_size = cube_half_size
        self.placement_range = placement_range
        self.min_cube_distance = min_cube_distance
        self.lookalike_colors = list(lookalikes)
        self.lookalike_half_size = lookalike_half_size
        self.num_clutter = int(clutter)
        self.clutter_range = clutter_range
        self.clutter_distance = clutter_distance
        self.table_full_size = (0.8, 0.8, 0.05)
        self.table_offset = np.array((0.0, 0.0, 0.8))
        super().__init__(**robosuite_kwargs)

    # -- scene ---------------------------------------------------------------------------------
    def _load_model(self):
        super()._load_model()
        robot = self.robots[0].robot_model
        robot.set_base_xpos(robot.base_xpos_offset["table"](self.table_full_size[0]))
        arena = TableArena(table_full_size=self.table_full_size, table_offset=self.table_offset)
        arena.set_origin([0, 0, 0])
        self.half_sizes = {c: self.cube_half_size for c in self.colors}
        self.half_sizes |= {c: self.lookalike_half_size for c in self.lookalike_colors}
        self.cubes = {
            color: BoxObject(name=f"{color}_cube", size=[s, s, s], rgba=list(COLORS[color]))
            for color, s in self.half_sizes.items()
        }
        self.clutter = []
        for i in range(self.num_clutter):
            kind, cls, size = CLUTTER_SHAPES[i % len(CLUTTER_SHAPES)]
            # visual only and without a joint: fixed in place, no contacts, so it never blocks a grasp
            self.clutter.append(cls(name=f"clutter{i}_{kind}", size=size, rgba=list(CLUTTER_COLORS[0]),
                                    obj_type="visual", joints=None))
        self.model = ManipulationTask(
            mujoco_arena=arena,
            mujoco_robots=[robot],
            mujoco_objects=[*self.cubes.values(), *self.clutter],
        )

    def _setup_references(self):
        super()._setup_references()
        self.cube_body_ids = {c: self.sim.model.body_name2id(cube.root_body) for c, cube in self.cubes.items()}
        self.clutter_body_ids = [self.sim.model.body_name2id(obj.root_body) for obj in self.clutter]
        self.clutter_geom_ids = [[self.sim.model.geom_name2id(g) for g in obj.visual_geoms] for obj in self.clutter]
        # Plain flat lighting: shadows and reflections triple the CPU render cost and add nothing here.
        self.sim.model.light_castshadow[:] = 0
        self.sim.model.mat_reflectance[:] = 0

    def _reset_internal(self):
        super()._reset_internal()
        poses = self._sample_cube_poses()
        placed = [pos[:2] for pos, _ in poses]
        for _ in self.lookalike_colors:
            xy = self._scatter(self.placement_range, self.min_cube_distance, placed)
            z = self.table_offset[2] + self.lookalike_half_size + 0.001
            poses.append((np.array([*xy, z]), self._random_yaw()))
        for color, (pos, quat) in zip([*self.colors, *self.lookalike_colors], poses):
            self.sim.data.set_joint_qpos(self.cubes[color].joints[0], np.concatenate([pos, quat]))
        for obj, body, geoms in zip(self.clutter, self.clutter_body_ids, self.clutter_geom_ids):
            xy = self._scatter(self.clutter_range, self.clutter_distance, placed)
            self.sim.model.body_pos[body] = [*xy, self.table_offset[2] - obj.bottom_offset[2]]
            self.sim.model.body_quat[body] = self._random_yaw()
            self.sim.model.geom_rgba[geoms] = CLUTTER_COLORS[self.rng.integers(len(CLUTTER_COLORS))]

    def _random_yaw(self) -> np.ndarray:
        yaw = self.rng.uniform(-np.pi / 4, np.pi / 4)
        return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])  # w, x, y, z

    def _scatter(self, half_width: float, min_distance: float, placed: list[np.ndarray]) -> np.ndarray:
        """One xy in the square of `half_width`, at least `min_distance` from every point in
        `placed`, which it then joins (sequential rejection: dense scenes stay cheap to sample)."""
        for _ in range(1000):
            xy = self.rng.uniform(-half_width, half_width, size=2)
            if all(np.linalg.norm(xy - p) >= min_distance for p in placed):
                placed.append(xy)
                return xy
        raise RuntimeError(f"could not place {len(placed) + 1} objects {min_distance} m apart in a {2 * half_width} m square")

    def _sample_cube_poses(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Rejection-sample cube centres at least `min_cube_distance` apart, with random yaw."""
        r, z = self.placement_range, self.table_offset[2] + self.cube_half_size + 0.001
        for _ in range(1000):
            xy = self.rng.uniform(-r, r, size=(len(self.colors), 2))
            gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy))
            if len(xy) == 1 or gaps.min() >= self.min_cube_distance:
                break
        else:
            raise RuntimeError("could not place the cubes apart; lower min_cube_distance or widen placement_range")
        return [(np.array([x, y, z]), self._random_yaw()) for x, y in xy]

    # -- privileged state (for experts and success) --------------------------------------------
    def cube_pos(self, color: str) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.cube_body_ids[color]])

    def cube_quat(self, color: str) -> np.ndarray:
        """x, y, z, w, the order robosuite's (and LIBERO's) observations use."""
        w, x, y, z = self.sim.data.body_xquat[self.cube_body_ids[color]]
        return np.array([x, y, z, w])

    @property
    def table_height(self) -> float:
        return float(self.table_offset[2])

    def eef_pos(self) -> np.ndarray:
        return np.array(self.sim.data.site_xpos[self.robots[0].eef_site_id["right"]])

    def is_grasping(self, color: str) -> bool:
        return bool(self._check_grasp(gripper=self.robots[0].gripper, object_geoms=self.cubes[color]))

    def is_lifted(self, color: str) -> bool:
        bottom = self.cube_pos(color)[2] - self.half_sizes[color]
        return bottom > self.table_height + LIFT_HEIGHT

    def is_stacked(self, top: str, base: str) -> bool:
        """`top` rests on `base`: centred within a half cube, at the right height, and released."""
        a, b = self.cube_pos(top), self.cube_pos(base)
        centred = np.linalg.norm(a[:2] - b[:2]) < self.cube_half_size
        resting = abs((a[2] - b[2]) - 2 * self.cube_half_size) < 0.005
        return bool(centred and resting and not self.is_grasping(top))

    # robosuite's own reward/success hooks; the Gymnasium wrapper decides success per task.
    def reward(self, action=None):
        return 0.0

    def _check_success(self):
        return False
