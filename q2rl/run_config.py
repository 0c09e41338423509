"""The top-level run config: one YAML file (configs/sim/*.yaml, configs/real/*.yaml) with six sections.

    env:      which robot (backend sim | franka) and its settings (env.sim, env.franka)
    bc:       where pi_BC comes from (a checkpoint, or scripted demos + BC training for sim)
    agent:    the algorithm and its hyperparameters (q2rl.core.agent_config.AgentConfig)
    learner:  address, run directory, TLS/token, checkpoint and publish cadence
    actor:    pacing, spool, eval cadence, console
    session:  how many actors, how many env steps, when to stop (q2rl session only)

    cfg = load_config(RunConfig, "configs/sim/pick_cube.yaml", ["session.env_steps=2000"])

The handshake compares `compatibility_hash(cfg, bc_digest)`: what decides the meaning of a transition and of a
parameter set (env, agent, the BC policy's bytes). Actor-, learner- and session-only fields may differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import typing
from pathlib import Path
from typing import Literal

from q2rl.bc.config import BCConfig
from q2rl.config import ConfigError, canonical_hash, canonical_json, check_numbers, doc, to_dict
from q2rl.core.agent_config import AgentConfig
from q2rl.robot.real_config import FrankaEnvConfig
from q2rl.robot.sim.config import SimEnvConfig

if typing.TYPE_CHECKING:
    import argparse

TOKEN_ENV = "Q2RL_TOKEN"  # the shared secret, when neither learner.token nor learner.token_file gives it


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Which environment the actors run: the MuJoCo Franka or the real one, same contract."""

    backend: Literal["sim", "franka"] = doc("sim", "Environment backend: sim (MuJoCo) or franka (real robot).")
    sim: SimEnvConfig = doc(SimEnvConfig(), "Simulated Franka task (backend: sim).")
    franka: FrankaEnvConfig = doc(FrankaEnvConfig(), "Real Franka, cameras and safety limits (backend: franka).")

    def task_name(self) -> str:
        """A short name for run directories."""
        if self.backend == "sim":
            return self.sim.task
        return str(getattr(self.franka, "task", "franka"))

    def camera_shapes(self) -> dict[str, tuple[int, int, int]]:
        """Image shapes the observations carry (empty: state only)."""
        if self.backend == "sim":
            s = self.sim.image_size
            return {name: (s, s, 3) for name in self.sim.cameras}
        return {c.name: (c.height, c.width, 3) for c in getattr(self.franka, "cameras", ())}

    @property
    def control_hz(self) -> float:
        return float(self.sim.control_hz if self.backend == "sim" else getattr(self.franka, "control_hz", 10.0))


