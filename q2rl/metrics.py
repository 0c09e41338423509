"""Metrics history: scalars over time in TensorBoard's event format, under the run directory.

    writer = ScalarWriter(run_dir / "tensorboard" / "learner")
    writer.scalars(env_steps, {"learning/critic_loss": 0.3, "learning/q_mean": None})   # None/NaN/inf skipped
    writer.close()
    read_scalars(run_dir / "tensorboard" / "learner")    # {tag: [ScalarPoint(step, value, wall_time), ...]}

    runs/<run>/tensorboard/
        learner/                  the learner's scalars (status cadence); x axis: stored env steps
        actors/<id>/episodes/     each actor's EpisodeReports as the learner received them; x: the learner's env steps
        actors/<id>/loop/         the actor's own link health and loop timing (once a second); x: its transitions sent

`tensorboard --logdir runs/` (a separate `pip install tensorboard`) shows every run, and every process of a run as
its own curve. Written with tensorboardX: small, maintained, no TensorFlow or PyTorch, and its protobufs load with
our pinned protobuf; it writes from a background thread, so a call here only queues events. It has no reader, so
`read_scalars` parses the TFRecord framing with the Event proto it ships (the one reader of these files).

A resumed run writes a new event file beside the old one (each process names its own, by start time and pid), with
steps that continue where the old file's stopped: TensorBoard draws one curve across both. Two processes never write
into the same directory at once (TensorBoard reads the files of one directory one after the other).
"""

from __future__ import annotations

import math
import os
import struct
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

from q2rl.progress import ActorStatus, LearnerStatus, write_actor_status

TENSORBOARD_DIR = "tensorboard"
EVENT_FILE_PREFIX = "events.out.tfevents."
FLUSH_EVERY_S = 10.0  # how stale the files may be for TensorBoard; each flush is an fsync, so not every second


def learner_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / TENSORBOARD_DIR / "learner"


def actor_episodes_dir(run_dir: str | Path, actor_id: str) -> Path:
    return Path(run_dir) / TENSORBOARD_DIR / "actors" / actor_id / "episodes"


def actor_loop_dir(run_dir: str | Path, actor_id: str) -> Path:
    return Path(run_dir) / TENSORBOARD_DIR / "actors" / actor_id / "loop"


def finite_scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The values that can be drawn: numbers (bools as 0/1) that are finite; None, NaN and inf are left out."""
    out = {}
    for tag, value in values.items():
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[tag] = number
    return out


class ScalarWriter:
    """Scalars into one TensorBoard run directory; the event file is created on the first write (a process that
    logs nothing leaves nothing), flushed every `flush_every_s` by tensorboardX's thread and at `close`."""

    def __init__(self, directory: str | Path, flush_every_s: float = FLUSH_EVERY_S):
        self.directory, self.flush_every_s = Path(directory), flush_every_s
        self._writer = None

    def scalars(self, step: int, values: Mapping[str, Any], wall_time: float | None = None) -> int:
        """Log `values` ({tag: number}) at `step`; returns how many were written (None/NaN/inf are skipped)."""
        finite = finite_scalars(values)
        if not finite:
            return 0
        if self._writer is None:
            from tensorboardX import SummaryWriter

            # tensorboardX names the file by the second it was made and opens it with "wb": the pid and the
            # nanoseconds keep a writer made within the same second (a quick restart) from truncating another's.
            self._writer = SummaryWriter(str(self.directory), max_queue=1000, flush_secs=self.flush_every_s,
                                         filename_suffix=f".{os.getpid()}.{time.time_ns()}")
        wall_time = time.time() if wall_time is None else wall_time
        for tag, value in finite.items():
            self._writer.add_scalar(tag, value, int(step), walltime=wall_time)
        return len(finite)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Rate:
    """Per-second rate of a growing count, from the previous sample to this one (None on the first sample or when
    no time passed)."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    def update(self, count: float, now: float) -> float | None:
        last, self._last = self._last, (count, now)
        if last is None or now <= last[1]:
            return None
        return (count - last[0]) / (now - last[1])


# --------------------------------------------------------------------------------------------------- the learner


def learner_scalars(status: LearnerStatus, utd_target: float, insert_rate: float | None) -> dict[str, Any]:
    """What the learner's status says, as tags (the x axis is status.env_steps)."""
    values: dict[str, Any] = {f"learning/{name}": v for name, v in status.learning.items()}
    values.update({
        "rate/updates_per_s": status.updates_per_s,
        "rate/env_steps_per_s": insert_rate,  # the insert rate: stored training transitions per second
        "utd/achieved": status.utd_measured if status.phase in ("online", "done") else None,
        "utd/target": utd_target,
        "share/bc_train": status.bc_share,  # over the last learner.train_window training episodes
        "success/train": status.train_success_rate if status.episodes else None,
        "progress/updates": status.updates,
        "progress/episodes": status.episodes,
        "progress/cut_episodes": status.cut_episodes,
        "progress/param_version": status.param_version,
        "progress/q_estimation_steps_left": status.q_estimation_steps_left,
        "replay/size": status.replay_size,
        "actors/connected": status.actors_connected,
    })
    return values


