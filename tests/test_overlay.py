"""Attention overlays a person can read: untouched where attention is zero, a perceptually uniform
colormap, the grid on the policy's centre crop, per-episode scaling, labels, colour bar, legend."""
import dataclasses

import imageio
import numpy as np
import pytest

from vla_agents.agent import preprocess_image
from vla_agents.eval.overlay import MAX_ALPHA, centre_crop_box, colormap_lut, overlay_heatmap
from vla_agents.eval.video import EpisodeVideo, OverlayStyle, compose_frame
from vla_agents.policies import load_recipe
from vla_agents.types import AttentionMaps


def scene(height: int = 32, width: int = 32) -> np.ndarray:
    """Grey table with a red cube: the cube must keep its colour where the policy did not look."""
    frame = np.full((height, width, 3), 120, np.uint8)
    frame[height // 2 : height // 2 + 6, width // 2 : width // 2 + 6] = (200, 20, 20)
    return frame


def hot_corner(grid: int = 4, value: float = 1.0) -> np.ndarray:
    heat = np.zeros((grid, grid))
    heat[0, 0] = value
    return heat


def test_zero_attention_leaves_pixels_unchanged_and_full_attention_takes_the_colormaps_top():
    frame = scene()
    np.testing.assert_array_equal(overlay_heatmap(frame, np.zeros((4, 4))), frame)
    out = overlay_heatmap(frame, hot_corner())
    # 8-px cells: bilinear upsampling reaches from the hot cell's centre to its neighbours' centres (< 12 px), no further.
    np.testing.assert_array_equal(out[12:], frame[12:])
    np.testing.assert_array_equal(out[:, 12:], frame[:, 12:])  # the cube among them: still red
    expected = np.round((1 - MAX_ALPHA) * frame[0, 0] + MAX_ALPHA * colormap_lut("inferno")[255].astype(float))
    np.testing.assert_array_equal(out[0, 0], expected)
    with pytest.raises(ValueError, match="perceptually uniform ones: inferno, viridis"):
        overlay_heatmap(frame, hot_corner(), colormap="jet_missing")


@pytest.mark.parametrize("shape", [(100, 100), (101, 98)])
def test_the_grid_covers_only_the_centre_crop_the_policy_saw(shape):
    height, width = shape
    top, left, crop_h, crop_w = centre_crop_box(height, width, 0.81)
    image = (np.arange(height * width * 3) % 251).astype(np.uint8).reshape(height, width, 3)
    config = dataclasses.replace(load_recipe("oft", "tiny").backbone, image_size=crop_h, crop_area=0.81)
    seen = preprocess_image(image, config, train=False)  # no resize when square
    if crop_h == crop_w:
        crop = image[top : top + crop_h, left : left + crop_w]
        np.testing.assert_allclose(seen.permute(1, 2, 0).numpy() * 255, crop, atol=1e-3)
    assert (top, left) == ((height - crop_h) // 2, (width - crop_w) // 2) and top == 5

    frame = scene(height, width)
    out = overlay_heatmap(frame, hot_corner(3), box=(top, left, crop_h, crop_w))
    np.testing.assert_array_equal(out[:top], frame[:top])  # the frame's corner lies outside the crop: untouched
    np.testing.assert_array_equal(out[:, :left], frame[:, :left])
    assert np.abs(out[top, left].astype(int) - frame[top, left]).max() > 30  # the grid's corner is the crop's corner


def test_an_episode_scale_shows_a_weaker_map_dimmer_where_a_frame_scale_would_not(tmp_path):
    frame = scene()
    strong, weak = hot_corner(value=1.0), hot_corner(value=0.25)
    change = lambda out: np.abs(out[:4, :4].astype(int) - frame[:4, :4]).mean()  # noqa: E731
    assert change(overlay_heatmap(frame, weak)) == change(overlay_heatmap(frame, strong))  # each frame its own max
    assert change(overlay_heatmap(frame, weak, vmax=1.0)) < 0.5 * change(overlay_heatmap(frame, strong, vmax=1.0))

    changes = {}
    for scale in ("episode", "frame"):
        video = EpisodeVideo(tmp_path / f"{scale}.mp4", style=OverlayStyle(scale))
        for heat in (strong, weak):
            video.add({"agentview": frame}, AttentionMaps({"agentview": heat}), ["pick up the cube"])
        with imageio.get_reader(video.close()) as reader:
            changes[scale] = [np.abs(f[:4, :4].astype(int) - frame[:4, :4]).mean() for f in reader]
    assert changes["episode"][1] < 0.5 * changes["episode"][0]
    assert changes["frame"][1] == pytest.approx(changes["frame"][0], abs=3)  # up to H.264's rounding


def test_a_frame_labels_views_scales_colours_explains_outlines_and_marks_a_new_map():
    views = {"agentview": scene(64, 64), "eye_in_hand": scene(64, 64)}
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    attention = AttentionMaps({"agentview": hot_corner(), "eye_in_hand": hot_corner(value=0.5)},
                              {"important": {"agentview": mask}, "pruned": {"agentview": ~mask}})
    new = compose_frame(views, attention, ["pick up the cube"], crop_area=0.81, refreshed=True)
    old = compose_frame(views, attention, ["pick up the cube"], crop_area=0.81, refreshed=False)
    bare = compose_frame(views, AttentionMaps({"agentview": hot_corner()}), ["pick up the cube"])
    assert new.shape[1] == bare.shape[1] > 128 + 60  # both views, then the colour bar
    assert new.shape[0] > bare.shape[0] + 18  # legend rows (wrapped to the frame): the crop outline and the two masks
    differs = np.argwhere(np.any(new != old, axis=2))
    assert differs.size and differs[:, 0].max() < 30  # "new map" tags, at the top of the panels only
    assert set(differs[:, 1] // 64) == {0, 1}
    assert np.any(np.all(old[4:20, 4:60] == 0, axis=2))  # the view's name sits on a black box, top left
    bar = new[:64, 128:]
    lut = colormap_lut("inferno")
    np.testing.assert_array_equal(bar[36, 10], lut[255])  # the bar's top is the colormap's top ...
    np.testing.assert_array_equal(bar[64 - 19, 10], lut[0])  # ... its bottom the colormap's bottom
    assert np.any(np.all(new[:64, :128] == (0, 255, 255), axis=2))  # DTP's pruned tokens outlined in cyan
    assert np.any(np.all(new[64:, :] == (0, 255, 255), axis=2))  # ... and named in the legend with that colour
