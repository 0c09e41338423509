"""Live status the learner and actors publish as small JSON files, and the one-line view the session shows.

The learner rewrites `status.json` about once a second and every actor `actors/<id>.json`; the session (or
anyone with a shell on the box: `watch cat runs/<run>/status.json`) reads them. JSON, not pickle: it is for
humans and the session, never for restoring state.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from q2rl.run_dir import STATUS_FILE, read_json, write_json


@dataclasses.dataclass
class EvalPoint:
    """One point of the eval success curve: a window of evaluation episodes that closed at the learner's env-step
    count. The session, the lab's learner and the benchmarks all draw their curves from these.

    `bc_share` and `train_success` describe the training episodes finished since the previous point (None when
    none finished); `eval_bc_share` the evaluation episodes themselves. `train_episodes_total` and
    `train_successes_total` count every training episode finished so far, the Q-Estimation rollouts included: the
    success data in replay against which a climb's timing can be read. The `other_protocol_*` fields are set only by
    a paired evaluation (bench/sample_efficiency.py --paired-eval). Curves recorded before a field existed load
    with its default."""

    env_steps: int
    success_rate: float
    episodes: int = 0
    updates: int = 0
    wall_s: float = 0.0
    bc_share: float | None = None
    train_success: float | None = None
    eval_bc_share: float | None = None
    other_protocol_success: float | None = None
    other_protocol_bc_share: float | None = None
    train_episodes_total: int | None = None
    train_successes_total: int | None = None


@dataclasses.dataclass
class LearnerStatus:
    """What the learner reports about itself (status.json)."""

    phase: str = "starting"  # starting | rollout | q_estimation | online | stopping | done
    env_steps: int = 0  # training transitions stored (eval episodes excluded)
    episodes: int = 0  # finished training episodes
    train_successes: int = 0  # of those, the successful ones
    cut_episodes: int = 0  # episodes ended by an actor crash/quit rather than success/time limit
    eval_episodes: int = 0
    train_success_rate: float = 0.0  # over the last `window` training episodes
    eval_success_rate: float | None = None  # over the last eval window
    bc_share: float = 1.0  # fraction of executed actions that came from pi_BC, recent steps
    updates: int = 0  # jitted update calls (each = UTD critic steps + 1 actor step)
    updates_per_s: float = 0.0
    utd_measured: float = 0.0  # critic steps per stored env step in the online phase
    param_version: int = 0
    replay_size: int = 0
    actors_connected: int = 0
    duplicates_dropped: int = 0
    budget_env_steps: int = 0  # env steps the learner currently allows (sim pacing)
    eval_curve: list[EvalPoint] = dataclasses.field(default_factory=list)
    best_eval: EvalPoint | None = None  # the eval window checkpoint/best.ckpt was saved at
    # the last update's losses and values (critic_loss, q_mean, actor_q, bc_nll, ...): Q drifting far below the
    # returns or growing without bound is the first sign of trouble
    learning: dict[str, float | None] = dataclasses.field(default_factory=dict)
    q_estimation_steps_left: int = 0  # regression steps of the Q-Estimation fit still to run
    wall_s: float = 0.0
    updated_at: float = 0.0
    message: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(data: dict) -> "LearnerStatus":
        known = {f.name for f in dataclasses.fields(LearnerStatus)}
        data = {k: v for k, v in data.items() if k in known}
        data["eval_curve"] = [EvalPoint(**p) for p in data.get("eval_curve", [])]
        data["best_eval"] = EvalPoint(**data["best_eval"]) if data.get("best_eval") else None
        return LearnerStatus(**data)


@dataclasses.dataclass
class ActorStatus:
    """What an actor reports about itself (actors/<id>.json)."""

    actor_id: str = ""
    episode: int = 0
    step: int = 0
    env_steps: int = 0
    param_version: int = 0
    param_adopted_at: float = 0.0  # wall time the actor started acting on that parameter set (0: none yet)
    link: str = "connecting"  # connected | reconnecting | down
    spooled: int = 0  # transitions not yet acknowledged by the learner
    waiting_for_learner_s: float = 0.0  # time spent paced (sim) — the learner is the bottleneck
    steps_per_s: float = 0.0
    max_loop_gap_ms: float = 0.0
    max_loop_gap_at: str = ""
    recent_max_loop_gap_ms: float = 0.0  # the longest gap since the previous snapshot (about a second)
    updated_at: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(data: dict) -> "ActorStatus":
        known = {f.name for f in dataclasses.fields(ActorStatus)}
        return ActorStatus(**{k: v for k, v in data.items() if k in known})


def write_learner_status(run_dir: Path, status: LearnerStatus) -> None:
    status.updated_at = time.time()
    write_json(run_dir / STATUS_FILE, status.to_json(), durable=False)


def read_learner_status(run_dir: Path) -> LearnerStatus | None:
    data = read_json(run_dir / STATUS_FILE)
    return None if data is None else LearnerStatus.from_json(data)


def actor_status_path(run_dir: Path, actor_id: str) -> Path:
    return run_dir / "actors" / f"{actor_id}.json"


def write_actor_status(run_dir: Path, status: ActorStatus) -> None:
    status.updated_at = time.time()
    write_json(actor_status_path(run_dir, status.actor_id), status.to_json(), durable=False)


class StatusWriter:
    """Writes the newest status snapshot from a background thread, so file I/O never runs in a control loop.

        writer = StatusWriter(lambda s: write_actor_status(run_dir, s)); writer.update(status); ...; writer.close()
    """

    def __init__(self, write, interval_s: float = 1.0):
        self._write, self._interval_s = write, interval_s
        self._latest = None
        self._written = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="q2rl-status", daemon=True)
        self._thread.start()

    def update(self, status) -> None:
        self._latest = status  # one reference swap; the writer thread picks it up

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._flush()

    def _flush(self) -> None:
        latest = self._latest
        if latest is not None and latest is not self._written:
            try:
                self._write(latest)
            except OSError:
                pass  # status is best effort; the next snapshot tries again
            self._written = latest

    def close(self) -> None:
        """Stop the thread, write the last snapshot, and close `write` if it has a close (q2rl.metrics.ActorStatusLog
        holds an event file)."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._flush()
        close = getattr(self._write, "close", None)
        if callable(close):
            close()


