"""A run's directory on disk: where the learner keeps its config, checkpoints, episodes and status.

    runs/<name>/
        config.yaml          the resolved run config (its hash is the handshake's config hash)
        checkpoint/          learner.ckpt (last state), best-<updates>-<window>.ckpt (the best candidates: the
                             states at the top learner.best_candidates eval windows), best.ckpt (a second name of
                             the chosen one); msgpack, written atomically
        episodes/            append-only episode files (learner.episode_store)
        status.json          the learner's live status (rewritten atomically about once a second)
        actors/<id>.json     each actor's live status (link health, spool)
        learner.addr         host:port the learner actually bound (written once it serves)
        final_eval.json      the latest evaluation of the final checkpoint (`q2rl actor --evaluate`)
        best_eval.json       the latest evaluation of checkpoint/best.ckpt (`... --evaluate RUN --checkpoint best`)
        evaluations.jsonl    every such evaluation, appended, so a second one (other protocol) loses nothing
        tensorboard/         the metrics history: TensorBoard event files of the learner and each actor (q2rl.metrics)
        report/              what `q2rl report RUN` writes (figures, rollout video, index.html); nothing else does

Every write that replaces a file goes through `q2rl.recordio.atomic_write`: a crash mid-write leaves the old
file intact.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from q2rl.recordio import atomic_write

CONFIG_FILE = "config.yaml"
STATUS_FILE = "status.json"
ADDRESS_FILE = "learner.addr"
SUMMARY_FILE = "summary.json"
FINAL_EVAL_FILE = "final_eval.json"
BEST_EVAL_FILE = "best_eval.json"
CHECKPOINT_FILE = "checkpoint/learner.ckpt"
# The learner state when the best eval window so far closed (ties go to the later, better-trained state).
BEST_CHECKPOINT_FILE = "checkpoint/best.ckpt"
# The Q-Estimation fit under way (params so far, optimiser state, stage): a learner restarted during the fit goes on.
FIT_CHECKPOINT_FILE = "checkpoint/q_estimation_fit.ckpt"
CHECKPOINTS = {"last": CHECKPOINT_FILE, "best": BEST_CHECKPOINT_FILE}


def best_candidate_file(updates: int, window: int) -> str:
    """A kept best candidate: the state when eval window number `window` closed, after `updates` update calls."""
    return f"checkpoint/best-{updates:09d}-{window:04d}.ckpt"
EVAL_FILES = {"last": FINAL_EVAL_FILE, "best": BEST_EVAL_FILE}  # the latest evaluation of each checkpoint
EVALUATIONS_LOG = "evaluations.jsonl"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists already, missing, or not a run)."""


def write_json(path: str | Path, obj: Any, durable: bool = True) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True), durable)


def read_json(path: str | Path) -> Any | None:
    """The JSON content of `path`, or None when it does not exist (yet)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def append_jsonl(path: str | Path, obj: Any) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")


def default_run_name(task: str, now: datetime.datetime | None = None) -> str:
    now = now or datetime.datetime.now()
    return f"{task}-{now:%Y%m%d-%H%M%S}"


def refuse_existing_run(root: str | Path, name: str) -> Path:
    """The path of a new run directory; an existing one is refused (use --resume to continue it). Process logs a
    launcher opened in it beforehand (*.log) do not count as content."""
    path = Path(root) / name
    if path.exists() and any(not p.name.endswith(".log") for p in path.iterdir()):
        raise RunDirError(
            f"run directory {path} already exists; continue it with --resume {path}, "
            "or choose another learner.run_name"
        )
    return path


def create_run_dir(root: str | Path, name: str) -> Path:
    """A fresh run directory (see refuse_existing_run)."""
    path = refuse_existing_run(root, name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_run_dir(path: str | Path) -> Path:
    """An existing run directory for --resume; must hold the config the run was started with."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise RunDirError(f"{path} is not a q2rl run directory (no {CONFIG_FILE}); nothing to resume")
    return path
