"""LoggedProgress: plain progress lines in log files, nothing extra on a terminal."""
from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.progress import MofNCompleteColumn, TextColumn

from vla_agents.progress import LoggedProgress


def run(terminal: bool, log_every: float = 0.25, total: int = 8, transient: bool = False) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=80)
    with LoggedProgress(TextColumn("{task.description}"), MofNCompleteColumn(), console=console, log_every=log_every,
                        transient=transient) as bar:
        task = bar.add_task("train", total=total)
        for i in range(total):
            if i % 2:
                bar.advance(task)
            else:
                bar.update(task, advance=1)
    return out.getvalue()


def test_log_file_gets_one_line_per_quarter() -> None:
    expected = [["train", "2/8"], ["train", "4/8"], ["train", "6/8"], ["train", "8/8"]]
    for transient in (False, True):  # the last line is rich's own final render, or ours when rich prints none
        lines = [line.split() for line in run(terminal=False, transient=transient).splitlines() if line.strip()]
        assert lines == expected


def test_terminal_gets_only_the_live_bar() -> None:
    out = run(terminal=True)
    assert "8/8" in out and "2/8" not in out  # the live bar redraws in place; no logged lines


def test_bad_log_every() -> None:
    with pytest.raises(ValueError, match="log_every must be a fraction in \\(0, 1\\], got 0"):
        LoggedProgress(log_every=0)
