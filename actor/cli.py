"""`q2rl actor`: one actor process — a robot (or simulator) feeding a learner over gRPC.

    q2rl actor --config runs/<run>/config.yaml --learner gpu-box:50051 [a.b=c ...]
    q2rl actor --config runs/<run>/config.yaml --evaluate runs/<run> --episodes 20   # final checkpoint, no learner
    q2rl actor --config runs/<run>/config.yaml --evaluate runs/<run> --checkpoint best   # the best eval window's

Start actors with the learner's run config (runs/<run>/config.yaml): the handshake refuses an actor whose env,
agent or BC policy differ. SIGINT/SIGTERM or key q: the running episode is cut and reported, the spool is
flushed to the learner (bounded by actor.flush_timeout_s), and the process exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path

from q2rl.config import ConfigError, load_config
from q2rl.signals import stop_on_signals

log = logging.getLogger("q2rl.actor")


def parse_args(argv: list[str]) -> argparse.Namespace:
    from q2rl.run_dir import CHECKPOINTS
    from q2rl.run_config import command_parser, parse_command_line

    parser = command_parser("q2rl actor", "Run an actor: environment loop with Q-Gating, streaming transitions to a learner.",
                            argv, sections=("env", "bc", "agent", "learner", "actor"))
    parser.add_argument("--config", required=True, help="run config YAML (use the learner's runs/<run>/config.yaml)")
    parser.add_argument("--learner", help="host:port of the learner")
    parser.add_argument("--evaluate", metavar="RUN", help="evaluate a checkpoint of run directory RUN instead")
    parser.add_argument("--checkpoint", choices=(*CHECKPOINTS, "candidates"), default="last",
                        help="with --evaluate: the last checkpoint, the chosen best one (checkpoint/best.ckpt), or "
                             "candidates: every kept best candidate and the last checkpoint on the same fresh "
                             "episodes, best.ckpt then naming the winner (what a sim session does at its end)")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes (with --evaluate)")
    args = parse_command_line(parser, argv)
    if bool(args.learner) == bool(args.evaluate):
        parser.error("give exactly one of --learner host:port or --evaluate RUN")
    if args.checkpoint != "last" and not args.evaluate:
        parser.error("--checkpoint chooses what --evaluate RUN evaluates; an actor serving a learner uses its live parameters")
    return args


def open_console(cfg, help_text: str | None = None):
    """The operator console the config asks for (auto: when stdin is a terminal); None when off. `help_text`: the
    keys that apply where it is used (default: a training actor's)."""
    if cfg.actor.console == "none":
        return None
    from q2rl.robot.console import HELP_TEXT, OperatorConsole

    require = cfg.actor.console == "require" or cfg.env.backend == "franka"
    return OperatorConsole.open(require_terminal=require, out=_terminal_out(), help_text=help_text or HELP_TEXT)


def _terminal_out():
    """Where the console draws: stderr, or the keyboard's own terminal when stderr goes to a log file (an actor a
    session started with the keyboard: its log stays in RUN/actor-0.log, the status line on the operator's screen)."""
    if sys.stderr.isatty() or not sys.stdin.isatty():
        return sys.stderr
    try:
        fd = os.open(os.ttyname(sys.stdin.fileno()), os.O_WRONLY | os.O_NOCTTY)
    except OSError:
        return sys.stderr
    return os.fdopen(fd, "w", buffering=1)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from q2rl.logs import configure_logging

    configure_logging("actor")
    from q2rl.run_config import RunConfig

    from q2rl.run_dir import with_run_inputs

    cfg = load_config(RunConfig, args.config, args.overrides)
    # RUN/config.yaml names the run's own pi_BC (RUN/bc/) relative to the run directory: from any working directory
    cfg = with_run_inputs(cfg, Path(args.evaluate) if args.evaluate else Path(args.config).parent)
    if not cfg.bc.checkpoint:
        raise ConfigError("bc.checkpoint: the actor needs the run's BC policy; start it with the learner's "
                          "runs/<run>/config.yaml, which names it")
    stop = stop_on_signals()
    if args.evaluate:
        return evaluate_run(cfg, Path(args.evaluate), args.episodes, stop, args.checkpoint)
    from q2rl.robot.cameras import CameraError
    from q2rl.robot.console import ConsoleUnavailable
    from q2rl.robot.franka import RobotError
    from q2rl.robot.gripper import GripperError

    try:
        return run_actor(cfg, args.learner, stop)
    except (RobotError, CameraError, GripperError, ConsoleUnavailable) as e:
        # The hardware's own message says what to check; what was practised is in the spool (flushed on the way
        # out, or sent by the next start), so starting the actor again continues the run.
        print(f"q2rl actor: stopped: {e}. Episodes so far are kept (spool {cfg.actor.spool_dir}); fix this and "
              "start the actor again to go on.", file=sys.stderr)
        return 1


def run_actor(cfg, address: str, stop: threading.Event) -> int:
    """Connect, run episodes until stopped, flush the spool."""
    from q2rl import wire
    from q2rl.actor.actor import Actor
    from q2rl.actor.link import ActorLink, LinkRefused
    from q2rl.core.checkpoint import bc_policy_file, load_bc_policy
    from q2rl.robot.envs import make_env
    from q2rl.run_config import compatibility_document, compatibility_hash, file_digest

    bc = load_bc_policy(cfg.bc.checkpoint)
    tls = wire.ClientTls(cfg.learner.tls_ca) if cfg.learner.tls_ca else None
    bc_digest = file_digest(bc_policy_file(cfg.bc.checkpoint))
    link = ActorLink(address, cfg.actor.actor_id, compatibility_hash(cfg, bc_digest),
                     token=cfg.learner.token, spool_dir=cfg.actor.spool_dir, tls=tls,
                     run_config_document=compatibility_document(cfg, bc_digest))
    # After a crash the spool's last episode may be unfinished: start a fresh id, the learner counts it cut.
    first_episode = link.next_episode_id + (1 if link.next_seq > 0 else 0)
    env = make_env(cfg.env)
    console = open_console(cfg)
    actor = Actor(cfg, env, bc, sink=link, source=link, console=console, status_dir=cfg.actor.status_dir or None,
                  first_seq=link.next_seq, first_episode_id=first_episode)
    code = 0
    try:
        if console is not None:
            console.__enter__()
        summary = actor.run(stop)
    except LinkRefused as e:
        summary = None
        print(f"q2rl actor: {e}", file=sys.stderr)
        code = 2
    finally:
        if console is not None:
            console.restore()  # the status line ends before the log goes on
        flushed = link.close(flush_timeout=cfg.actor.flush_timeout_s)
        if not flushed and code == 0:
            log.warning("the learner has not acknowledged everything; the spool in %s keeps it for the next start",
                        cfg.actor.spool_dir)
        env.close()
    if summary is not None:
        log.info("actor %s stopped: %s", cfg.actor.actor_id, summary.describe())
    return code


def evaluate_run(cfg, run_dir: Path, episodes: int, stop: threading.Event, checkpoint: str = "last") -> int:
    """Evaluate the run's last (or best) learner checkpoint in this process. Writes RUN/final_eval.json (last) or
    RUN/best_eval.json (best), the latest evaluation of that checkpoint, and appends the same record, with the
    time, to RUN/evaluations.jsonl (all of them). `checkpoint` candidates: every best candidate and the last
    checkpoint on the same fresh episodes, and best.ckpt made the winner (q2rl.actor.best)."""
    import datetime

    from q2rl.actor.acting import ActingPolicy, build_actor
    from q2rl.core.checkpoint import CheckpointError
    from q2rl.run_dir import EVAL_FILES, EVALUATIONS_LOG, append_jsonl, write_json
    from q2rl.robot.envs import make_env

    if checkpoint == "candidates":
        from q2rl.actor.best import evaluate_candidates

        return evaluate_candidates(cfg, run_dir, episodes, stop)
    try:
        policy = ActingPolicy.from_run(run_dir, checkpoint, cfg)
    except CheckpointError as e:
        print(f"q2rl actor: {e}", file=sys.stderr)
        return 2
    env = make_env(cfg.env)
    actor = build_actor(policy, cfg, env)  # no Learner: only what acting needs
    book_updates = policy.provenance["updates"]
    reports = actor.evaluate(episodes, stop)
    result = {"success_rate": sum(r.success for r in reports) / max(1, len(reports)), "episodes": len(reports),
              "policy": "gated" if policy.online else "bc",
              "actions": "modes" if cfg.actor.eval_deterministic else "sampled",  # the two can differ by 0.1
              "checkpoint": checkpoint, "param_version": policy.param_version, "updates": book_updates,
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if checkpoint == "best":  # what it was chosen on: the training-time window, a biased (best-of) figure
        result["chosen_on"] = policy.provenance["chosen_on"]
    append_jsonl(run_dir / EVALUATIONS_LOG, result)
    write_json(run_dir / EVAL_FILES[checkpoint], result)
    print(json.dumps(result))
    env.close()
    return 0
