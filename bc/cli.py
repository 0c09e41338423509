"""`q2rl bc train` and `q2rl bc eval`.

    q2rl bc train --demos demos.hdf5 --policy gaussian --out runs/bc/pick [--steps N --seed S] [bc.train.x=y ...]
    q2rl bc eval --policy runs/bc/pick --task pick_cube --episodes 50 [--seed S --action sample|mode]

`bc eval` prints one JSON line ending with "success_rate": x.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import get_args, get_type_hints

from q2rl.bc.config import ActionMode, BCConfig
from q2rl.core.policies import PolicyConfig
from q2rl.config import ConfigError, build_config, doc, read_yaml

DEFAULT_EVAL_SEED = 10_000  # far from the scripted demos' seeds, so evaluation starts are unseen


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


@dataclasses.dataclass(frozen=True)
class _BCSection:
    train: BCConfig = doc(BCConfig(), "BC training (what `q2rl session` trains pi_BC with).")


@dataclasses.dataclass(frozen=True)
class BCTrainCommandConfig:
    """What `q2rl bc train` reads: a run config's bc.train section, so an override is spelled as for a session
    (bc.train.policy.kind=gmm) and can be copied between the two."""

    bc: _BCSection = doc(_BCSection(), "Where pi_BC comes from; bc train reads its train section.")


SECTION = "bc.train"


def load_bc_config(path: str | None, overrides: typing.Sequence[str]) -> BCConfig:
    """BCConfig from a YAML file (a run config's `bc.train:` section, or a bare BC config) plus bc.train.FIELD=VALUE
    overrides."""
    data = read_yaml(path) if path else {}
    if "bc" in data:  # a whole run config: its bc.train section (or a bare bc: section)
        data = data["bc"] or {}
        if isinstance(data.get("train"), dict):
            data = data["train"]
    return build_config(BCTrainCommandConfig, {"bc": {"train": data}}, overrides, path).bc.train


def _train_parser() -> argparse.ArgumentParser:
    from q2rl.run_config import section_parser

    p = section_parser("q2rl bc train", "Train a BC policy on HDF5 demonstrations.", BCTrainCommandConfig,
                       example="bc.train.policy.kind=gmm")
    p.add_argument("--demos", required=True, help="HDF5 demonstration file (robomimic layout).")
    p.add_argument("--out", required=True, help="Output run directory, e.g. runs/bc/pick_gaussian.")
    p.add_argument("--policy", choices=get_args(get_type_hints(PolicyConfig)["kind"]),
                   help="Policy head (bc.train.policy.kind); gmm_rnn is the recurrent GMM.")
    p.add_argument("--steps", type=int, help="Gradient steps (bc.train.steps).")
    p.add_argument("--seed", type=int, help="Seed (bc.train.seed).")
    p.add_argument("--batch-size", type=int, help="Minibatch size (bc.train.batch_size).")
    p.add_argument("--lr", type=float, help="Adam learning rate (bc.train.learning_rate).")
    p.add_argument("--cameras", type=_csv, help="Comma-separated cameras to train on, e.g. wrist,front.")
    p.add_argument("--max-demos", type=int, help="Use only the first N demos (bc.train.max_demos).")
    p.add_argument("--state-keys", type=_csv, help="Real robomimic files: low-dim obs keys concatenated into state.")
    p.add_argument("--config", help="YAML run config (its bc.train: section) or a bare BC config.")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="Deprecated (goes in the next release): write bc.train.FIELD=VALUE as a plain argument.")
    p.add_argument("--force", action="store_true", help="Write into an existing, non-empty output directory.")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")
    return p


def train_main(argv: list[str]) -> int:
    from q2rl.run_config import deprecated_set, parse_command_line

    args = parse_command_line(_train_parser(), argv)
    shortcuts = {"policy.kind": args.policy, "steps": args.steps, "seed": args.seed, "batch_size": args.batch_size,
                 "learning_rate": args.lr, "max_demos": args.max_demos,
                 "cameras": list(args.cameras) if args.cameras is not None else None}
    overrides = (deprecated_set("q2rl bc train", args.set, SECTION, old_prefixes=("bc.",)) + list(args.overrides)
                 + [f"{SECTION}.{k}={json.dumps(v)}" for k, v in shortcuts.items() if v is not None])
    cfg = load_bc_config(args.config, overrides)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"q2rl bc train: {out} exists and is not empty; choose another --out or pass --force", file=sys.stderr)
        return 2

    from q2rl.bc.train import train_bc
    from q2rl.demos.hdf5 import DemoFileError, read_demos

    try:
        dataset = read_demos(args.demos, cameras=cfg.cameras, state_keys=args.state_keys)
    except DemoFileError as e:
        print(f"q2rl bc train: {e}", file=sys.stderr)
        return 2
    result = train_bc(dataset, cfg, out_dir=out, progress=not args.no_progress)
    summary = {
        "out": str(out), "policy": cfg.policy.kind, "demos": args.demos, "train_demos": result.num_train_demos,
        "val_demos": result.num_val_demos, "train_samples": result.num_train_samples, "steps": result.steps, "best_step": result.best_step,
        "seconds": round(result.seconds, 2), "initial_val_nll": result.initial_val_nll,
        "final_train_nll": result.final_train_nll, "final_val_nll": result.final_val_nll,
    }
    print(json.dumps(summary))
    return 0


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="q2rl bc eval", description="Evaluate a BC policy in the simulator.")
    p.add_argument("--policy", required=True, help="BC run directory (runs/bc/NAME) or its policy.ckpt.")
    p.add_argument("--task", help="Sim task (default: the task of the policy's demos).")
    p.add_argument("--episodes", type=int, default=50, help="Number of evaluation episodes.")
    p.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED, help="Seed of the first episode's reset.")
    p.add_argument("--action", choices=get_args(ActionMode), help="Sample actions or take the mode "
                   "(default: the policy's bc.eval_action, normally sample).")
    p.add_argument("--max-episode-steps", type=int, help="Override the task's time limit.")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")
    return p


def eval_main(argv: list[str]) -> int:
    args = _eval_parser().parse_args(argv)
    if args.episodes < 1:
        print("q2rl bc eval: --episodes must be >= 1", file=sys.stderr)
        return 2
    from q2rl.bc.evaluate import eval_env_config, evaluate_policy
    from q2rl.core.checkpoint import CheckpointError, load_bc_policy_with_metadata
    from q2rl.robot.sim import make_sim_env

    try:
        policy, meta = load_bc_policy_with_metadata(args.policy)
    except CheckpointError as e:
        print(f"q2rl bc eval: {e}", file=sys.stderr)
        return 2
    env_cfg = eval_env_config(meta, task=args.task, max_episode_steps=args.max_episode_steps)
    action_mode = args.action or meta.get("bc_config", {}).get("eval_action", "sample")
    env = make_sim_env(env_cfg)
    try:
        state_dim = env.observation_space["state"].shape[0]
        if state_dim != meta["state_dim"]:
            raise ConfigError(f"task: {env_cfg.task} observes a {state_dim}-D state but the policy was trained on "
                              f"{meta['state_dim']}-D states; evaluate it on a task with the same objects")
        result = evaluate_policy(policy, env, args.episodes, args.seed, action_mode, progress=not args.no_progress)
    finally:
        env.close()
    summary = result.summary(task=env_cfg.task, policy=str(args.policy), seed=args.seed, action=action_mode)
    print(json.dumps(summary))
    _keep_result(args.policy, summary)
    return 0


def _keep_result(policy: str, summary: dict) -> None:
    """Keep an evaluation beside the policy: eval.json (the latest) and evaluations.jsonl (every one, with the time)."""
    import datetime

    from q2rl.core.checkpoint import bc_policy_file
    from q2rl.run_dir import append_jsonl, write_json

    record = dict(summary, time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    folder = bc_policy_file(policy).parent
    try:
        write_json(folder / "eval.json", record)
        append_jsonl(folder / "evaluations.jsonl", record)
    except OSError as e:
        print(f"q2rl bc eval: could not keep the result beside the policy ({e})", file=sys.stderr)
        return
    print(f"q2rl bc eval: result kept in {folder / 'eval.json'} (and appended to evaluations.jsonl)", file=sys.stderr)


def main(argv: list[str]) -> int:
    commands = {"train": train_main, "eval": eval_main}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: q2rl bc {train,eval} [options]   (q2rl bc <command> --help for details)",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return commands[argv[0]](argv[1:])
    except ConfigError as e:
        from q2rl.cli import error_line

        print(error_line(f"q2rl bc {argv[0]}", e), file=sys.stderr)
        return 2