@dataclasses.dataclass(frozen=True)
class BCSourceConfig:
    """Where pi_BC comes from: a trained checkpoint, or (sim) scripted demos + BC training, cached."""

    checkpoint: str = doc("", "BC checkpoint (directory or policy.ckpt); empty = train one from scripted demos (sim).")
    demos: str = doc("", "Demonstrations (demos.hdf5) for the learner's demo buffer, which agent.algo rlpd and "
                         "agent.use_demos sample half of every batch from; when pi_BC is trained here (sim), the "
                         "demos it was trained on.")
    demo_episodes: int = doc(30, "Scripted demonstrations to record when training pi_BC here (sim).")
    demo_noise: float = doc(-1.0, "Scripted expert's imperfection (-1: the expert's default).")
    demo_seed: int = doc(0, "Seed of the scripted demonstrations.")
    cache_root: str = doc("runs/bc-cache", "Where trained BC policies are cached, keyed by task and these settings.")
    eval_episodes: int = doc(20, "Evaluate a freshly trained pi_BC over this many episodes (0: skip), for the summary.")
    train: BCConfig = doc(BCConfig(), "BC training when pi_BC is trained here (what `q2rl bc train` takes).")

    def validate(self) -> None:
        if not self.checkpoint and self.demo_episodes < 1:
            raise ConfigError("demo_episodes: must be >= 1 when no checkpoint is given")
        check_numbers(self, ">= 0", "demo_episodes", "demo_seed", "eval_episodes")
        if self.demo_noise != -1.0:
            check_numbers(self, ">= 0", "demo_noise")  # -1: the scripted expert's own default


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """The learner process: where it listens, where it writes, how often it publishes and checkpoints."""

    address: str = doc("127.0.0.1:0", "host:port to serve on (port 0 = any free port; see learner.addr). "
                       "Binds loopback unless told otherwise.")
    run_root: str = doc("runs", "Directory under which run directories are created.")
    run_name: str = doc("", "Run directory name under run_root (empty: <task>-<date>-<time>).")
    token: str = doc("", "Shared secret actors must present, inline (visible in process listings: prefer token_file "
                     "or the environment variable Q2RL_TOKEN). Never written to config.yaml. Empty everywhere: no "
                     "token check.", secret=True)
    token_file: str = doc("", "File whose content (stripped) is the shared secret, when learner.token is empty; "
                          "both empty: $Q2RL_TOKEN.")
    tls_cert: str = doc("", "PEM server certificate for TLS (empty: plaintext; fine on loopback).")
    tls_key: str = doc("", "PEM private key of tls_cert.")
    tls_ca: str = doc("", "PEM CA the actors check the learner's certificate with (empty: plaintext).")
    seed: int = doc(0, "Seed of the learner's RNG (initialisation, minibatch sampling).")
    replay_capacity: int = doc(200_000, "Transitions kept in the replay buffer.")
    learning_starts: int = doc(500, "Stored transitions before the first update: the algorithms without "
                               "Q-Estimation collect them with their initial policy; the Q2RL family's rollouts "
                               "usually exceed it.")
    publish_every_s: float = doc(0.5, "Publish parameters at most this often (seconds).")
    checkpoint_every_s: float = doc(120.0, "Checkpoint the learner state this often (seconds); always at exit.")
    keep_checkpoints: int = doc(3, "Learner states kept in checkpoint/: learner-<updates>.ckpt each, learner.ckpt "
                                "the newest; --resume falls back to the newest intact one.")
    status_every_s: float = doc(1.0, "Rewrite status.json this often (seconds).")
    updates_per_chunk: int = doc(8, "Update calls between two looks at the network inbox (throughput vs latency).")
    ahead_steps: int = doc(200, "Sim pacing: env steps the actors may run ahead of the updates paid for.")
    devices: int = doc(0, "Local devices the update is data-parallel over (0: all).")
    eval_window: int = doc(10, "Eval episodes per point of the eval success curve.")
    best_candidates: int = doc(3, "Best candidate checkpoints kept (checkpoint/best-*.ckpt): the states at the eval "
                               "windows with the highest Wilson lower bound of success; best.ckpt names the first, "
                               "or the one a sim session's final evaluation confirms on fresh episodes.")
    train_window: int = doc(20, "Training episodes the live success rate is computed over.")
    actor_lost_after_s: float = doc(30.0, "An actor disconnected this long has its open episode counted as cut.")

    def validate(self) -> None:
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"address: {self.address!r} is not host:port (e.g. 127.0.0.1:50051)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert: give both tls_cert and tls_key, or neither")
        if self.token and self.token_file:
            raise ConfigError("token_file: give the token one way, learner.token_file or learner.token, not both")
        check_numbers(self, "> 0", "publish_every_s", "checkpoint_every_s", "status_every_s", "actor_lost_after_s")
        check_numbers(self, ">= 0", "seed", "learning_starts", "devices")
        check_numbers(self, ">= 1", "replay_capacity", "keep_checkpoints", "updates_per_chunk", "ahead_steps",
                      "eval_window", "train_window", "best_candidates")

    def resolved_token(self) -> str:
        """The shared secret: learner.token, else the stripped content of learner.token_file, else $Q2RL_TOKEN.
        The one place actor and learner get it from (RunConfig resolves it into learner.token when built)."""
        if self.token:
            return self.token
        if not self.token_file:
            return os.environ.get(TOKEN_ENV, "")
        try:
            token = Path(self.token_file).expanduser().read_text().strip()
        except FileNotFoundError:
            raise ConfigError(f"learner.token_file: {self.token_file} is missing; write the shared token into it "
                              f"on this machine, or pass learner.token_file= (empty) and set {TOKEN_ENV}") from None
        except OSError as e:
            raise ConfigError(f"learner.token_file: cannot read {self.token_file} ({e.strerror})") from None
        if not token:
            raise ConfigError(f"learner.token_file: {self.token_file} is empty; write the shared token into it")
        return token


