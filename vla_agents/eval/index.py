"""A run's videos at a glance: `index.html` beside them, one row per episode with its first and last
frames, outcome, seed and instruction, linked to the video. Open it in a browser to pick which
videos to watch; the thumbnails are PNG files in `thumbs/`, so the page works offline."""
from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import imageio
import numpy as np
from PIL import Image

from vla_agents.atomic import write_file
from vla_agents.eval.compare import ComparisonResult
from vla_agents.eval.rollout import EvalReport

THUMB_WIDTH = 360
_STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border-bottom:1px solid #ccc;"
          "padding:4px 8px;text-align:left;vertical-align:middle}.ok{color:#080;font-weight:bold}"
          ".fail{color:#b00;font-weight:bold}img{display:block}")


def first_and_last_frames(video: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with imageio.get_reader(video) as reader:
        first = last = None
        for frame in reader:
            first = frame if first is None else first
            last = frame
    if first is None:
        raise ValueError(f"{video} has no frames")
    return np.asarray(first), np.asarray(last)


def _thumbnail(frame: np.ndarray, path: Path) -> None:
    image = Image.fromarray(frame)
    width = min(THUMB_WIDTH, image.width)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize((width, image.height * width // image.width), Image.Resampling.LANCZOS).save(path)


def _outcome(success: bool, error: str | None) -> str:
    if error:
        return f'<span class="fail">error</span><br><small>{html.escape(error)}</small>'
    return '<span class="ok">success</span>' if success else '<span class="fail">failure</span>'


def write_index(reports: Sequence[EvalReport], out_dir: str | Path, labels: Sequence[str] | None = None,
                title: str = "Evaluation videos") -> Path:
    """Write `out_dir/index.html` (and `out_dir/thumbs/`) for the episodes of `reports` that have a
    video, one section per report headed by its label (default: "<policy> on <task>")."""
    out_dir = Path(out_dir)
    labels = labels or [f"{report.policy_name} on {report.env_name}" for report in reports]
    sections = []
    thumbs = 0
    for label, report in zip(labels, reports, strict=True):
        rows = []
        for i, episode in enumerate(report.episodes):
            if not episode.video_path:
                continue
            video = Path(episode.video_path)
            cells = []
            for which, frame in zip(("first", "last"), first_and_last_frames(video)):
                thumb = out_dir / "thumbs" / f"{thumbs:05d}-{which}.png"
                _thumbnail(frame, thumb)
                cells.append(f'<td><img src="{html.escape(os.path.relpath(thumb, out_dir))}" alt="{which} frame"></td>')
            thumbs += 1
            link = html.escape(os.path.relpath(video, out_dir))
            rows.append(f"<tr><td><a href=\"{link}\">episode {i}</a></td><td>{episode.seed}</td>"
                        f"<td>{_outcome(episode.success, episode.error)}</td><td>{episode.length}</td>"
                        f"<td>{html.escape(episode.instruction)}</td>{''.join(cells)}</tr>")
        if rows:
            wins = sum(ep.success for ep in report.episodes)
            sections.append(f"<h2>{html.escape(label)}: "
                            f"{wins}/{len(report.episodes)} successes</h2><table><tr><th>video</th><th>seed</th>"
                            "<th>outcome</th><th>steps</th><th>instruction</th><th>first frame</th><th>last frame</th></tr>"
                            + "".join(rows) + "</table>")
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>{_STYLE}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>{''.join(sections) or '<p>No videos were written.</p>'}</body></html>")
    return write_file(out_dir / "index.html", page)


def write_comparison_index(result: ComparisonResult, out_dir: str | Path, title: str = "Comparison videos") -> Path:
    """`write_index` for `compare`'s videos: one section per (agent, task), named after the agent's row."""
    cells = [(row.name, report) for row in result.rows for report in row.reports.values()]
    return write_index([report for _, report in cells], out_dir, [f"{name} on {report.env_name}" for name, report in cells],
                       title)
