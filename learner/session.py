"""`q2rl session`: a whole training session — the learner and N actors as separate processes on loopback.

    q2rl session --config configs/sim/pick_cube.yaml [--actors N] [--env-steps N] [--resume RUN] [a.b=c ...]

1. Prepare the BC policy if the config names none (sim: scripted demos + BC training, cached under runs/).
2. Start `q2rl learner`, wait until it serves (it writes runs/<run>/learner.addr), start the actors.
3. Show live progress from the status files until the env-step budget, the wall-time limit or the success
   target is reached, or Ctrl-C.
4. Shut down in order — actors first (their spools drain into the learner), then the learner (final
   checkpoint) — run a final evaluation of the last checkpoint and, if an eval window during training saved
   checkpoint/best.ckpt, of that one too (fresh episodes: the window that chose it is a best-of figure), and
   print the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from q2rl.config import ConfigError, load_config, to_dict
from q2rl.progress import (
    EvalPoint,
    LearnerStatus,
    format_curve,
    format_status_line,
    read_actor_statuses,
    read_learner_status,
)
from q2rl.run_dir import (
    ADDRESS_FILE,
    BEST_CHECKPOINT_FILE,
    BEST_EVAL_FILE,
    EVAL_FILES,
    FINAL_EVAL_FILE,
    STATUS_FILE,
    SUMMARY_FILE,
    default_run_name,
    RunDirError,
    open_run_dir,
    read_json,
    write_json,
)


def q2rl_command(*args: str) -> list[str]:
    """The argv that runs a `q2rl` sub-command with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "q2rl.cli", *args]


def _die_with_parent() -> None:
    """Child processes get SIGTERM when the session dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def child_environment(compile_cache: str, token: str = "") -> dict[str, str]:
    """The children's environment: quiet JAX, a shared persistent compilation cache, and the learner token
    (config.yaml never holds it; the learner and actors read Q2RL_TOKEN). Headless MuJoCo is the q2rl command's."""
    env = dict(os.environ)
    if token:
        env["Q2RL_TOKEN"] = token
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if compile_cache:
        env.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(compile_cache).resolve()))
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    return env


