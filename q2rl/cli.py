"""The `q2rl` command: one entry point, each command group implemented next to the code it drives.

Every group module exposes `main(argv: list[str]) -> int`; it is imported only when used, so
`q2rl --help` stays fast and a missing optional extra (franky, pyrealsense2) only matters where it is needed.
"""

from __future__ import annotations

import importlib
import os
import sys

from q2rl.config import ConfigError, OverrideError

COMMANDS = {
    "demos": ("q2rl.demos.cli", "record scripted or teleoperated demonstrations (HDF5)"),
    "bc": ("q2rl.bc.cli", "train and evaluate behaviour-cloning policies"),
    "learner": ("q2rl.learner.cli", "run the learner (gRPC server, replay, Q-Estimation, SAC)"),
    "actor": ("q2rl.actor.cli", "run an actor (robot or simulator) against a learner"),
    "session": ("q2rl.learner.session", "a whole training session: learner + actors as processes"),
    "export": ("q2rl.actor.export", "write a run's best (or last) policy as one self-contained file"),
    "deploy": ("q2rl.actor.deploy", "run an exported policy on sim or the Franka with the operator console"),
    "report": ("q2rl.report", "a run's figures, rollout video and page in RUN/report/ (read-only on the run)"),
    "episodes": ("q2rl.episodes", "export a run's stored robot episodes as robomimic HDF5 (to retrain BC)"),
}


def usage() -> str:
    lines = ["usage: q2rl <command> [options]   (q2rl <command> --help for details)", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def error_line(prog: str, error: ConfigError) -> str:
    """How a config error is shown: a command-line override's names its argument (the typo is there), any other
    says it is in the config."""
    return f"{prog}: {error}" if isinstance(error, OverrideError) else f"{prog}: config error: {error}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"q2rl: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    # MuJoCo picks its OpenGL backend once, when it is imported (by any command that touches the sim): headless EGL
    # unless the user chose one, or every camera render fails on a machine without a display.
    os.environ.setdefault("MUJOCO_GL", "egl")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except ConfigError as e:
        print(error_line(f"q2rl {name}", e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
