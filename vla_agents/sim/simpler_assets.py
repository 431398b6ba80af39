"""The ManiSkill3 asset folder SIMPLER's Bridge tasks read, checked before ManiSkill ever looks at it.

ManiSkill finds assets under `$MS_ASSET_DIR/data` (default `~/.maniskill/data`), fixed when `mani_skill`
is first imported, and when a whole asset group is absent it asks y/n on stdin; when one file inside is
absent it fails deep in SAPIEN ("cannot make canonical path"). Checking the exact files first turns
both into one error that names the file and the download command.

`write_stand_in_stage` is for machines without the Hugging Face hub, where the table meshes are the
only missing piece: a box with the real table's top surface. In the camera image every stage pixel is
replaced by the real photo (green screen), so it changes physics only; numbers made with it are
stand-in numbers, not SIMPLER's.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

DOWNLOAD_IDS = ("bridge_v2_real2sim", "widowx250s")
"""ManiSkill's asset registry names of what the Bridge tasks need."""
BRIDGE = Path("tasks/bridge_v2_real2sim_dataset")
ROBOT = Path("robots/widowx/wx250s.urdf")
STAGES = {"flat_table": BRIDGE / "stages/bridge_table_1_v1.glb"}
OVERLAY = BRIDGE / "real_inpainting/bridge_real_eval_1.png"
MODELS: dict[str, tuple[str, str, str]] = {
    # ManiSkill3 env id -> (model-info json, source object, target object)
    "PutCarrotOnPlateInScene-v1": ("info_bridge_custom_v0.json", "bridge_carrot_generated_modified",
                                   "bridge_plate_objaverse_larger"),
    "PutSpoonOnTableClothInScene-v1": ("info_bridge_custom_v0.json", "bridge_spoon_generated_modified",
                                       "table_cloth_generated_shorter"),
    "StackGreenCubeOnYellowCubeBakedTexInScene-v1": ("info_bridge_custom_baked_tex_v0.json", "baked_green_cube_3cm",
                                                     "baked_yellow_cube_3cm"),
}

# Where the env puts the stage mesh (bridge_dataset_eval/base_env.py::_load_scene): rotated +90 degrees
# about x, then moved by -scene_offset. The stand-in box is written in that mesh frame.
STAGE_OFFSET = np.array([2.0634, 2.8313, 0.0])
TABLE_TOP_Z = 0.87  # SIMPLER's scene_table_height
TABLE_EXTENTS = (1.2, 1.6, 0.1)
TABLE_CENTRE_XY = (-0.2, 0.0)


def asset_dir(path: str | os.PathLike | None = None) -> Path:
    """The `MS_ASSET_DIR` in use: `path`, else the environment variable, else ManiSkill's default."""
    return Path(path or os.environ.get("MS_ASSET_DIR") or Path.home() / ".maniskill").expanduser().resolve()


def download_command(root: Path) -> str:
    return " && ".join(f"MS_ASSET_DIR={root} python -m mani_skill.utils.download_asset {uid} -y" for uid in DOWNLOAD_IDS)


def required_files(ms3_env_id: str) -> list[str]:
    """Every file (relative to `<MS_ASSET_DIR>/data`) the task opens; `{a,b}` lists accepted alternatives."""
    info, *models = MODELS[ms3_env_id]
    custom = BRIDGE / "custom"
    return [str(ROBOT), str(STAGES["flat_table"]), str(OVERLAY), str(custom / info),
            *(str(custom / "models" / m / "collision.obj") for m in models),
            *(str(custom / "models" / m / "textured.{obj,dae,glb}") for m in models)]


def _exists(root: Path, pattern: str) -> bool:
    stem, brace, rest = pattern.partition("{")
    alternatives = [stem + ext + rest.partition("}")[2] for ext in rest.partition("}")[0].split(",")] if brace else [pattern]
    return any((root / p).exists() for p in alternatives)


def check_assets(ms3_env_id: str, root: Path) -> None:
    """Raise FileNotFoundError naming what is missing (whole asset groups, else files) and the download command."""
    data = root / "data"
    groups = {uid: folder for uid, folder in zip(DOWNLOAD_IDS, (BRIDGE, ROBOT.parent)) if not (data / folder).is_dir()}
    missing = [f"{uid} ({folder})" for uid, folder in groups.items()] + [
        p for p in required_files(ms3_env_id) if not any(p.startswith(str(f)) for f in groups.values()) and not _exists(data, p)]
    if missing:
        raise FileNotFoundError(
            f"SIMPLER task {ms3_env_id} needs ManiSkill assets that are not in {data}: missing {', '.join(missing)}. "
            f"Download them with: {download_command(root)} (or point MS_ASSET_DIR / asset_dir= at a folder that has them)")


def use_asset_dir(root: Path) -> None:
    """Point ManiSkill at `root` and switch off its stdin prompt. ManiSkill reads MS_ASSET_DIR once, when
    first imported, so a process that already imported it with another folder cannot switch."""
    if "mani_skill" in sys.modules:
        current = Path(sys.modules["mani_skill"].ASSET_DIR).resolve()
        if current != root / "data":
            raise RuntimeError(f"mani_skill was already imported with its assets in {current}; this process cannot "
                               f"switch to {root / 'data'}: set MS_ASSET_DIR={root} before anything imports mani_skill")
    os.environ["MS_ASSET_DIR"] = str(root)
    os.environ["MS_SKIP_ASSET_DOWNLOAD_PROMPT"] = "1"


def write_stand_in_stage(root: str | os.PathLike) -> Path:
    """Write a box table as `<root>/data/.../stages/bridge_table_1_v1.glb` (only where no stage is present)."""
    import trimesh

    path = Path(root) / "data" / STAGES["flat_table"]
    if path.exists():
        return path
    box = trimesh.creation.box(extents=TABLE_EXTENTS)
    box.apply_translation([*TABLE_CENTRE_XY, TABLE_TOP_Z - TABLE_EXTENTS[2] / 2])
    box.apply_translation(-STAGE_OFFSET)
    box.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    box.export(path)
    return path