def spawn(argv: list[str], log_path: Path | None = None, env: dict | None = None,
          keyboard: bool = False) -> subprocess.Popen:
    """Start a child in its own process group, so Ctrl-C reaches only the session, which orders the shutdown.
    `keyboard`: the child reads the session's terminal (the operator console of an actor)."""
    out = open(log_path, "ab") if log_path is not None else None
    return subprocess.Popen(
        argv,
        env=env,
        stdout=out or None,
        stderr=subprocess.STDOUT if out else None,
        stdin=None if keyboard else subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def stop_process(proc: subprocess.Popen, timeout_s: float, name: str) -> int | None:
    """SIGINT (clean shutdown), then SIGKILL after `timeout_s`. Returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        print(f"session: {name} did not stop within {timeout_s:.0f} s; killing it", file=sys.stderr)
        proc.kill()
        return proc.wait()


class LearnerStartError(RuntimeError):
    """The session's learner died, or never served, before the actors could start."""


def check_image_encoder(cfg) -> None:
    """The frozen image encoder needs a pi_BC that reads the run's cameras: refused here, before any process starts
    (the learner and the actors check it again)."""
    from q2rl.core.agents import frozen_encoder_problem
    from q2rl.core.checkpoint import read_metadata
    from q2rl.run_dir import bc_source_file

    if not cfg.env.camera_shapes() or cfg.agent.image_encoder != "frozen_bc":
        return
    bc_cameras = read_metadata(bc_source_file(cfg)).get("camera_names", [])
    problem = frozen_encoder_problem(cfg.agent, tuple(cfg.env.camera_shapes()), bc_cameras)
    if problem:
        raise ConfigError(problem)


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def wait_for_address(run_dir: Path, learner: subprocess.Popen, timeout_s: float) -> str:
    """host:port the learner bound, once it serves; a learner that dies first is an error (with its last word)."""
    deadline = time.monotonic() + timeout_s
    path = run_dir / ADDRESS_FILE
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        if learner.poll() is not None:
            last = _last_line(run_dir / "learner.log")
            raise LearnerStartError(f"the learner exited with code {learner.returncode} before serving"
                                    + (f": {last}" if last else "") + f" (log: {run_dir}/learner.log)")
        time.sleep(0.1)
    raise LearnerStartError(f"the learner did not start serving within {timeout_s:.0f} s; see {run_dir}/learner.log")


class Display:
    """The live status line: rewritten in place on a terminal, one line every few seconds otherwise."""

    def __init__(self, stream=sys.stdout, plain_every_s: float = 10.0, shared: bool = False):
        """`shared`: an actor's console draws its status line on this terminal; the session prints a line every
        `plain_every_s` above it instead of a line of its own."""
        self.stream = stream
        self.tty = stream.isatty() and not shared
        self.shared = shared and stream.isatty()
        self.plain_every_s = plain_every_s
        self._last_plain = 0.0
        self._latest = self._printed = ""  # the newest line, and the last one written out (plain mode)

    def width(self) -> int | None:
        """Columns the line may take on the terminal (None: not a terminal)."""
        if not (self.tty or self.shared):
            return None
        try:
            return max(40, os.get_terminal_size(self.stream.fileno()).columns - 1)
        except OSError:
            return 119

    def show(self, line: str) -> None:
        self._latest = line
        if self.tty:
            self.stream.write("\r" + line[:self.width()] + "\x1b[K")
            self.stream.flush()
        elif time.monotonic() - self._last_plain >= self.plain_every_s:
            self._last_plain = time.monotonic()
            self._write_plain(line)

    def _write_plain(self, line: str) -> None:
        self._printed = line
        self.stream.write(("\r\x1b[2K" + line[:self.width()] if self.shared else line) + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
            return
        if self._latest and self._latest != self._printed:  # the last state, not the one up to 10 s older
            self._write_plain(self._latest)
        elif self.shared:  # the session's next line must not run on from the actor's status line
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


@dataclasses.dataclass
class SessionResult:
    run_dir: str
    reason: str
    wall_s: float
    env_steps: int
    episodes: int
    cut_episodes: int
    updates: int
    eval_curve: list[EvalPoint]
    final_eval_success: float | None
    final_eval_episodes: int
    train_successes: int = 0  # of `episodes`
    best_eval: EvalPoint | None = None  # the training-time eval window checkpoint/best.ckpt was saved at
    best_final_eval_success: float | None = None  # best.ckpt evaluated afresh after the session
    best_final_eval_episodes: int = 0
    best_choice: dict | None = None  # best_eval.json: how the final evaluation chose best.ckpt among the candidates


def prepare_run_dir(cfg, resume: str | None) -> tuple[Path, object]:
    """The run directory and the run's config, resolved once and written once to its config.yaml, which every
    process of the run reads: a new directory (pi_BC prepared and copied into RUN/bc/, the run named), or the one to
    resume, whose config.yaml takes the command line's overrides (the previous file is kept beside it). The one
    way a run directory is made, for `q2rl session` and the standalone `q2rl learner`. The config returned names
    the run's inputs (bc.checkpoint, bc.demos) by paths this process can open; config.yaml by paths relative to
    the run directory, so the directory stands alone."""
    from q2rl.config import dump_yaml
    from q2rl.learner.bc_source import with_bc_source
    from q2rl.run_dir import (CONFIG_FILE, bc_source_file, create_run_dir, keep_run_inputs, refuse_existing_run,
                              with_run_inputs)

    if resume:
        run_dir = open_run_dir(resume)
        # The last run's live files would read as "already serving there" and "budget already spent"; the
        # resumed learner rewrites both (its durable state is the checkpoint and the episode store).
        for stale in (ADDRESS_FILE, STATUS_FILE):
            (run_dir / stale).unlink(missing_ok=True)
        if to_dict(cfg) != to_dict(load_config(type(cfg), run_dir / CONFIG_FILE)):
            previous = run_dir / CONFIG_FILE
            previous.rename(run_dir / f"config-before-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
            dump_yaml(cfg, run_dir / CONFIG_FILE)
        return run_dir, with_run_inputs(cfg, run_dir)
    name = cfg.learner.run_name or default_run_name(cfg.env.task_name())
    refuse_existing_run(cfg.learner.run_root, name)  # before preparing pi_BC, which may take minutes
    cfg = with_bc_source(cfg)
    cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, run_name=name))
    bc_source_file(cfg)  # a missing pi_BC is refused before the run directory exists
    check_image_encoder(cfg)
    run_dir = create_run_dir(cfg.learner.run_root, name)
    cfg = keep_run_inputs(cfg, run_dir)
    dump_yaml(cfg, run_dir / CONFIG_FILE)
    return run_dir, with_run_inputs(cfg, run_dir)


class _Terminated(Exception):
    """The session got SIGTERM."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def stop_reason(status: LearnerStatus | None, cfg, started: float, now: float) -> str | None:
    """Why the session should end now, or None to keep going."""
    if status is not None:
        if status.phase == "done" or status.env_steps >= cfg.session.env_steps:
            return f"reached {cfg.session.env_steps} env steps"
        target = cfg.session.stop_at_eval_success
        if target > 0 and status.eval_success_rate is not None and status.eval_success_rate >= target:
            return f"eval success {status.eval_success_rate:.0%} >= target {target:.0%}"
    if cfg.session.max_minutes > 0 and now - started >= 60 * cfg.session.max_minutes:
        return f"wall-time limit of {cfg.session.max_minutes:g} min"
    return None


def run_session(cfg, resume: str | None) -> SessionResult:
    """Start, watch and stop one session; returns what happened."""
    started = time.monotonic()
    run_dir, cfg = prepare_run_dir(cfg, resume)
    print(f"session: run directory {run_dir}")
    from q2rl.learner.bc_source import bc_failure_warning

    warning = bc_failure_warning(cfg.bc.checkpoint)
    if warning:
        print(f"session: WARNING: {warning}", file=sys.stderr, flush=True)
    learner = spawn(q2rl_command("learner", "--resume", str(run_dir)), run_dir / "learner.log")
    actors: dict[str, subprocess.Popen] = {}
    restarts: dict[str, int] = {}
    keyboard = cfg.session.console and sys.stdin.isatty()
    if cfg.session.console and not keyboard:
        print("session: session.console: stdin is not a terminal, so no actor gets the keyboard", file=sys.stderr)
    terminal = _saved_terminal() if keyboard else None  # put back however the console actor ends
    display = Display(shared=keyboard)
    reason = "interrupted (Ctrl-C)"
    terminated = False
    # `kill`, a scheduler or `timeout` stop the session as Ctrl-C does (actors, then the learner's final checkpoint),
    # never leaving its children running on their own; the final evaluation is left out (it takes minutes).
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    # Ctrl-C stops the session even when it was started with SIGINT ignored (a background job of a script, nohup),
    # which Python would otherwise keep: the learner and actors install their own handlers the same way.
    previous_interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        try:
            address = wait_for_address(run_dir, learner, cfg.session.startup_timeout_s)
        except LearnerStartError as e:
            reason = str(e)
            raise
        print(f"session: learner serving on {address}; starting {cfg.session.actors} actor(s)"
              + ("; actor-0 has the keyboard (s f p e q, h for help)" if keyboard else ""))
        for i in range(cfg.session.actors):
            actors[f"actor-{i}"] = _start_actor(run_dir, address, i, cfg.actor.seed, keyboard=keyboard and i == 0)
        while True:
            now = time.monotonic()
            status = read_learner_status(run_dir)
            if learner.poll() is not None:
                reason = f"the learner exited with code {learner.returncode} (see {run_dir}/learner.log)"
                last = read_learner_status(run_dir)  # again: written as it exited, after `status` above
                if last is not None and last.message.startswith("stopped: "):
                    reason += f": {last.message.removeprefix('stopped: ')}"
                break
            for actor_id, proc in list(actors.items()):
                if proc.poll() is not None and keyboard and actor_id == "actor-0" and proc.returncode == 0:
                    reason = "the operator quit (key q)"
                    break
                if proc.poll() is not None:
                    restarts[actor_id] = restarts.get(actor_id, 0) + 1
                    if restarts[actor_id] > cfg.session.actor_restarts:
                        reason = f"{actor_id} keeps failing (code {proc.returncode}); see {run_dir}/{actor_id}.log"
                        break
                    display.finish()
                    print(f"session: {actor_id} exited with code {proc.returncode}; restarting it", file=sys.stderr)
                    index = int(actor_id.split("-")[-1])
                    actors[actor_id] = _start_actor(run_dir, address, index, cfg.actor.seed,
                                                    keyboard=keyboard and index == 0)
            if reason.startswith(tuple(actors)) or reason.startswith("the operator quit"):
                break
            if status is not None:
                display.show(format_status_line(status, read_actor_statuses(run_dir), cfg.session.env_steps, time.time(),
                                                display.width()))
            why = stop_reason(status, cfg, started, now)
            if why:
                reason = why
                break
            time.sleep(cfg.session.refresh_s)
    except KeyboardInterrupt:
        reason = "interrupted (Ctrl-C)"
    except _Terminated:
        reason, terminated = "terminated (SIGTERM)", True
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        display.finish()
        print(f"session: stopping ({reason}) — actors first, then the learner (final checkpoint)")
        _shutdown(actors, learner, cfg.session.shutdown_timeout_s)
        _restore_terminal(terminal)
        signal.signal(signal.SIGTERM, previous_handler)
        signal.signal(signal.SIGINT, previous_interrupt)
    final = best = None
    # every best candidate and the last checkpoint on the same fresh episodes (best.ckpt names the winner), or the
    # last checkpoint alone when no window was kept
    which = "candidates" if any((run_dir / BEST_CHECKPOINT_FILE).parent.glob("best-*.ckpt")) else "last"
    if terminated and cfg.session.final_eval_episodes > 0:
        print(f"session: no final evaluation after SIGTERM; run it with q2rl actor --config {run_dir}/config.yaml "
              f"--evaluate {run_dir} --checkpoint {which} --episodes {cfg.session.final_eval_episodes}")
    elif cfg.session.final_eval_episodes > 0:
        if which == "candidates":
            best = _final_eval(run_dir, cfg, "candidates")
            final = read_json(run_dir / FINAL_EVAL_FILE) if best is not None else None
        else:
            final = _final_eval(run_dir, cfg, "last")
    status = read_learner_status(run_dir) or LearnerStatus()
    return result_of(run_dir, status, reason, time.monotonic() - started, final, best)


def result_of(run_dir: Path, status: LearnerStatus, reason: str, wall_s: float, final: dict | None = None,
              best: dict | None = None) -> SessionResult:
    """What a run did, from the learner's status and the fresh evaluations (final_eval.json, best_eval.json
    records) when there are any: what summary.json and the summary text show."""
    return SessionResult(
        run_dir=str(run_dir),
        reason=reason,
        wall_s=wall_s,
        env_steps=status.env_steps,
        episodes=status.episodes,
        train_successes=status.train_successes,
        cut_episodes=status.cut_episodes,
        updates=status.updates,
        eval_curve=status.eval_curve,
        final_eval_success=None if final is None else final.get("success_rate"),
        final_eval_episodes=0 if final is None else int(final.get("episodes", 0)),
        best_eval=status.best_eval if best is None else (EvalPoint(**best["chosen_on"]) if best.get("chosen_on")
                                                         else None),
        best_choice=best,
        best_final_eval_success=None if best is None else best.get("success_rate"),
        best_final_eval_episodes=0 if best is None else int(best.get("episodes", 0)),
    )


def _saved_terminal():
    """The terminal's settings (stdin), to put back after the actor that had the keyboard."""
    import termios

    try:
        return termios.tcgetattr(sys.stdin.fileno())
    except (termios.error, OSError, ValueError):
        return None


