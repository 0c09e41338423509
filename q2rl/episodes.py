"""`q2rl episodes export`: a run's stored robot episodes as a robomimic HDF5 file, the format `q2rl bc train` reads.

    q2rl episodes export runs/<run> --out demos.hdf5 [--only-success] [--source bc|rl|any] [--no-images]

The episodes come from the learner's episode store (learner.episode_store, opened read-only: nothing is created,
cut, locked or written in the run, so it is safe beside a running learner) and go out through demos.hdf5's
DemoWriter, the one writer of that format: obs/state, obs/<camera>_image, next_obs, the executed actions, rewards,
dones (1 where the episode succeeded), and per demo where it came from (q2rl_run, q2rl_actor_id, q2rl_episode_id,
q2rl_bc_share). Only complete training episodes are exported: evaluation episodes are not stored, an episode the
actor is still running (a live run) or one cut by a crash is left out, and a truncated last record (being written
right now, or torn by a crash) is skipped with a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger("q2rl.episodes")

Source = Literal["any", "bc", "rl"]
SOURCE_HELP = (
    "which episodes by the actions that ran: any (default): every complete episode; bc: those where every step ran "
    "pi_BC's action (pi_BC's own behaviour, e.g. its Q-Estimation rollouts: with --only-success, BC filtered to its "
    "successes); rl: those where at least one step ran pi_RL's action (the practice the gate changed: with "
    "--only-success, the successes that pi_RL's corrections helped reach, which pi_BC alone would have to learn)")


@dataclasses.dataclass
class ExportCounts:
    """What the export did with the stored episodes."""

    written: int = 0
    samples: int = 0
    incomplete: int = 0  # in progress (live run), cut by a crash or a stop, or missing a step
    failed: int = 0  # left out by --only-success
    other_source: int = 0  # left out by --source
    evaluation: int = 0  # evaluation episodes: only their reports are stored


def is_complete(ep) -> bool:
    """A training episode that ended (success or time limit) with every step stored and linked."""
    if not ep.complete or not ep.transitions or ep.unlinked:
        return False
    if ep.report is not None and ep.report.cut:
        return False
    return bool(ep.transitions[-1].terminated or ep.transitions[-1].truncated)


def succeeded(ep) -> bool:
    return bool(ep.report.success) if ep.report is not None else bool(ep.transitions[-1].terminated)


def matches_source(ep, source: Source) -> bool:
    """See SOURCE_HELP."""
    sources = [t.source for t in ep.transitions]
    if source == "bc":
        return all(s == "bc" for s in sources)
    if source == "rl":
        return any(s == "rl" for s in sources)
    return True


def to_demo(ep, images: bool = True):
    """A stored episode as a demos.hdf5 Demo (executed actions; dones mark success)."""
    from q2rl.demos.hdf5 import Demo

    ts = ep.transitions
    cameras = sorted(ts[0].obs.get("images", {})) if images else []
    return Demo(
        states=np.stack([np.asarray(t.obs["state"], np.float32) for t in ts]),
        actions=np.stack([np.asarray(t.action, np.float32) for t in ts]),
        rewards=np.asarray([t.reward for t in ts], np.float32),
        dones=np.asarray([t.terminated for t in ts], np.uint8),
        images={c: np.stack([np.asarray(t.obs["images"][c], np.uint8) for t in ts]) for c in cameras},
        next_states=np.stack([np.asarray(t.next_obs["state"], np.float32) for t in ts]),
        next_images={c: np.stack([np.asarray(t.next_obs["images"][c], np.uint8) for t in ts]) for c in cameras},
        success=succeeded(ep),
    )


def env_args_of(cfg, run_dir: Path, only_success: bool, source: Source) -> dict:
    """robomimic-style env metadata, as `q2rl demos` writes it: the run's env config and where the demos came from."""
    from q2rl.config import to_dict

    sim = cfg.env.backend == "sim"
    return {"env_name": cfg.env.task_name(), "type": "q2rl_sim" if sim else "q2rl_franka",
            "env_kwargs": to_dict(cfg.env.sim if sim else cfg.env.franka),
            "demo_source": {"kind": "q2rl_episodes", "run": str(run_dir), "only_success": only_success,
                            "source": source}}


