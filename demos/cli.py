"""`q2rl demos scripted|record|info`.

    q2rl demos scripted --task pick_cube --episodes 50 --noise 0.3 --seed 0 --out demos.hdf5 [--cameras wrist,front]
    q2rl demos record ...        # teleoperation (q2rl.demos.teleop)
    q2rl demos info demos.hdf5   # one JSON line: demos, samples, success rate, keys
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from q2rl.config import ConfigError, build_config, doc
from q2rl.robot.sim.config import SimEnvConfig

KEEP_CHOICES = {"all": "all", "failures": "all", "successes-only": "successes-only"}


@dataclasses.dataclass(frozen=True)
class _SimSection:
    sim: SimEnvConfig = doc(SimEnvConfig(), "Simulated Franka task.")


@dataclasses.dataclass(frozen=True)
class ScriptedCommandConfig:
    """What `q2rl demos scripted` reads: a run config's env.sim section (overrides spelled env.sim.FIELD=VALUE, as
    for a session)."""

    env: _SimSection = doc(_SimSection(), "The simulated environment the expert acts in.")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _scripted_parser() -> argparse.ArgumentParser:
    from q2rl.demos.scripted import DEFAULT_EPISODES, DEFAULT_NOISE

    from q2rl.run_config import section_parser

    p = section_parser("q2rl demos scripted", "Record scripted-expert demonstrations.", ScriptedCommandConfig,
                       "env.sim.max_episode_steps=80")
    p.add_argument("--task", default="pick_cube", help="Sim task, e.g. pick_cube, peg_insert, kitting, *_shifted.")
    p.add_argument("--episodes", type=int, default=DEFAULT_EPISODES, help="Demos to write.")
    p.add_argument("--noise", type=float, help="Expert imperfection (0 = clean; default per task: "
                   + ", ".join(f"{k} {v}" for k, v in DEFAULT_NOISE.items()) + ").")
    p.add_argument("--seed", type=int, default=0, help="Seed of the first reset and of the expert's noise.")
    p.add_argument("--out", required=True, help="Output HDF5 file.")
    p.add_argument("--cameras", type=_csv, default=(), help="Comma-separated cameras to record (wrist,front).")
    p.add_argument("--image-size", type=int, help="Image height/width in pixels (env.sim.image_size).")
    p.add_argument("--keep", choices=sorted(KEEP_CHOICES), default="successes-only",
                   help="successes-only: write only successful episodes (retrying); all/failures: write every one.")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="Deprecated (goes in the next release): write env.sim.FIELD=VALUE as a plain argument.")
    p.add_argument("--force", action="store_true", help="Overwrite an existing output file.")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")
    return p


def scripted_main(argv: list[str]) -> int:
    from q2rl.run_config import deprecated_set, parse_command_line

    args = parse_command_line(_scripted_parser(), argv)
    from q2rl.demos.scripted import ScriptedDemoSpec, default_noise, record_scripted_demos

    env_fields: dict = {"task": args.task, "cameras": list(args.cameras)}
    if args.image_size is not None:
        env_fields["image_size"] = args.image_size
    overrides = deprecated_set("q2rl demos scripted", args.set, "env.sim", old_prefixes=("sim.",)) + args.overrides
    env_cfg = build_config(ScriptedCommandConfig, {"env": {"sim": env_fields}}, overrides).env.sim
    noise = default_noise(args.task) if args.noise is None else args.noise
    spec = ScriptedDemoSpec(episodes=args.episodes, noise=noise, seed=args.seed, keep=KEEP_CHOICES[args.keep])
    try:
        spec.validate()
        summary = record_scripted_demos(env_cfg, spec, args.out, overwrite=args.force,
                                        progress=not args.no_progress)
    except FileExistsError as e:
        print(f"q2rl demos scripted: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"q2rl demos scripted: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"out": summary.out, "task": summary.task, "demos": summary.written,
                      "attempts": summary.attempts, "expert_success_rate": round(summary.expert_success_rate, 3),
                      "mean_length": round(summary.mean_length, 1)}))
    return 0


def info_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="q2rl demos info", description="Summarise an HDF5 demonstration file.")
    p.add_argument("path")
    p.add_argument("--state-keys", type=_csv, help="Real robomimic files: low-dim keys concatenated into state.")
    args = p.parse_args(argv)
    from q2rl.demos.hdf5 import DemoFileError, read_demos

    try:
        ds = read_demos(args.path, state_keys=args.state_keys)
    except DemoFileError as e:
        print(f"q2rl demos info: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"path": ds.path, "env_name": ds.env_args.get("env_name"), "demos": len(ds),
                      "samples": ds.num_samples, "state_dim": ds.state_dim, "action_dim": ds.action_dim,
                      "mean_length": ds.num_samples / len(ds), "success_rate": ds.success_rate}))
    return 0


def record_main(argv: list[str]) -> int:
    from q2rl.demos import teleop  # written separately; imported only when teleoperation is asked for

    return int(teleop.main(argv) or 0)


def main(argv: list[str]) -> int:
    commands = {"scripted": scripted_main, "record": record_main, "info": info_main}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        ok = bool(argv) and argv[0] in ("-h", "--help")
        print("usage: q2rl demos {scripted,record,info} [options]   (q2rl demos <command> --help for details)",
              file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 2
    try:
        return commands[argv[0]](argv[1:])
    except ConfigError as e:
        from q2rl.cli import error_line

        print(error_line(f"q2rl demos {argv[0]}", e), file=sys.stderr)
        return 2