def eval_point_scalars(point) -> dict[str, Any]:
    """One closed eval window (progress.EvalPoint), logged at its own env steps."""
    return {"success/eval": point.success_rate, "share/bc_eval": point.eval_bc_share,
            "share/bc_train_window": point.bc_share, "success/train_window": point.train_success,
            "eval/episodes": point.episodes}


def q_estimation_scalars(report) -> dict[str, Any]:
    """The Q-Estimation fit's regressions (core.q_estimation.QEstimationReport): first and last chunk losses, the
    held-out losses (first chunk, kept params) and the steps each stage ran before it converged."""
    values: dict[str, Any] = {"q_estimation/rollout_success": report.success_rate,
                              "q_estimation/rollout_return": report.mean_return,
                              "q_estimation/heldout_episodes": report.heldout_episodes}
    for name in ("value_loss", "critic_loss", "actor_nll"):
        first, last = getattr(report, name)
        values[f"q_estimation/{name}_first"], values[f"q_estimation/{name}_last"] = first, last
    from q2rl.core.q_estimation import STAGES

    for stage, steps in zip(STAGES, report.stage_steps):
        first, kept = getattr(report, f"{stage}_heldout")
        values[f"q_estimation/{stage}_steps"] = steps
        values[f"q_estimation/{stage}_heldout_first"], values[f"q_estimation/{stage}_heldout_kept"] = first, kept
    return values


def episode_scalars(report) -> dict[str, Any]:
    """One actor's finished episode (interfaces.EpisodeReport): training and evaluation episodes under their own
    tags; a cut episode counts only as cut."""
    if report.cut:
        return {"episode/cut": 1.0}
    prefix = "eval_episode" if report.eval else "episode"
    return {f"{prefix}/success": float(report.success), f"{prefix}/length": report.length,
            f"{prefix}/bc_share": report.bc_share, f"{prefix}/return": report.undiscounted_return}


class Means:
    """Means per tag of the values added since the last `take()` (the transitions and episodes between two status
    ticks)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self.sums[tag] = self.sums.get(tag, 0.0) + float(value)
            self.counts[tag] = self.counts.get(tag, 0) + 1

    def take(self) -> dict[str, float]:
        out = {tag: total / self.counts[tag] for tag, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return out


def gate_values(t) -> dict[str, float]:
    """A stored transition's gate record: Q_RL(s, a_rl) and Qhat_BC(s, a_bc) as the actor saw them, and whether
    pi_RL's action ran; nothing before the first parameters (pi_BC alone records no values)."""
    if t.param_version <= 0:
        return {}
    return {"gate/q_bc_mean": t.q_bc, "gate/q_rl_mean": t.q_rl, "gate/rl_share": float(t.source == "rl")}


