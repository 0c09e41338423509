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


# ------------------------------------------------------------------------- the run's inputs: pi_BC and its demos
# A run directory stands alone: it holds a copy of its BC policy (and of the demos a demo buffer samples) under
# RUN/bc/, and config.yaml names them relative to the run directory, so the directory can be moved, copied to the
# robot's machine, or used from any working directory.

RUN_BC_DIR = "bc"
RUN_BC_POLICY = "bc/policy.ckpt"
RUN_DEMOS = "bc/demos.hdf5"


def find_run_input(path: str | Path, base: str | Path, present=Path.exists) -> Path | None:
    """Where an input that a config file in directory `base` names (bc.checkpoint, bc.demos) is: an absolute path
    as it is; a relative one in `base` first (a run's own copy), else relative to the working directory, else to a
    parent of `base` (runs created before they held their inputs named them relative to where q2rl ran). None when
    it is in none of these places."""
    path, base = Path(path), Path(base)
    if path.is_absolute():
        return path if present(path) else None
    candidates = [base / path, path, *(parent / path for parent in base.resolve().parents)]
    return next((c for c in candidates if present(c)), None)


def find_bc_checkpoint(path: str | Path, base: str | Path) -> Path:
    """The BC checkpoint (directory or policy.ckpt) a run's config names, by `find_run_input`; CheckpointError
    naming the places looked in when it is in none."""
    from q2rl.core.checkpoint import CheckpointError, bc_policy_file

    found = find_run_input(path, base, lambda p: bc_policy_file(p).is_file())
    if found is None:
        raise CheckpointError(f"{Path(base) / CONFIG_FILE} names the BC policy {path}, which is not there (neither "
                              f"relative to {base} nor to the working directory); pass bc.checkpoint=PATH")
    return found


def with_run_inputs(cfg, base: str | Path):
    """`cfg` (read from a config file in directory `base`, e.g. RUN/config.yaml) with bc.checkpoint and bc.demos
    as paths this process can open, wherever it runs from; one left as it is when it is not found (the command
    that needs it says so)."""
    import dataclasses

    from q2rl.core.checkpoint import bc_policy_file

    bc = cfg.bc
    checkpoint = bc.checkpoint and find_run_input(bc.checkpoint, base, lambda p: bc_policy_file(p).is_file())
    demos = bc.demos and find_run_input(bc.demos, base, Path.is_file)
    bc = dataclasses.replace(bc, checkpoint=str(checkpoint or bc.checkpoint), demos=str(demos or bc.demos))
    return dataclasses.replace(cfg, bc=bc)


def bc_source_file(cfg) -> Path:
    """The policy.ckpt a new run's bc.checkpoint names; ConfigError when there is none (checked before the run
    directory is created, so a typo leaves no empty run behind)."""
    from q2rl.config import ConfigError
    from q2rl.core.checkpoint import bc_policy_file

    source = bc_policy_file(cfg.bc.checkpoint)
    if not source.is_file():
        raise ConfigError(f"bc.checkpoint: {cfg.bc.checkpoint} is not a BC policy (a `q2rl bc train` output directory "
                          "or its policy.ckpt)")
    return source


def keep_run_inputs(cfg, run_dir: str | Path):
    """Copy a new run's BC policy (with its eval.json, pi_BC's measured success) and, when the agent samples demos
    (agent.algo rlpd, agent.use_demos), bc.demos into RUN/bc/; `cfg` naming the copies relative to the run
    directory, as config.yaml is to say them."""
    import dataclasses
    import shutil

    run_dir = Path(run_dir)
    source = bc_source_file(cfg)
    (run_dir / RUN_BC_DIR).mkdir(exist_ok=True)
    shutil.copy2(source, run_dir / RUN_BC_POLICY)
    # pi_BC's measured success: `bc eval`'s eval.json beside it, or the session cache's bc_eval.json (bc_source)
    measured = [p for p in (source.parent / "eval.json", source.parent.parent / "bc_eval.json") if p.is_file()]
    if measured:
        shutil.copy2(measured[0], run_dir / RUN_BC_DIR / "eval.json")
    demos = cfg.bc.demos
    if demos and cfg.agent.use_demos and Path(demos).is_file():
        shutil.copy2(demos, run_dir / RUN_DEMOS)
        demos = RUN_DEMOS
    return dataclasses.replace(cfg, bc=dataclasses.replace(cfg.bc, checkpoint=RUN_BC_POLICY, demos=demos))
