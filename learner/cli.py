"""`q2rl learner`: the learner process — gRPC service, replay, phases, publishing, checkpoints.

    q2rl learner --config configs/sim/pick_cube.yaml [a.b=c ...]     # a new run under learner.run_root
    q2rl learner --resume runs/pick_cube-20261122-010203 [a.b=c ...] # continue after a crash or a stop
    q2rl learner --resume RUN --fresh-state          # its learner checkpoints are lost: start that state over

A damaged or lost checkpoint or episode file ends `--resume` with a one-line error (exit 2) that says what to do;
a damaged learner.ckpt with an intact earlier state (learner.keep_checkpoints) resumes from that one, with a warning.

The process loop (host code only; the math is in the jitted update):
    drain the inbox (transitions/reports the service stored durably) -> replay
    learner.work()                       # rollouts done? Q-Estimation; online: the update calls owed
    publish parameters + pacing          # every learner.publish_every_s when something changed
    status.json, lost actors, checkpoint # every status_every_s / checkpoint_every_s
    metrics history                      # RUN/tensorboard/ (q2rl.metrics): the status, eval windows, episodes
SIGINT/SIGTERM: stop serving, ingest what is stored, final checkpoint, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import queue
import sys
import threading
import time
from pathlib import Path

from q2rl.config import load_config
from q2rl.logs import configure_logging, log_to_run_dir, room_on_terminal
from q2rl.recordio import atomic_write
from q2rl.run_dir import ADDRESS_FILE, CONFIG_FILE, open_run_dir
from q2rl.signals import stop_on_signals

log = logging.getLogger("q2rl.learner")
STATUS_LINE_EVERY_S = 10.0  # a status line on stderr and in RUN/learner.log this often


def parse_args(argv: list[str]) -> argparse.Namespace:
    from q2rl.run_config import command_parser, parse_command_line

    parser = command_parser("q2rl learner", "Run the Q2RL learner: gRPC service, replay, Q-Estimation, SAC updates, checkpoints.",
                            argv, sections=("env", "bc", "agent", "learner", "session"))  # session.env_steps: budget
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="run config YAML (starts a new run directory)")
    source.add_argument("--resume", metavar="RUN", help="continue the run in directory RUN with all its data")
    parser.add_argument("--fresh-state", action="store_true",
                        help="with --resume: start the learner state (parameters, optimiser, update count, phase) "
                             "over, from the episode files, when no intact learner checkpoint is left")
    args = parse_command_line(parser, argv)
    if args.fresh_state and not args.resume:
        parser.error("--fresh-state goes with --resume RUN")
    return args


def prepare_run(args: argparse.Namespace):
    """(cfg, run_dir, resumed): a new run directory with its resolved config, or the one to resume; made as a
    session makes it (learner.session.prepare_run_dir)."""
    from q2rl.learner.session import prepare_run_dir
    from q2rl.run_config import RunConfig

    config_path = open_run_dir(args.resume) / CONFIG_FILE if args.resume else args.config
    cfg = load_config(RunConfig, config_path, args.overrides)
    run_dir, cfg = prepare_run_dir(cfg, args.resume)
    return cfg, run_dir, bool(args.resume)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    configure_logging("learner")
    from q2rl.run_dir import RunDirError

    try:
        cfg, run_dir, resumed = prepare_run(args)
    except RunDirError as e:
        print(f"q2rl learner: {e}", file=sys.stderr)
        return 2
    log_to_run_dir(run_dir / "learner.log", "learner")
    stop = stop_on_signals()
    from q2rl.core.checkpoint import CheckpointError
    from q2rl.learner.learner import DivergedError
    from q2rl.recordio import RecordFileError

    try:
        run_learner(cfg, run_dir, resumed, stop, fresh_state=args.fresh_state)
    except DivergedError as e:
        print(f"q2rl learner: stopped: {e}", file=sys.stderr)
        return 3
    except (CheckpointError, RecordFileError) as e:  # a damaged or lost run file: the message says what to do
        print(f"q2rl learner: {e}", file=sys.stderr)
        return 2
    return 0


def require_learner_state(run_dir: Path, store) -> None:
    """Stored episodes but no learner checkpoint at all: the learned state was lost (the learner saves one before
    it serves). Say so, rather than start it over silently; --fresh-state does that on purpose."""
    from q2rl.core.checkpoint import CheckpointError, kept_checkpoints
    from q2rl.run_dir import CHECKPOINT_FILE

    path = run_dir / CHECKPOINT_FILE
    if store.num_transitions and not path.exists() and not kept_checkpoints(path):
        raise CheckpointError(
            f"{path} is missing, but {run_dir} stores {store.num_transitions} transitions: the learned state "
            "(parameters, optimiser, update count, phase) is lost. Resume from the episode files with a fresh learner "
            f"state (every stored transition is kept): q2rl learner --resume {run_dir} --fresh-state")


def run_learner(cfg, run_dir: Path, resumed: bool, stop: threading.Event, fresh_state: bool = False) -> None:
    """Serve and train until `stop` is set; always ends with a checkpoint, and writes one before it serves.
    `fresh_state` (with `resumed`): the learner state starts over, whatever checkpoints there are."""
    from q2rl import wire
    from q2rl.contract import TransitionContract
    from q2rl.core.checkpoint import bc_policy_file, load_bc_policy
    from q2rl.learner.episode_store import EpisodeStore
    from q2rl.learner.learner import DivergedError, Learner, select_devices
    from q2rl.learner.service import LearnerService, ParameterBoard, ServiceStatus, ServiceAuth, serve
    from q2rl.run_config import compatibility_document, compatibility_hash, file_digest

    bc = load_bc_policy(cfg.bc.checkpoint)
    state_dim = int(bc.normalizer.state_mean.shape[-1])
    inbox: queue.Queue = queue.Queue(maxsize=4096)  # bounded: a full inbox back-pressures the actors' streams
    board = ParameterBoard()
    driver = _Driver(cfg, board, run_dir)
    learner = driver.learner = Learner(cfg, run_dir, bc, state_dim, select_devices(cfg.learner.devices),
                                       on_phase_change=driver.on_phase_change)
    store = EpisodeStore(run_dir)
    # What every transition must look like; the service refuses a batch that breaks it before storing any of it.
    contract = TransitionContract(state_dim=state_dim, cameras=cfg.env.camera_shapes())
    if resumed:
        if fresh_state:
            log.warning("--fresh-state: the learner state starts over; replay is refilled from the episode files")
        else:
            require_learner_state(run_dir, store)
        learner.resume_from(store, contract, fresh_state=fresh_state)
        log.info("resumed %s: %d transitions, phase %s, %d updates", run_dir, learner.book.env_steps,
                 learner.book.phase, learner.book.updates)
    learner.save()  # before any episode is stored: a run with episodes has a learner checkpoint unless it was lost
    driver.start_metrics()  # after resume_from: the eval windows replayed from the store are logged already
    bc_digest = file_digest(bc_policy_file(cfg.bc.checkpoint))
    auth = ServiceAuth(config_hash=compatibility_hash(cfg, bc_digest), token=cfg.learner.token,
                       config_document=compatibility_document(cfg, bc_digest))

    def status_fn() -> ServiceStatus:
        return ServiceStatus(phase=learner.book.phase, replay_size=len(learner.replay),
                             updates_per_s=learner.updates_per_s())

    service = driver.service = LearnerService(
        store, on_transitions=lambda ts: inbox.put(("t", ts)), on_episode=lambda r: inbox.put(("r", r)),
        param_board=board, auth=auth, status_fn=status_fn, on_actor_lost=lambda a: inbox.put(("lost", a)),
        contract=contract)
    tls = wire.TlsFiles(cfg.learner.tls_cert, cfg.learner.tls_key) if cfg.learner.tls_cert else None
    server = serve(cfg.learner.address, service, max_actors=max(8, cfg.session.actors + 2), tls=tls)
    atomic_write(run_dir / ADDRESS_FILE, server.address)
    log.info("serving on %s (run %s)", server.address, run_dir)
    try:
        learner.publish(board, force=True)
        while not stop.is_set():
            driver.drain(inbox)
            # Before the next updates move the state on from the one the window closed on (a window that closed in
            # the waiting drain below is saved here too: nothing updates the state in between).
            learner.save_best()
            made = learner.work()
            if made == 0:
                driver.drain(inbox, wait_s=0.005)
            driver.tick()
    finally:
        log.info("stopping: final checkpoint")
        server.stop(grace_s=1.0)
        driver.drain(inbox)
        message = "stopped"
        try:
            learner.save_best()  # a window that closed in the last drain
            learner.save()
        except DivergedError as e:  # the previous, finite checkpoint stays
            message = f"stopped: {e}"
        driver.write_status(force=True, message=message)
        driver.write_summary(message)
        driver.close_metrics()
        store.close()


class _Driver:
    """The learner process's periodic chores around the learner: inbox, publishing, status, checkpoints, lost
    actors. `learner` and `service` are set once built (the learner takes the driver's phase hook)."""

    def __init__(self, cfg, board, run_dir: Path):
        self.cfg, self.board, self.run_dir = cfg, board, run_dir
        self.learner = self.service = None
        self.started = time.monotonic()
        self.last_publish = self.last_status = self.last_checkpoint = time.monotonic()
        self.last_line = 0.0  # when the last status line was logged
        self.lost_since: dict[str, float] = {}  # actors whose stream ended, and when
        self.metrics = None  # q2rl.metrics.LearnerMetrics once started

    def start_metrics(self) -> None:
        from q2rl.metrics import LearnerMetrics

        self.metrics = LearnerMetrics(self.run_dir, self.cfg.agent.utd,
                                      logged_eval_points=len(self.learner.book.eval_curve))

    def close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def drain(self, inbox: queue.Queue, wait_s: float = 0.0) -> int:
        n = 0
        try:
            kind, payload = inbox.get(timeout=wait_s) if wait_s > 0 else inbox.get_nowait()
            while True:
                if kind == "t":
                    for t in payload:
                        self.learner.ingest_transition(t)
                        if self.metrics is not None:
                            self.metrics.transition(t)
                elif kind == "r":
                    self.learner.ingest_report(payload)
                    if self.metrics is not None:
                        self.metrics.episode(payload, self.learner.book.env_steps)
                else:
                    self.lost_since.setdefault(payload, time.monotonic())
                n += 1
                kind, payload = inbox.get_nowait()
        except queue.Empty:
            return n

    def on_phase_change(self, phase: str) -> None:
        self.write_status(force=True)
        self.learner.publish(self.board, force=True)
        self.last_publish = time.monotonic()
        if phase in ("q_estimation", "online"):  # the rollouts to fit on, then the fit: a crash must not cost them
            self.learner.save()
            self.last_checkpoint = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last_publish >= self.cfg.learner.publish_every_s:
            self.learner.publish(self.board)
            self.last_publish = now
        if now - self.last_status >= self.cfg.learner.status_every_s:
            self.cut_lost_actors(now)
            self.write_status()
        if now - self.last_checkpoint >= self.cfg.learner.checkpoint_every_s:
            self.learner.save()
            self.last_checkpoint = time.monotonic()

    def cut_lost_actors(self, now: float) -> None:
        """An actor whose stream ended actor_lost_after_s ago and that has not come back has its open episode cut."""
        connected = self.service.connected_actors()
        for actor_id, since in list(self.lost_since.items()):
            if actor_id in connected:
                del self.lost_since[actor_id]
            elif now - since >= self.cfg.learner.actor_lost_after_s:
                del self.lost_since[actor_id]
                self.learner.actor_lost(actor_id)

    def write_status(self, force: bool = False, message: str = "") -> None:
        from q2rl.progress import write_learner_status

        status = self.learner.status()
        status.actors_connected = 0 if self.service is None else len(self.service.connected_actors())
        status.wall_s = time.monotonic() - self.started
        status.message = message
        write_learner_status(self.run_dir, status)
        if self.metrics is not None:
            self.metrics.status(status, self.learner.q_estimation_report)
        self.last_status = time.monotonic()
        self.status_line(status, force)

    def status_line(self, status, force: bool = False) -> None:
        """Every STATUS_LINE_EVERY_S (and at phase changes and the end) the session's status line, on stderr and in
        RUN/learner.log: a learner started alone shows as much as a session."""
        from q2rl.progress import ActorStatus, format_status_line

        now = time.monotonic()
        if not force and now - self.last_line < STATUS_LINE_EVERY_S:
            return
        self.last_line = now
        connected = [] if self.service is None else sorted(self.service.connected_actors())
        actors = [ActorStatus(actor_id=a, link="connected", updated_at=time.time()) for a in connected]
        log.info("%s", format_status_line(status, actors, self.cfg.session.env_steps, time.time(),
                                          room_on_terminal("learner")))

    def write_summary(self, reason: str) -> None:
        """RUN/summary.json with the eval curve (the session's writer), and the summary on stderr."""
        from q2rl.learner.session import format_summary, result_of, write_summary

        status = self.learner.status()
        result = result_of(self.run_dir, status, f"learner {reason}", time.monotonic() - self.started)
        try:
            write_summary(result)
        except OSError as e:
            log.warning("could not write %s/summary.json: %s", self.run_dir, e)
            return
        log.info("summary in %s/summary.json%s", self.run_dir, format_summary(result, "learner").rstrip("=\n"))
