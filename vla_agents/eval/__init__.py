"""Evaluation: rollouts with attention-overlay videos, LeRobot-style `eval_info.json`, Wilson
intervals and agent comparison tables."""
from vla_agents.eval.compare import (ComparisonResult, ComparisonRow, compare, format_parameters, render_table,
                                     table_console)
from vla_agents.eval.rollout import EpisodeResult, EvalReport, episode_metrics, eval_info, evaluate, run_episode
from vla_agents.eval.stats import diff_interval, mcnemar_exact, paired_diff_interval, wilson_interval
from vla_agents.eval.overlay import centre_crop_box, outline_mask, overlay_heatmap
from vla_agents.eval.video import EpisodeVideo, OverlayStyle, VideoWriter, compose_frame

__all__ = [
    "ComparisonResult", "ComparisonRow", "EpisodeResult", "EpisodeVideo", "EvalReport", "OverlayStyle", "VideoWriter",
    "centre_crop_box", "compare", "compose_frame",
    "diff_interval", "episode_metrics", "eval_info", "evaluate", "format_parameters", "mcnemar_exact", "outline_mask",
    "overlay_heatmap", "paired_diff_interval", "render_table", "run_episode", "table_console", "wilson_interval",
]
