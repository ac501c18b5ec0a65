"""One progress/logging interface for training loops and the experiment runner.

Code that does long work takes ``progress: Progress | None`` and calls ``start``, ``advance``
and ``log``; ``None`` means quiet. :class:`ConsoleProgress` prints a rich progress bar.
"""

from __future__ import annotations

from typing import Any


class Progress:
    """Quiet by default: subclasses override what they want to show."""

    def start(self, total: int | None, description: str = "") -> None:
        pass

    def advance(self, steps: int = 1, **info: Any) -> None:
        pass

    def log(self, message: str = "", **metrics: Any) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingProgress(Progress):
    """Keeps every logged metrics dict (used by tests and the run record)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.steps = 0

    def advance(self, steps: int = 1, **info: Any) -> None:
        self.steps += steps

    def log(self, message: str = "", **metrics: Any) -> None:
        self.records.append({"message": message, **metrics})


class ConsoleProgress(Progress):
    """A rich progress bar plus one printed line per ``log`` call."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
        from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True,
        )
        self._task = None

    def start(self, total: int | None, description: str = "") -> None:
        if self._task is None:
            self._bar.start()
        else:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(description, total=total)

    def advance(self, steps: int = 1, **info: Any) -> None:
        if self._task is not None:
            self._bar.advance(self._task, steps)

    def log(self, message: str = "", **metrics: Any) -> None:
        self.console.print(format_log(message, metrics))

    def close(self) -> None:
        if self._task is not None:
            self._bar.stop()
            self._task = None


class LogProgress(Progress):
    """Plain timestamped lines (for logs and pipes, where a progress bar would be noise)."""

    def __init__(self, stream: Any = None) -> None:
        import sys

        self.stream = stream if stream is not None else sys.stderr

    def _line(self, text: str) -> None:
        import time

        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def start(self, total: int | None, description: str = "") -> None:
        self._line(f"{description}: {total if total is not None else '?'} steps")

    def log(self, message: str = "", **metrics: Any) -> None:
        self._line(format_log(message, metrics))


def format_log(message: str, metrics: dict[str, Any]) -> str:
    """``message k=v k=v`` with floats to 4 significant digits."""
    parts = [message] if message else []
    parts += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()]
    return " ".join(parts)


def ensure_progress(progress: Progress | None) -> Progress:
    return progress if progress is not None else Progress()
