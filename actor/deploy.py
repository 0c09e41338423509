"""`q2rl deploy`: run an exported policy (q2rl export) on the simulator or the Franka, with the operator console.

    q2rl deploy runs/<run>/policy-best.q2rl                                   # in the sim env it was trained in
    q2rl deploy peg.q2rl --config configs/real/peg_insertion.yaml --episodes 20 [--policy gated|rl|bc]
    q2rl deploy peg.q2rl --config ENV.yaml --record out/peg-deploy.hdf5 --max-steps 300 [section.field=value ...]

It is the training actor's loop (actor/actor.py), built from the file alone: no learner, no link, no run directory.
On the robot the operator presses r when the scene is reset, s or f to end an episode as a success or a failure,
p to pause and q to quit; in sim the keys work when a terminal is there (otherwise episodes end on the simulator's
own success signal). No episode time limit unless --max-steps asks for one. Every episode is recorded as robomimic
HDF5 (demos/hdf5.py's writer; --record, default runs/deploy/<policy>-<time>.hdf5), the result goes to a JSON
beside it, and the success rate is reported with its Wilson 95 % interval. A policy whose observation/action
contract does not match the environment (state size, cameras, image shapes) is refused, naming what differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import sys
import threading
from pathlib import Path

import numpy as np

from q2rl.signals import stop_on_signals

NO_LIMIT = 10**9  # "no time limit": more control steps than any episode runs


def parse_args(argv: list[str]) -> argparse.Namespace:
    from q2rl.run_config import command_parser, parse_command_line

    # e.g. actor.eval_deterministic=false acts with samples, as in training
    parser = command_parser("q2rl deploy", __doc__.split("\n\n")[0], argv, sections=("env", "actor"),
                            operand=("POLICY", "an exported policy file (q2rl export)"))
    parser.add_argument("--config", help="run config YAML whose env section to run in (default: the env the policy "
                                         "was trained in)")
    parser.add_argument("--policy", choices=("gated", "rl", "bc"), default="gated",
                        help="gated: the policy's own action rule, as trained (default; Q-Gating between pi_BC "
                             "and pi_RL, batch_online's best of N pi_BC samples); rl: pi_RL alone; bc: pi_BC alone "
                             "(batch_online: the pi_BC it retrained)")
    parser.add_argument("--episodes", type=int, default=0, help="episodes to run (0: until q or Ctrl-C)")
    parser.add_argument("--max-steps", type=int, default=0, help="episode time limit in control steps (0: none)")
    parser.add_argument("--record", metavar="OUT.hdf5", help="where to record the episodes (robomimic HDF5)")
    args = parse_command_line(parser, argv)
    args.policy_file = args.operand
    if args.episodes < 0 or args.max_steps < 0:
        parser.error("--episodes and --max-steps must be >= 0")
    return args


class DeployError(RuntimeError):
    """The policy cannot run here as asked; the message says why."""


class EpisodeRecorder:
    """The actor's recorder (every step, every episode end) into robomimic HDF5, one demo per episode, each
    flushed when the episode ends (an interrupted deployment keeps what it recorded)."""

    def __init__(self, writer, policy: str):
        self.writer, self.policy = writer, policy
        self.steps: list = []

    def add(self, t) -> None:
        self.steps.append(t)

    def end_episode(self, report) -> None:
        from q2rl.demos.hdf5 import Demo

        steps, self.steps = self.steps, []
        if not steps:
            return
        cameras = tuple(steps[0].obs.get("images", {}))
        demo = Demo(
            states=np.stack([t.obs["state"] for t in steps]).astype(np.float32),
            actions=np.stack([t.action for t in steps]).astype(np.float32),
            rewards=np.asarray([t.reward for t in steps], np.float32),
            dones=np.asarray([t.terminated for t in steps], bool),
            images={c: np.stack([t.obs["images"][c] for t in steps]) for c in cameras},
            next_states=np.stack([t.next_obs["state"] for t in steps]).astype(np.float32),
            next_images={c: np.stack([t.next_obs["images"][c] for t in steps]) for c in cameras},
            success=bool(report.success),
        )
        self.writer.add(demo, attrs={"episode_id": int(report.episode_id), "cut": bool(report.cut),
                                     "bc_share": float(report.bc_share), "policy": self.policy})


def deploy_config(policy, args):
    """The run config to act in: --config's (or the policy's own env section), the policy's agent, overrides, and
    the deployment's choices (time limit, console, actor id)."""
    from q2rl.config import build_config, read_yaml
    from q2rl.run_config import RunConfig

    data = read_yaml(args.config) if args.config else {"env": policy.env}
    cfg = build_config(RunConfig, data, args.overrides, args.config or None)
    limit = args.max_steps or NO_LIMIT
    env = cfg.env
    env = (dataclasses.replace(env, sim=dataclasses.replace(env.sim, max_episode_steps=limit)) if env.backend == "sim"
           else dataclasses.replace(env, franka=dataclasses.replace(env.franka, max_episode_steps=limit)))
    console = "require" if env.backend == "franka" else cfg.actor.console
    actor = dataclasses.replace(cfg.actor, actor_id="deploy", console=console)
    return dataclasses.replace(cfg, env=env, agent=policy.agent, actor=actor)


def env_contract(cfg, env=None) -> tuple[int, dict]:
    """(state size, cameras) the environment gives: from the config for the robot (before connecting to it), from
    the built environment in sim."""
    if cfg.env.backend == "franka":
        return int(cfg.env.franka.state_dim), cfg.env.camera_shapes()
    space = env.observation_space
    images = space.spaces.get("images") if hasattr(space, "spaces") else None
    cameras = {k: tuple(v.shape) for k, v in images.spaces.items()} if images is not None else {}
    return int(space["state"].shape[0]), cameras


