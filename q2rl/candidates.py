"""The best candidates of a run (docs/design.md#best-checkpoint): how eval windows rank, which states are kept, and
best.ckpt as a second name of the chosen one. The learner keeps them (learner/learner.py); the final evaluation
confirms one on fresh episodes (actor/best.py).

    ranked = rank_candidates(candidates)        # best first: Wilson lower bound, ties to the later window
    kept = read_best_candidates(run_dir)        # checkpoint/best-*.ckpt, best first
    link_file(run_dir / kept[0]["file"], run_dir / "checkpoint/best.ckpt")
"""

from __future__ import annotations

import logging
from pathlib import Path

from q2rl.core.checkpoint import CheckpointError, read_metadata
from q2rl.run_dir import BEST_CHECKPOINT_FILE

log = logging.getLogger(__name__)


def rank_candidates(candidates: list[dict]) -> list[dict]:
    """Best first: by the Wilson 95 % lower bound of each window's success (10/10 ranks below 36/40: a short
    window's perfect score is weak evidence), ties to the later window (the longer-trained state)."""
    return sorted(candidates, key=lambda c: (round(c["lcb"], 12), c["window"]), reverse=True)


def read_best_candidates(run_dir: Path) -> list[dict]:
    """The best candidates kept in run_dir/checkpoint (best-*.ckpt), best first; a damaged one is skipped with a
    warning (it is no candidate)."""
    out = []
    for path in sorted((Path(run_dir) / BEST_CHECKPOINT_FILE).parent.glob("best-*.ckpt")):
        try:
            candidate = read_metadata(path)["candidate"]
            out.append(dict(candidate, file=str(path.relative_to(run_dir))))
        except (CheckpointError, KeyError, TypeError) as e:
            log.warning("%s is damaged or not a best candidate (%s); ignoring it", path, e)
    return rank_candidates(out)


def link_file(source: Path, name: Path) -> Path:
    """Make `name` a second name of `source` (a hard link, atomically replacing it; a copy where links fail)."""
    import os

    from q2rl.recordio import atomic_write, fsync_dir

    tmp = name.with_name(f".{name.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
        os.replace(tmp, name)
        fsync_dir(name.parent)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write(name, source.read_bytes())
    return name