def _restore_terminal(saved) -> None:
    if saved is None:
        return
    import termios

    with contextlib.suppress(termios.error, OSError, ValueError):
        termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)


def actor_argv(run_dir: Path, address: str, index: int, seed: int, keyboard: bool = False) -> list[str]:
    """The command line of the session's actor `index`: the run's config.yaml, with what differs per actor. Actor i
    seeds its resets and sampling with the run's actor.seed + 1000 i (actor 0: the configured seed itself)."""
    return q2rl_command(
        "actor",
        "--config", str(run_dir / "config.yaml"),
        "--learner", address,
        f"actor.actor_id=actor-{index}",
        f"actor.seed={seed + 1000 * index}",
        f"actor.status_dir={run_dir}",
        f"actor.spool_dir={run_dir / 'spool' / f'actor-{index}'}",
        "actor.console=require" if keyboard else "actor.console=none",
    )


def _start_actor(run_dir: Path, address: str, index: int, seed: int, keyboard: bool = False) -> subprocess.Popen:
    return spawn(actor_argv(run_dir, address, index, seed, keyboard), run_dir / f"actor-{index}.log",
                 keyboard=keyboard)


def _shutdown(actors: dict[str, subprocess.Popen], learner: subprocess.Popen, timeout_s: float) -> None:
    for proc in actors.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
    for actor_id, proc in actors.items():
        stop_process(proc, timeout_s, actor_id)
    stop_process(learner, timeout_s, "learner")


