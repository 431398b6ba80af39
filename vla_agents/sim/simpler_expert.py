"""A scripted expert for SIMPLER's Bridge tasks, and the recording of its demonstrations.

The expert picks the named object and puts it on the other from privileged simulator state (object
poses, gripper position) within SIMPLER's 60 steps at 5 Hz. It follows the agent API (`reset()`,
`act(obs)` -> env action) so evaluation can score it, and keeps the policy-side action it meant
(`policy_action`: the RLDS convention `simpler_widowx` takes, gripper 1 = open / 0 = closed), which is
what demonstrations record, so a policy cloned from them goes through the same adapter as any other.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vla_agents.adapters import make_adapter
from vla_agents.sim.simpler import CAMERA, SimplerEnv

OPEN, CLOSED = 1.0, 0.0  # policy convention (the adapter sends +1 / -1)
MAX_STEP = 0.035  # m per control step (0.2 s): Bridge teleoperation moves at most a few cm per step
MAX_TURN = 0.4  # rad per control step
TOLERANCE = 0.012  # m: a waypoint is reached within this distance


@dataclass
class Waypoint:
    position: np.ndarray  # gripper tool point in the world
    gripper: float
    hold: int = 0  # extra steps to stay once reached (time for the fingers)
    about_target: bool = False  # this stretch is about where the object goes (the target), not the object itself


class SimplerExpert:
    """Above the object (turning the fingers across it when it lies along them), down, close, up, over the
    target, down, open, up."""

    policy_name = "scripted-expert"

    def __init__(self, env: SimplerEnv | None = None, clearance: float = 0.08, grasp_depth: float = 0.0,
                 place_height: float = 0.02):
        self.env = env.unwrapped if env is not None else None
        self.clearance, self.grasp_depth, self.place_height = clearance, grasp_depth, place_height
        self.adapter = make_adapter("simpler_widowx")
        self.reset()

    def bind(self, env: SimplerEnv) -> SimplerEnv:
        """Act in `env` from now on (the expert reads its privileged state); returns `env`."""
        self.env = env.unwrapped
        self.reset()
        return env

    def reset(self) -> None:
        self.plan: list[Waypoint] | None = None
        self.index = self.steps_at_goal = 0
        self.turn_left = 0.0  # yaw still to command (rad, about the base's vertical axis)
        self.policy_action = np.zeros(7, np.float32)

    def _make_plan(self) -> list[Waypoint]:
        env = self.env
        source, target = env.objects
        src, _ = env.object_pose(source)
        tgt, _ = env.object_pose(target)
        size = np.abs(env.object_size(source))
        self.turn_left = np.pi / 2 if size[1] > size[0] else 0.0  # the fingers close along the world y axis
        up = np.array([0.0, 0.0, self.clearance])
        grasp = src + [0.0, 0.0, self.grasp_depth]
        place = tgt + [0.0, 0.0, env.object_size(target)[2] / 2 + self.place_height]
        return [
            Waypoint(grasp + up, OPEN),
            Waypoint(grasp, OPEN),
            Waypoint(grasp, CLOSED, hold=2),
            Waypoint(grasp + up, CLOSED, about_target=True),  # once held, where it goes is read from the target
            Waypoint(place + up, CLOSED, about_target=True),
            Waypoint(place, CLOSED, about_target=True),
            Waypoint(place, OPEN, hold=2, about_target=True),
            Waypoint(place + up, OPEN, hold=10**6, about_target=True),
        ]

    def focus(self) -> str:
        """The object the current waypoint is about: the one to pick until it is held, then the one it is put
        on. Demonstrations record its position as the grounding target (as `ScriptedExpert.focus` does), so
        the policy is taught to read the object its next actions depend on."""
        source, target = self.env.objects
        return target if self.plan is not None and self.plan[self.index].about_target else source

    def act(self, obs=None) -> np.ndarray:
        if self.env is None:
            raise RuntimeError("SimplerExpert has no environment: pass env= or call bind(env) first")
        if self.plan is None:
            self.plan = self._make_plan()
        waypoint = self.plan[self.index]
        error = waypoint.position - self.env.ee_position()
        if np.linalg.norm(error) < TOLERANCE:
            self.steps_at_goal += 1
            if self.steps_at_goal > waypoint.hold and self.index < len(self.plan) - 1:
                self.index, self.steps_at_goal = self.index + 1, 0
        step = error * min(1.0, MAX_STEP / max(np.linalg.norm(error), 1e-9))
        action = np.zeros(7, np.float32)
        action[:3] = self.env.root_rotation().T @ step  # commanded in the robot base's frame
        action[5] = turn = float(np.clip(self.turn_left, -MAX_TURN, MAX_TURN))
        self.turn_left -= turn
        action[6] = waypoint.gripper
        self.policy_action = action
        return self.adapter.action(action)


def _downscale(frame: np.ndarray, height: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (height, W * height / H, 3), with the antialiased bilinear filter policies resize with."""
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    width = round(frame.shape[1] * height / frame.shape[0])
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def record_episode(env: SimplerEnv, expert: SimplerExpert, seed: int, noise: float = 0.0, image_size: int = 128
                   ) -> tuple[bool, np.ndarray, dict[str, np.ndarray]]:
    """Roll the expert out for SIMPLER's whole 60 steps; return (success at the last step, its policy actions
    (T, 7), obs arrays (T, ...) in `simpler_widowx`'s recorded layout: the camera frame scaled to `image_size`
    rows and the joint positions `qpos`, plus privileged `ee_pos`, and the `target_pos` and `target_uv` (T, 1, 2)
    of the object the expert's step is about (`SimplerExpert.focus`: the object to pick, then where it goes)).
    `noise`: std (m) of the Gaussian added to the executed translation, seeded by `seed` (DART)."""
    if noise < 0:
        raise ValueError(f"noise must be a non-negative std (m), got {noise}")
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    expert.reset()
    frames: dict[str, list] = {f"{CAMERA}_rgb": [], "qpos": [], "ee_pos": [], "target_pos": [], "target_uv": []}
    actions = []
    truncated = False
    while not truncated:
        frames[f"{CAMERA}_rgb"].append(_downscale(env.unwrapped.render(), image_size))
        frames["qpos"].append(np.asarray(obs["agent"]["qpos"][0], dtype=np.float32))
        frames["ee_pos"].append(env.unwrapped.ee_position())
        executed = expert.act(obs)
        target = env.unwrapped.object_pose(expert.focus())[0]
        frames["target_pos"].append(target)
        frames["target_uv"].append(env.unwrapped.project(target[None]))
        actions.append(expert.policy_action)
        if noise:
            executed[:3] += rng.normal(0.0, noise, 3)
        obs, _, _, truncated, info = env.step(executed)
    return bool(info["success"]), np.stack(actions).astype(np.float32), {k: np.stack(v) for k, v in frames.items()}