@dataclasses.dataclass(frozen=True)
class ActorConfig:
    """One actor process: pacing, the on-disk spool, evaluation cadence and the operator console."""

    actor_id: str = doc("actor-0", "Name of this actor (unique per learner; keys its sequence numbers).")
    seed: int = doc(1000, "Seed of the actor's environment resets and action sampling.")
    pace: Literal["auto", "learner", "control_rate"] = doc(
        "auto", "auto: sim runs as fast as the learner keeps up (UTD pacing), a real robot at its control rate.")
    spool_dir: str = doc("spool", "Where unacknowledged transitions are kept on disk until the learner has them.")
    status_dir: str = doc("", "Directory for actors/<id>.json live status (empty: none; the session sets it).")
    eval_every_episodes: int = doc(5, "Run one evaluation episode after this many training episodes (0: only on key e).")
    eval_deterministic: bool = doc(True, "Evaluation episodes act with the policies' modes instead of samples.")
    console: Literal["auto", "require", "none"] = doc(
        "auto", "Operator keyboard console: auto = when stdin is a terminal; require = refuse to start without one; none.")
    reset_key: Literal["robot", "always", "never"] = doc(
        "robot", "Wait for the operator's r (scene reset done) before each episode, when a console is open: robot = "
                 "on a real robot only; always = in sim too (rehearse the robot's day); never.")
    max_episodes: int = doc(0, "Stop after this many training episodes (0: until stopped).")
    flush_timeout_s: float = doc(10.0, "At shutdown, wait this long for the learner to acknowledge the spool.")

    def validate(self) -> None:
        if not self.actor_id or any(c in self.actor_id for c in "/\\ "):
            raise ConfigError(f"actor_id: {self.actor_id!r} must be a non-empty name without slashes or spaces")
        check_numbers(self, ">= 0", "seed", "eval_every_episodes", "max_episodes", "flush_timeout_s")


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """`q2rl session`: how many simulated actors, and when the session ends."""

    actors: int = doc(1, "Simulated actor processes feeding the one learner.")
    env_steps: int = doc(60_000, "End after this many training env steps (the learner's count; eval excluded).")
    max_minutes: float = doc(28.0, "End after this much wall time, whatever the step count (0: no limit).")
    stop_at_eval_success: float = doc(0.0, "End early once the last eval window reaches this success (0: never).")
    final_eval_episodes: int = doc(20, "Evaluation episodes of the final checkpoint after the session (0: none).")
    startup_timeout_s: float = doc(300.0, "How long the learner may take to start serving.")
    shutdown_timeout_s: float = doc(60.0, "How long each process may take to shut down cleanly before it is killed.")
    actor_restarts: int = doc(3, "Restarts of an actor that exits unexpectedly before the session gives up.")
    refresh_s: float = doc(0.5, "Progress display refresh period (seconds).")
    console: bool = doc(False, "Give the first actor the keyboard (the operator console, keys s f r p e q) when the "
                        "session runs in a terminal: rehearse in sim what the robot will need. The session's own "
                        "progress then prints a line every 10 s above the actor's status line.")
    compile_cache: str = doc("runs/jax-cache", "JAX compilation cache shared by the session's processes, so "
                             "restarts and later sessions skip recompiling (empty: off).")

    def validate(self) -> None:
        if self.actors < 1:
            raise ConfigError(f"actors: {self.actors} must be >= 1")
        if self.env_steps < 1:
            raise ConfigError(f"env_steps: {self.env_steps} must be >= 1")
        if not 0.0 <= self.stop_at_eval_success <= 1.0:
            raise ConfigError(f"stop_at_eval_success: {self.stop_at_eval_success} must be in [0, 1]")
        check_numbers(self, "> 0", "startup_timeout_s", "shutdown_timeout_s", "refresh_s")
        check_numbers(self, ">= 0", "max_minutes", "final_eval_episodes", "actor_restarts")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; every field can be overridden as section.field=value."""

    env: EnvConfig = doc(EnvConfig(), "The environment (sim or real Franka).")
    bc: BCSourceConfig = doc(BCSourceConfig(), "Where the BC policy comes from.")
    agent: AgentConfig = doc(AgentConfig(), "Algorithm and hyperparameters.")
    learner: LearnerConfig = doc(LearnerConfig(), "The learner process.")
    actor: ActorConfig = doc(ActorConfig(), "An actor process.")
    session: SessionConfig = doc(SessionConfig(), "A whole session (q2rl session).")

    def validate(self) -> None:
        """A rule across sections: a sim run without object poses must see the scene through cameras."""
        sim = self.env.sim
        if self.env.backend == "sim" and not sim.privileged_state and not sim.cameras:
            raise ConfigError("env.sim.cameras: empty while env.sim.privileged_state is false: the policies would see "
                              "only the robot's own joints, never the object; add cameras (env.sim.cameras=[wrist, "
                              "front]) or set env.sim.privileged_state=true")

    def __post_init__(self) -> None:
        # The token is resolved once, here, for every process that reads the run config (learner, actor, session);
        # to_dict leaves it out, so config.yaml holds where it comes from (token_file, $Q2RL_TOKEN), never it.
        if not self.learner.token:
            token = self.learner.resolved_token()
            object.__setattr__(self, "learner", dataclasses.replace(self.learner, token=token))


@dataclasses.dataclass(frozen=True)
class EnvOnlyConfig:
    """What a command that only drives the robot reads of a run config (`q2rl demos record`): its env section."""

    env: EnvConfig = doc(EnvConfig(), "The environment (sim or real Franka).")


def _compatibility_fields(cfg: RunConfig, bc_digest: str) -> dict:
    """What actor and learner must agree on — env, agent, and the BC policy itself (`bc_digest`, a hash of its
    checkpoint file; paths differ between machines, contents must not)."""
    return {"env": to_dict(cfg.env), "agent": to_dict(cfg.agent), "bc": bc_digest}


def compatibility_hash(cfg: RunConfig, bc_digest: str = "") -> str:
    """The handshake's config hash (defined in protos/q2rl.proto): `canonical_hash` of env, agent and `bc_digest`."""
    return canonical_hash(_compatibility_fields(cfg, bc_digest))