def _final_eval(run_dir: Path, cfg, checkpoint: str) -> dict | None:
    """Evaluate the last or best checkpoint in a fresh actor process (no learner), `session.final_eval_episodes`
    episodes; the record `q2rl actor --evaluate` wrote (None if it failed)."""
    n = cfg.session.final_eval_episodes
    what = ("every best candidate and the last checkpoint" if checkpoint == "candidates" else
            f"the {checkpoint} checkpoint")
    print(f"session: final evaluation of {what} over {n} fresh episodes")
    argv = q2rl_command("actor", "--config", str(run_dir / "config.yaml"), "--evaluate", str(run_dir),
                        "--checkpoint", checkpoint, "--episodes", str(n))
    with open(run_dir / "final_eval.log", "ab") as log:
        code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if code != 0:
        print(f"session: final evaluation of the {checkpoint} checkpoint failed (code {code}); see "
              f"{run_dir}/final_eval.log", file=sys.stderr)
        return None
    return read_json(run_dir / EVAL_FILES.get(checkpoint, BEST_EVAL_FILE))


def write_summary(result: SessionResult) -> Path:
    """RUN/summary.json: the result and the config as the run used it. The one writer, for the session at its end
    and for a learner started alone (at its end, Ctrl-C included)."""
    from q2rl.run_config import RunConfig

    summary = dataclasses.asdict(result)
    with contextlib.suppress(ConfigError, OSError):
        summary["config"] = to_dict(load_config(RunConfig, Path(result.run_dir) / "config.yaml"))
    path = Path(result.run_dir) / SUMMARY_FILE
    write_json(path, summary)
    return path


