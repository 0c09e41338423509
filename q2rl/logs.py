"""Logging for q2rl's processes: one format on stderr, and the run directory's own copy of the learner's log.

    configure_logging("learner")                  # at process start, before anything logs
    log_to_run_dir(run_dir / "learner.log")       # once the run directory is known
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# Loggers whose INFO lines are noise to an operator: JAX announces every accelerator backend it could not find
# ("Unable to initialize backend 'tpu'") at the head of every log.
_QUIET = ("jax._src.xla_bridge",)


def _format(process: str) -> logging.Formatter:
    return logging.Formatter(f"%(asctime)s {process} %(levelname)s %(message)s")


def configure_logging(process: str, level: int = logging.INFO) -> None:
    """INFO and above to stderr, each line stamped with the time and `process` (learner, actor, ...)."""
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_q2rl_stderr", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_format(process))
        handler._q2rl_stderr = True
        root.addHandler(handler)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def room_on_terminal(process: str) -> int | None:
    """Columns a log message has on the terminal stderr is (after the time, process and level), None off one:
    the learner fits its status line to them instead of wrapping (a session's learner logs to a file: whole)."""
    if not sys.stderr.isatty():
        return None
    import shutil

    prefix = len(_format(process).format(logging.LogRecord(process, logging.INFO, "", 0, "", None, None)))
    return max(40, shutil.get_terminal_size().columns - prefix)


def log_to_run_dir(path: Path, process: str) -> None:
    """Also append the log to `path` (e.g. RUN/learner.log), unless stderr already goes to that file (the session
    starts its learner that way), so a learner started alone leaves the same record in its run directory."""
    path = Path(path)
    try:
        if path.exists() and os.path.samefile(f"/proc/self/fd/{sys.stderr.fileno()}", path):
            return
    except (OSError, ValueError, AttributeError):
        pass
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_format(process))
    logging.getLogger().addHandler(handler)