def compatibility_document(cfg: RunConfig, bc_digest: str = "") -> str:
    """The canonical JSON document `compatibility_hash` is the hash of; a config hash refusal carries the learner's,
    so the actor can name the fields that differ."""
    return canonical_json(_compatibility_fields(cfg, bc_digest)).decode()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (short), e.g. of the BC checkpoint for `compatibility_hash`."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig))


def config_backend(argv: typing.Sequence[str], default_config: str | None = None) -> str | None:
    """The env backend of the config a command line names (--config FILE, --resume RUN, env.backend=...), read
    without validating it, for --help; None when the command line names no readable config."""
    import yaml

    args = list(argv)
    path = default_config
    for i, arg in enumerate(args):
        for flag, suffix in (("--config", ""), ("--resume", "/config.yaml")):
            if arg == flag and i + 1 < len(args):
                path = args[i + 1] + suffix
            elif arg.startswith(flag + "="):
                path = arg.split("=", 1)[1] + suffix
    backend = next((a.split("=", 1)[1] for a in args if a.startswith("env.backend=")), None)
    if backend is None and path:
        try:
            backend = ((yaml.safe_load(Path(path).read_text()) or {}).get("env") or {}).get("backend", "sim")
        except (OSError, yaml.YAMLError, AttributeError):
            return None
    return backend if backend in ("sim", "franka") else None


def _section_summary(name: str, tp: type, help_text: str) -> str:
    from q2rl.config import describe

    subs = [field for field, sub in typing.get_type_hints(tp).items() if dataclasses.is_dataclass(sub)]
    inner = f"; sections {', '.join(f'{name}.{s}' for s in subs)}" if subs else ""
    return f"  {name:<9} {help_text} ({len(describe(tp))} fields{inner})"


def _shallow(tp: type, prefix: str) -> list[str]:
    """`describe`'s lines for the fields of `tp` itself; a nested section in one line (its fields: --help-all)."""
    from q2rl.config import describe

    hints, every = typing.get_type_hints(tp), describe(tp, prefix)
    lines = []
    for f in dataclasses.fields(tp):
        sub = hints[f.name]
        if dataclasses.is_dataclass(sub):
            lines.append(f"{prefix}{f.name}.* ({len(describe(sub))} fields): {f.metadata.get('help', '')}")
        else:
            lines += [line for line in every if line.startswith(f"{prefix}{f.name} ")]
    return lines


