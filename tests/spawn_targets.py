"""Worker entry points for the supervisor's tests. Workers are spawned (a fresh interpreter that
imports the target by name), so these live in a module that imports almost nothing."""

from __future__ import annotations

from pathlib import Path


def worker_exiting_with(config_path: str, restarted: bool) -> None:
    """Records its start, then exits at once with the code written in ``config_path``."""
    with Path(config_path).with_suffix(".starts").open("a") as starts:
        starts.write("r\n" if restarted else "s\n")
    raise SystemExit(int(Path(config_path).read_text()))