def format_summary(result: SessionResult, command: str = "session") -> str:
    """What the run did and where its files are; `command` (session or learner) is the one that resumes it."""
    lines = [
        "",
        "=" * 72,
        f"{command} finished: {result.reason}",
        f"  wall time        {result.wall_s / 60:.1f} min",
        f"  env steps        {result.env_steps} in {result.episodes} training episodes ({result.train_successes} "
        f"successful, {result.cut_episodes} cut)",
        f"  learner updates  {result.updates}",
    ]
    if result.final_eval_success is not None:
        lines.append(f"  final eval       {100 * result.final_eval_success:.0f}% success over {result.final_eval_episodes} episodes")
    choice = result.best_choice
    if choice is not None and choice.get("candidates"):
        lines.append(f"  best checkpoint  {Path(choice['chosen_file']).name}: {100 * choice['success_rate']:.0f}% "
                     f"over {choice['episodes']} fresh episodes, best of {len(choice['candidates'])}:")
        for c in choice["candidates"]:
            w, f = c.get("window"), c.get("fresh")
            window = (f"window {w['successes']}/{w['episodes']} at {w['env_steps']} (LCB {w['lcb']:.2f})" if w
                      else "the last checkpoint")
            fresh = f"fresh {f['successes']}/{f['episodes']}" if f else "not evaluated"
            lines.append(f"  {'*' if c['chosen'] else ' '} {Path(c['file']).name:<24} {window}, {fresh}")
    elif result.best_eval is not None:
        b = result.best_eval
        afresh = ("" if result.best_final_eval_success is None else
                  f"; {100 * result.best_final_eval_success:.0f}% over {result.best_final_eval_episodes} fresh episodes")
        lines.append(f"  best checkpoint  {100 * b.success_rate:.0f}% over {b.episodes} eval episodes at "
                     f"{b.env_steps} env steps{afresh}")
    if result.eval_curve:
        lines += ["", "eval success during training:", format_curve(result.eval_curve)]
    run = result.run_dir
    best = (Path(run) / "checkpoint" / "best.ckpt").is_file()
    # Lines that fit 80 columns (a run path aside): the operator's terminal may be that narrow.
    deploy_hint = ([f"deploy it: q2rl export {run}", f"           q2rl deploy {run}/policy-best.q2rl"] if best else
                   [f"deploy it: q2rl export {run} --checkpoint last",
                    f"           q2rl deploy {run}/policy-last.q2rl"
                    f"{'' if result.updates else '   (pi_BC alone: no online update yet)'}"])
    evals = "   ".join(f for f in (FINAL_EVAL_FILE, BEST_EVAL_FILE) if (Path(run) / f).is_file())
    lines += [
        "",
        f"run files in {run}/",
        "  config.yaml (resolved config)   checkpoint/ (learner state)   actors/ (actor status)",
        "  episodes/ (every transition + report)   *.log (process logs)",
        f"  status.json   {SUMMARY_FILE}{'   ' + evals if evals else ''}",
        f"continue it: q2rl {command} --resume {run}",
        *deploy_hint,
        "=" * 72,
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from q2rl.run_config import command_parser, parse_command_line

    parser = command_parser("q2rl session", "Run a whole Q2RL training session: the learner and N actors as processes on loopback.",
                            argv, default_config="configs/sim/pick_cube.yaml")
    parser.add_argument("--config", default="configs/sim/pick_cube.yaml", help="run config YAML")
    parser.add_argument("--actors", type=int, help="number of simulated actors (session.actors)")
    parser.add_argument("--env-steps", type=int, help="end after this many training env steps (session.env_steps)")
    parser.add_argument("--resume", metavar="RUN", help="continue the session in run directory RUN")
    parser.add_argument("--console", action="store_true",
                        help="give the first actor the keyboard, s/f/p/e/q as on the robot (session.console)")
    return parse_command_line(parser, argv)


def main(argv: list[str]) -> int:
    from q2rl.run_config import RunConfig

    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.actors is not None:
        overrides.append(f"session.actors={args.actors}")
    if args.env_steps is not None:
        overrides.append(f"session.env_steps={args.env_steps}")
    if args.console:
        overrides.append("session.console=true")
    config_path = str(Path(args.resume) / "config.yaml") if args.resume else args.config
    cfg = load_config(RunConfig, config_path, overrides)  # resolved here, written once by prepare_run_dir
    if cfg.env.backend != "sim":
        raise ConfigError("env.backend: a session runs simulated actors; for a real robot start `q2rl learner` and `q2rl actor`")
    os.environ.update(child_environment(cfg.session.compile_cache, cfg.learner.token))  # inherited by every child
    try:
        result = run_session(cfg, args.resume)
    except RunDirError as e:
        print(f"q2rl session: {e}", file=sys.stderr)
        return 2
    except LearnerStartError as e:
        print(f"q2rl session: {e}", file=sys.stderr)
        return 1
    write_summary(result)
    print(format_summary(result))
    failed = result.reason.startswith(("the learner exited", "actor-"))
    return 1 if failed else 0