def export_episodes(run_dir: Path, out: Path, only_success: bool = False, source: Source = "any",
                    images: bool = True, overwrite: bool = False, progress: bool = True) -> ExportCounts:
    """Write the selected episodes of the run's store to `out` (created only once an episode is selected)."""
    from tqdm import tqdm

    from q2rl.demos.hdf5 import DemoWriter
    from q2rl.learner.episode_store import EpisodeStore
    from q2rl.report import load_run_config

    cfg = load_run_config(run_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --force to overwrite it")
    store = EpisodeStore(run_dir, read_only=True)
    counts, writer = ExportCounts(), None
    total = sum(p.stat().st_size for p in store.segment_paths())
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="episodes", disable=not progress, file=sys.stderr)
    try:
        for ep in store.episodes(on_bytes=bar.update):
            if not ep.transitions and ep.report is not None and ep.report.eval:
                counts.evaluation += 1
                continue
            if not is_complete(ep):
                counts.incomplete += 1
                continue
            if only_success and not succeeded(ep):
                counts.failed += 1
                continue
            if not matches_source(ep, source):
                counts.other_source += 1
                continue
            if writer is None:
                writer = DemoWriter(out, env_args_of(cfg, run_dir, only_success, source), overwrite=overwrite)
            demo = to_demo(ep, images)
            bc_steps = sum(t.source == "bc" for t in ep.transitions)
            writer.add(demo, attrs={"q2rl_run": str(run_dir), "q2rl_actor_id": ep.actor_id,
                                    "q2rl_episode_id": int(ep.episode_id), "q2rl_bc_share": bc_steps / len(demo)})
            counts.written += 1
            counts.samples += len(demo)
            bar.set_postfix(written=counts.written)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return counts


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="q2rl episodes export", description=(
        "Export a run's stored robot episodes as robomimic HDF5 (what q2rl bc train reads), to retrain BC on the "
        "practice. Read-only on the run: safe while its learner runs."))
    p.add_argument("run", metavar="RUN", help="run directory (runs/<name>)")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--only-success", action="store_true", help="only the episodes that succeeded")
    p.add_argument("--source", choices=("any", "bc", "rl"), default="any", help=SOURCE_HELP)
    p.add_argument("--no-images", action="store_true", help="leave the camera images out (a state-only file)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def export_main(argv: list[str]) -> int:
    args = _export_parser().parse_args(argv)
    from q2rl.run_dir import RunDirError

    run_dir, out = Path(args.run), Path(args.out)
    if out.resolve().is_relative_to(run_dir.resolve()):
        print(f"q2rl episodes export: --out {out} lies inside the run {run_dir}; the export writes nothing there",
              file=sys.stderr)
        return 2
    try:
        counts = export_episodes(run_dir, out, args.only_success, args.source, images=not args.no_images,
                                 overwrite=args.force, progress=not args.no_progress)
    except (FileExistsError, RunDirError) as e:
        print(f"q2rl episodes export: {e}", file=sys.stderr)
        return 2
    summary = {"out": str(out) if counts.written else None, **dataclasses.asdict(counts)}
    reasons = {"incomplete": "incomplete", "failed": "failed (--only-success)",
               "other_source": "from another source (--source)", "evaluation": "evaluation (no steps stored)"}
    left_out = ", ".join(f"{getattr(counts, k)} {why}" for k, why in reasons.items() if getattr(counts, k))
    print(f"q2rl episodes export: {counts.written} episodes ({counts.samples} steps) -> {out}"
          + (f"; left out: {left_out}" if left_out else ""), file=sys.stderr)
    print(json.dumps(summary))  # the last line of stdout, for scripts
    if not counts.written:
        print(f"q2rl episodes export: no stored episode matched (--only-success {args.only_success}, --source "
              f"{args.source}); nothing written", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    commands = {"export": export_main}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: q2rl episodes export RUN --out demos.hdf5 [--only-success] [--source bc|rl|any]   "
              "(q2rl episodes export --help for details)",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])