def help_lines(cls: type, sections: typing.Sequence[str], backend: str | None, expand: bool) -> list[str]:
    """The config part of a command's --help: each section it reads, one line each (`expand`: every field), and
    for env, the fields of the backend in use only (`backend`; None: unknown, its sections named)."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if f.name not in sections:
            continue
        tp, help_text = hints[f.name], f.metadata.get("help", "")
        if expand:
            prefix = f.name + "."
            while len(dataclasses.fields(tp)) == 1:  # a wrapper (bc: {train: ...}): show what it wraps
                only = dataclasses.fields(tp)[0]
                tp, prefix = typing.get_type_hints(tp)[only.name], f"{prefix}{only.name}."
            lines += ["  " + line for line in _shallow(tp, prefix)]
        elif f.name == "env" and backend is not None:
            lines.append(f"  env       {help_text} Backend {backend} (from the config), its fields:")
            lines += ["    " + line for line in _shallow(tp, "env.") if line.startswith("env.backend ")]
            lines += ["    " + line for line in _shallow(typing.get_type_hints(tp)[backend], f"env.{backend}.")]
        else:
            lines.append(_section_summary(f.name, tp, help_text))
    return lines


def _help_all_action(cls: type, sections: typing.Sequence[str]):
    import argparse

    class HelpAll(argparse.Action):
        def __init__(self, option_strings, dest, **kwargs):
            super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

        def __call__(self, parser, namespace, values, option_string=None):
            parser.print_usage()
            from q2rl.config import describe

            print("\nEvery config field (override any with section.field=value):")
            print("\n".join("  " + line for line in describe(cls) if line.split(".", 1)[0] in sections))
            parser.exit()

    return HelpAll


def section_parser(prog: str, description: str, cls: type, example: str, sections: typing.Sequence[str] = (),
                   argv: typing.Sequence[str] = (), default_config: str | None = None,
                   expand: bool = True, operand: tuple[str, str] | None = None) -> "argparse.ArgumentParser":
    """An argument parser for a command whose config is `cls` (its `sections`, default all): overrides as plain
    `section.field=value` arguments, as every command takes them; --help names the sections (`expand`: their
    fields; env: the backend in use), --help-all lists every field. `operand` (NAME, help): one more plain argument,
    in any place among the overrides (the one without "="), put in args.operand by `parse_command_line`."""
    import argparse

    sections = tuple(sections) or tuple(f.name for f in dataclasses.fields(cls))
    backend = config_backend(argv, default_config) if "env" in sections else None
    where = "Fields" if expand else "Sections"
    epilog = [f"Config overrides: plain arguments section.field=value (the value in YAML), e.g. {example}.",
              f"{where} this command reads (--help-all lists every field):",
              *help_lines(cls, sections, backend, expand)]
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog="\n".join(epilog),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--help-all", action=_help_all_action(cls, sections),
                        help="show every config field this command reads, and exit")
    what = f"config overrides (sections: {', '.join(sections)})"
    if operand is not None:
        parser.usage = f"{prog} [options] {operand[0]} [section.field=value ...]"
        what = f"{operand[0]}: {operand[1]}; then {what}"
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help=what)
    parser.set_defaults(operand_name=operand[0] if operand else None)
    return parser


def parse_command_line(parser: "argparse.ArgumentParser", argv: typing.Sequence[str]) -> "argparse.Namespace":
    """`parser.parse_intermixed_args`, and the parser's operand (if it has one) taken out of the overrides: argparse
    cannot split two lists of plain arguments, so the operand is the one without "="."""
    args = parser.parse_intermixed_args(argv)
    if getattr(args, "operand_name", None) is None:
        return args
    plain = [a for a in args.overrides if "=" not in a]
    if len(plain) != 1:
        parser.error(f"give one {args.operand_name}, got {' '.join(plain) or 'none'}; then any section.field=value "
                     "overrides")
    args.operand, args.overrides = plain[0], [a for a in args.overrides if "=" in a]
    return args


def command_parser(prog: str, description: str, argv: typing.Sequence[str] = (),
                   sections: typing.Sequence[str] = SECTIONS, default_config: str | None = None,
                   operand: tuple[str, str] | None = None) -> "argparse.ArgumentParser":
    """An argument parser for a command that reads a run config: `section_parser` over the RunConfig sections it
    reads, each named in --help in one line (env: the fields of the backend in use), every field by --help-all."""
    return section_parser(prog, description, RunConfig, "agent.utd=4", sections, argv, default_config, expand=False,
                          operand=operand)


def deprecated_set(prog: str, values: typing.Sequence[str], section: str,
                   old_prefixes: typing.Sequence[str] = ()) -> list[str]:
    """Overrides given the old way (`--set FIELD=VALUE`, kept for one release) in the one form every command takes,
    `section.FIELD=VALUE` (`old_prefixes`: what the old form let a key start with, e.g. "bc."); each prints a
    one-line notice with its new spelling."""
    out = []
    for text in values:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not key.startswith(section + "."):
            for prefix in old_prefixes:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    break
            key = f"{section}.{key}"
        new = f"{key}{sep}{value}"
        print(f"{prog}: --set is deprecated and goes in the next release; write {new} (a plain argument)",
              file=sys.stderr)
        out.append(new)
    return out
