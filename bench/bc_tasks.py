"""BC success per task with the default demo/BC settings: scripted demos -> BC training -> evaluation.

    python bench/bc_tasks.py [--tasks pick_cube,peg_insert,kitting] [--demos 20] [--policies gaussian,gmm]
                             [--eval-episodes 50] [--seeds 0]

One JSON line per (task, policy, seed); the last line is one JSON object with all results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

from q2rl.bc.config import BCConfig
from q2rl.bc.evaluate import evaluate_policy
from q2rl.bc.train import train_bc
from q2rl.core.policies import PolicyConfig
from q2rl.demos.hdf5 import read_demos
from q2rl.demos.scripted import DEFAULT_EPISODES, ScriptedDemoSpec, default_noise, record_scripted_demos
from q2rl.robot.sim import make_sim_env
from q2rl.robot.sim.config import SimEnvConfig


def run_one(task: str, policy: str, demos: int, seed: int, eval_episodes: int, workdir: Path) -> dict:
    env_cfg = SimEnvConfig(task=task)
    spec = ScriptedDemoSpec(episodes=demos, noise=default_noise(task), seed=seed)
    t0 = time.perf_counter()
    record = record_scripted_demos(env_cfg, spec, workdir / f"{task}-{seed}.hdf5", overwrite=True, progress=False)
    t1 = time.perf_counter()
    cfg = BCConfig(policy=PolicyConfig(kind=policy), seed=seed)
    result = train_bc(read_demos(record.out), cfg, progress=False)
    t2 = time.perf_counter()
    evaluation = _evaluate(result.policy, env_cfg, eval_episodes, seed)
    shifted = None
    if not task.endswith("_shifted"):  # the distribution-shift experiment: same policy, shifted starts
        shifted = _evaluate(result.policy, dataclasses.replace(env_cfg, task=f"{task}_shifted"), eval_episodes, seed)
    t3 = time.perf_counter()
    return {
        "task": task, "policy": policy, "seed": seed, "demos": demos, "noise": spec.noise,
        "expert_success_rate": round(record.expert_success_rate, 3), "demo_mean_length": round(record.mean_length, 1),
        "bc_steps": cfg.steps, "initial_val_nll": round(result.initial_val_nll, 3),
        "final_val_nll": round(result.final_val_nll, 3), "final_train_nll": round(result.final_train_nll, 3),
        "record_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1), "eval_s": round(t3 - t2, 1),
        "eval_episodes": eval_episodes, "mean_length": round(float(sum(evaluation.lengths)) / eval_episodes, 1),
        "shifted_success_rate": shifted.success_rate if shifted else None,
        "success_rate": evaluation.success_rate,
    }


def _evaluate(policy, env_cfg: SimEnvConfig, episodes: int, seed: int):
    env = make_sim_env(env_cfg)
    try:
        return evaluate_policy(policy, env, episodes, seed=10_000 + 1000 * seed, progress=False)
    finally:
        env.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="pick_cube,peg_insert,kitting")
    p.add_argument("--policies", default="gaussian")
    p.add_argument("--demos", type=int, default=DEFAULT_EPISODES)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--seeds", default="0")
    args = p.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            for policy in args.policies.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    row = run_one(task, policy, args.demos, seed, args.eval_episodes, Path(tmp))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(json.dumps({"bench": "bc_tasks", "results": [
        {k: r[k] for k in ("task", "policy", "seed", "demos", "noise", "shifted_success_rate", "success_rate")} for r in rows]}))


if __name__ == "__main__":
    main()
