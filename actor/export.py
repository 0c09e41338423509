"""`q2rl export`: one self-contained, pickle-free policy file from a run, for `q2rl deploy`.

    q2rl export runs/<run>                              # the chosen best checkpoint -> runs/<run>/policy-best.q2rl
    q2rl export runs/<run> --checkpoint last --out peg.q2rl

The file (actor/acting.py) holds pi_BC, pi_RL, V_phi and the critic heads the gate scores with, the normalisers,
the agent config the gate reads, the observation/action contract, the env section and provenance; no optimiser
state, and nothing of the run directory is needed to run it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="q2rl export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", metavar="RUN", help="the run directory (runs/<run>)")
    parser.add_argument("--checkpoint", default="best",
                        help="best: checkpoint/best.ckpt, the one the session's final evaluation chose (default); "
                             "last (or latest): the learner's last state; or a checkpoint file of the run, e.g. a "
                             "best candidate checkpoint/best-<updates>-<window>.ckpt (to compare them on the robot)")
    parser.add_argument("--out", help="the policy file to write (default RUN/policy-<checkpoint>.q2rl)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from q2rl.actor.acting import ActingPolicy
    from q2rl.core.checkpoint import CheckpointError
    from q2rl.run_dir import RunDirError, open_run_dir

    checkpoint = "last" if args.checkpoint == "latest" else args.checkpoint
    try:
        run_dir = open_run_dir(args.run)
        path = None
        if checkpoint not in ("best", "last"):  # a file of the run: RUN-relative or as given
            path = run_dir / checkpoint if (run_dir / checkpoint).is_file() else Path(checkpoint)
            checkpoint = "best" if path.name.startswith("best") else "last"
        stem = checkpoint if path is None else path.stem
        out = Path(args.out) if args.out else run_dir / f"policy-{stem}.q2rl"
        if out.exists() and not args.force:
            print(f"q2rl export: {out} exists; choose another --out or pass --force", file=sys.stderr)
            return 2
        policy = ActingPolicy.from_run(run_dir, checkpoint, path=path)
        policy.export(out)
    except (CheckpointError, RunDirError) as e:
        print(f"q2rl export: {e}", file=sys.stderr)
        return 2
    size = out.stat().st_size
    print(f"q2rl export: wrote {out} ({size / 1e6:.1f} MB): {policy.summary()}")
    print(f"run it: q2rl deploy {out} --config ENV.yaml [--policy gated|rl|bc] [--episodes N]")
    return 0