def read_actor_statuses(run_dir: Path) -> list[ActorStatus]:
    out = []
    for path in sorted((run_dir / "actors").glob("*.json")):
        data = read_json(path)
        if data is not None:
            out.append(ActorStatus.from_json(data))
    return out


def _pct(x: float | None) -> str:
    return "  -" if x is None else f"{100 * x:3.0f}%"


def format_number(x: float | None) -> str:
    """A value for a status line: three significant digits, or - when unknown."""
    return "-" if x is None else f"{x:.3g}"


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def format_status_line(status: LearnerStatus, actors: list[ActorStatus], target_steps: int, now: float,
                       width: int | None = None) -> str:
    """One line: phase, episodes, steps, success rates, BC/RL share, updates/s, mean Q, each actor's link health.
    With `width` (a terminal's), a compact form when the full one does not fit, then cut to it."""
    links = []
    for a in actors:
        stale = now - a.updated_at > 5.0
        state = "stale" if stale else a.link
        spool = f"/{a.spooled}" if a.spooled else ""
        links.append(f"{a.actor_id}:{state}{spool}")
    train = status.train_success_rate if status.episodes else None  # no episode yet: "-", not 0 %
    phase = status.phase
    if phase == "q_estimation" and status.q_estimation_steps_left:
        phase += f" ({_k(status.q_estimation_steps_left)} steps left)"
    parts = [
        f"{phase:<12}",
        f"ep {status.episodes:4d}",
        f"steps {_k(status.env_steps)}/{_k(target_steps)}",
        f"train {_pct(train)}",
        f"eval {_pct(status.eval_success_rate)}",
        f"BC/RL {_pct(status.bc_share)}/{_pct(1 - status.bc_share)}",
        f"upd/s {status.updates_per_s:5.0f}",
        f"Q {format_number(status.learning.get('q_mean'))}",
        f"v{status.param_version}",
        "link " + (" ".join(links) if links else "-"),
    ]
    line = " | ".join(parts)
    if width is None or len(line) <= width:
        return line
    short_phase = {"q_estimation": "q_est", "rollout": "rollout", "online": "online"}.get(status.phase, status.phase)
    if status.phase == "q_estimation" and status.q_estimation_steps_left:
        short_phase += f" {_k(status.q_estimation_steps_left)} left"
    compact = [
        short_phase,
        f"ep {status.episodes}",
        f"{_k(status.env_steps)}/{_k(target_steps)}",
        f"tr {_pct(train).strip()} ev {_pct(status.eval_success_rate).strip()}",
        f"BC {_pct(status.bc_share).strip()}",
        f"v{status.param_version}",
        " ".join(links) if links else "-",
        f"{status.updates_per_s:.0f} upd/s",
        f"Q {format_number(status.learning.get('q_mean'))}",
    ]
    return " | ".join(compact)[:width]


def format_curve(curve: list[EvalPoint], width: int = 40) -> str:
    """The eval success curve as text rows: env steps, success, training successes so far, a bar."""
    rows = [f"{'env steps':>10}  {'eval success':>12}  (episodes)  {'train successes':>15}"]
    for p in curve:
        bar = "#" * int(round(p.success_rate * width))
        practised = "-" if p.train_episodes_total is None else f"{p.train_successes_total}/{p.train_episodes_total}"
        episodes = f"({p.episodes})"
        rows.append(f"{p.env_steps:>10d}  {100 * p.success_rate:11.0f}%  {episodes:>10}  {practised:>15}  {bar}")
    return "\n".join(rows)