def check_fits(policy, cfg, env=None) -> None:
    """DeployError naming each difference when the policy's contract does not fit the environment."""
    state_dim, cameras = env_contract(cfg, env)
    problems = policy.contract_differences(state_dim, cameras)
    if problems:
        raise DeployError("the policy does not fit this environment: " + "; ".join(problems)
                          + ". Deploy it with the env config it was trained with (the policy file's env section: "
                          "run without --config to use it), or export a policy trained for this one.")


def default_record_path(policy_file: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "deploy" / f"{Path(policy_file).stem}-{stamp}.hdf5"


def run_deploy(args, stop: threading.Event) -> dict:
    from q2rl.actor.acting import ActingPolicy, build_actor
    from q2rl.actor.actor import _Quit
    from q2rl.actor.cli import open_console
    from q2rl.robot.console import DEPLOY_HELP_TEXT
    from q2rl.demos.hdf5 import DemoWriter
    from q2rl.robot.envs import make_env
    from q2rl.stats import format_rate, wilson_interval

    policy = ActingPolicy.load(args.policy_file)
    cfg = deploy_config(policy, args)
    if args.policy == "rl" and not policy.online:
        raise DeployError("--policy rl: this checkpoint was saved before online RL, so pi_RL was never trained; "
                          "deploy it gated or bc (both run pi_BC), or export a later checkpoint")
    if args.policy == "rl" and policy.agent.rules.policy_objective == "imitation":
        raise DeployError(f"--policy rl: {policy.agent.algo} trains no pi_RL (it acts with the best of several "
                          "samples of the pi_BC it retrained); deploy it gated, or bc for that pi_BC's own samples")
    if cfg.env.backend == "franka":
        check_fits(policy, cfg)  # before connecting to the robot
    for line in policy.env_differences(json.loads(json.dumps(_plain(cfg.env)))):
        print(f"q2rl deploy: note: {line}", file=sys.stderr)
    out = Path(args.record) if args.record else default_record_path(args.policy_file)
    env = make_env(cfg.env)
    writer = None
    console = None
    try:
        check_fits(policy, cfg, env)
        console = open_console(cfg, help_text=DEPLOY_HELP_TEXT)
        interactive = console is not None and getattr(console, "interactive", False)
        writer = DemoWriter(out, env_args={"env_name": cfg.env.task_name(), "type": "q2rl_deploy",
                                           "env": _plain(cfg.env), "policy_file": str(args.policy_file),
                                           "policy": args.policy})
        recorder = EpisodeRecorder(writer, args.policy)
        # With an operator watching (the robot, or a terminal in sim) episodes run at the control rate; a sim
        # without one runs as fast as it can.
        actor = build_actor(policy, cfg, env, mode=args.policy, console=console, recorder=recorder,
                            paced_by_learner=not interactive and cfg.env.backend == "sim")
        what = args.policy if policy.online else "bc (saved before online RL)"
        intro = (f"deploying {args.policy_file} ({what}; {policy.summary()}) on {cfg.env.backend} "
                 f"{cfg.env.task_name()}; recording to {out}")
        reports = []
        if console is not None:
            console.__enter__()
        _say(console, intro)
        try:
            while not stop.is_set() and (not args.episodes or len(reports) < args.episodes):
                r = actor.run_episode(stop, evaluate=True)
                reports.append(r)
                k = sum(x.success for x in reports)
                _say(console, f"episode {r.episode_id}: {'success' if r.success else 'failure'} after {r.length} "
                              f"steps; so far {format_rate(k, len(reports))}")
        except _Quit:
            pass
    finally:
        if console is not None:
            console.restore()
        if writer is not None:
            writer.close()
        env.close()
    k, n = sum(r.success for r in reports), len(reports)
    lo, hi = wilson_interval(k, n)
    result = {
        "policy_file": str(args.policy_file), "policy": args.policy, "online": policy.online,
        "actions": "modes" if cfg.actor.eval_deterministic else "sampled",
        "env": {"backend": cfg.env.backend, "task": cfg.env.task_name()},
        "episodes": n, "successes": k, "success_rate": k / n if n else None, "ci95": [lo, hi],
        "cut_episodes": actor.summary.cut_episodes, "record": str(out),
        "per_episode": [{"success": bool(r.success), "length": r.length, "bc_share": r.bc_share} for r in reports],
        "provenance": policy.provenance,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    from q2rl.run_dir import write_json

    write_json(out.with_suffix(".json"), result)
    return result


def _plain(cfg) -> dict:
    from q2rl.config import to_dict

    return to_dict(cfg)


def _say(console, text: str) -> None:
    if console is not None:
        console.print(text)
    else:
        print(text, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s deploy %(levelname)s %(message)s",
                        stream=sys.stderr)
    from q2rl.core.checkpoint import CheckpointError
    from q2rl.robot.console import ConsoleUnavailable
    from q2rl.stats import format_rate

    stop = stop_on_signals()
    try:
        result = run_deploy(args, stop)
    except (DeployError, CheckpointError, ConsoleUnavailable, FileExistsError) as e:
        print(f"q2rl deploy: {e}", file=sys.stderr)
        return 2
    n, k = result["episodes"], result["successes"]
    line = format_rate(k, n) if n else "no finished episode"
    cut = f", {result['cut_episodes']} cut by q/Ctrl-C (not counted)" if result["cut_episodes"] else ""
    print(f"q2rl deploy: success {line}{cut}; episodes in {result['record']}, result in "
          f"{Path(result['record']).with_suffix('.json')}")
    return 0
