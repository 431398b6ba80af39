"""Progress bars that also leave a trace in log files.

Rich draws a live bar on a terminal, but when output goes to a file (`nohup`, CI, a job
scheduler) it prints nothing until the work is done, so a two-hour training looks hung. This
Progress prints the task's columns as one plain line each time another `log_every` fraction of
the work completes, and only when the console is not a terminal. The 100% line is left to rich,
which prints a non-transient bar's final state to a file when it stops.
"""
from __future__ import annotations

from typing import Any

from rich.progress import Progress, TaskID


class LoggedProgress(Progress):
    def __init__(self, *columns: Any, log_every: float = 0.05, **kwargs: Any) -> None:
        if not 0 < log_every <= 1:
            raise ValueError(f"log_every must be a fraction in (0, 1], got {log_every}")
        super().__init__(*columns, **kwargs)
        self.log_every = log_every
        self._logged: dict[TaskID, int] = {}

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def _log(self, task_id: TaskID) -> None:
        if self.disable or self.console.is_terminal:
            return
        task = self._tasks[task_id]
        if not task.total:
            return
        if task.finished and not self.live.transient:
            return
        reached = int(task.completed / task.total / self.log_every + 1e-9)
        if reached > self._logged.get(task_id, 0):
            self._logged[task_id] = reached
            self.console.print(self.make_tasks_table([task]))