class LearnerMetrics:
    """The learner process's metrics history (learner/cli.py's driver calls it): its status at status cadence, each
    eval window as it closes, each actor's episodes as they are reported."""

    def __init__(self, run_dir: str | Path, utd_target: float, logged_eval_points: int = 0):
        """`logged_eval_points`: eval windows already logged (a resumed run's), not logged again."""
        self.run_dir, self.utd_target = Path(run_dir), utd_target
        self.learner = ScalarWriter(learner_dir(run_dir))
        self.actors: dict[str, ScalarWriter] = {}
        self.insert_rate = Rate()
        self.means = Means()  # gate values and episode lengths between two status ticks
        self.logged_eval_points = logged_eval_points
        self.q_estimation_logged = False

    def transition(self, t) -> None:
        self.means.add(gate_values(t))

    def episode(self, report, env_steps: int) -> None:
        writer = self.actors.get(report.actor_id)
        if writer is None:
            writer = self.actors[report.actor_id] = ScalarWriter(actor_episodes_dir(self.run_dir, report.actor_id))
        writer.scalars(env_steps, episode_scalars(report))
        if not report.eval and not report.cut:
            self.means.add({"episode/length_mean": report.length})

    def status(self, status: LearnerStatus, q_estimation_report=None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        values = learner_scalars(status, self.utd_target, self.insert_rate.update(status.env_steps, now))
        values.update(self.means.take())
        if q_estimation_report is not None and not self.q_estimation_logged:
            values.update(q_estimation_scalars(q_estimation_report))
            self.q_estimation_logged = True
        self.learner.scalars(status.env_steps, values)
        for point in status.eval_curve[self.logged_eval_points:]:
            self.learner.scalars(point.env_steps, eval_point_scalars(point))
        self.logged_eval_points = max(self.logged_eval_points, len(status.eval_curve))

    def close(self) -> None:
        for writer in [self.learner, *self.actors.values()]:
            writer.close()


# --------------------------------------------------------------------------------------------------- an actor


def actor_scalars(status: ActorStatus, steps_per_s: float | None) -> dict[str, Any]:
    """An actor's status snapshot as tags: link health and loop timing."""
    return {"loop/steps_per_s": steps_per_s, "loop/recent_max_gap_ms": status.recent_max_loop_gap_ms,
            "loop/waiting_for_learner_s": status.waiting_for_learner_s, "link/spooled": status.spooled,
            "link/connected": status.link in ("connected", "local"), "link/param_version": status.param_version}


class ActorStatusLog:
    """What an actor's StatusWriter calls, on its own thread, with each new snapshot: the snapshot as
    actors/<id>.json and its numbers as scalars. The x axis is the actor's transitions sent over all its
    processes (`first_seq` + this process's), so a restarted actor continues its curves."""

    def __init__(self, run_dir: str | Path, actor_id: str, first_seq: int = 0):
        self.run_dir, self.first_seq = Path(run_dir), first_seq
        self.writer = ScalarWriter(actor_loop_dir(run_dir, actor_id))
        self.rate = Rate()  # the snapshot's own steps_per_s is not filled in: the rate between snapshots

    def __call__(self, status: ActorStatus) -> None:
        write_actor_status(self.run_dir, status)
        rate = self.rate.update(status.env_steps, status.updated_at)
        self.writer.scalars(self.first_seq + status.env_steps, actor_scalars(status, status.steps_per_s or rate))

    def close(self) -> None:
        self.writer.close()


# --------------------------------------------------------------------------------------------------- reading back


class ScalarPoint(NamedTuple):
    step: int
    value: float
    wall_time: float


def event_files(directory: str | Path) -> list[Path]:
    """The event files of one TensorBoard run directory, oldest first (names start with their creation time)."""
    return sorted(p for p in Path(directory).glob(EVENT_FILE_PREFIX + "*") if p.is_file())


_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def read_event_records(path: str | Path) -> Iterable[bytes]:
    """The intact TFRecord payloads of an event file: [u64 length][u32 masked crc32c of it][data][u32 masked
    crc32c of it]. A torn last record (a writer that is still writing, or crashed) ends the read."""
    from tensorboardX.record_writer import masked_crc32c

    data = Path(path).read_bytes()
    pos = 0
    while pos + _LENGTH.size + _CRC.size <= len(data):
        header = data[pos:pos + _LENGTH.size]
        (length,) = _LENGTH.unpack(header)
        (header_crc,) = _CRC.unpack_from(data, pos + _LENGTH.size)
        start = pos + _LENGTH.size + _CRC.size
        end = start + length
        if header_crc != masked_crc32c(header) or end + _CRC.size > len(data):
            return
        payload = data[start:end]
        if _CRC.unpack_from(data, end)[0] != masked_crc32c(payload):
            return
        yield payload
        pos = end + _CRC.size


def read_scalars(directory: str | Path) -> dict[str, list[ScalarPoint]]:
    """Every scalar in one TensorBoard run directory: {tag: points in file order}."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[ScalarPoint]] = {}
    for path in event_files(directory):
        for payload in read_event_records(path):
            event = Event.FromString(payload)
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = value.simple_value
                elif value.HasField("tensor") and value.tensor.float_val:
                    number = value.tensor.float_val[0]
                else:
                    continue
                out.setdefault(value.tag, []).append(ScalarPoint(int(event.step), float(number), event.wall_time))
    return out
