"""BC success per task with the default demo/BC settings: scripted demos -> BC training -> evaluation.

    python bench/bc_tasks.py [--tasks pick_cube,peg_insert,kitting] [--demos 20] [--policies gaussian,gmm,gmm_rnn]
                             [--eval-episodes 50] [--seeds 0] [--demo-noise 0.1]
                             [--bc '{"policy": {"hidden_dims": [256, 256]}, "steps": 8000}']

One JSON line per (task, policy, seed); the last line is one JSON object with all results. Success is measured
sampling pi_BC (`success_rate`) and with its mode (`mode_success_rate`, how the benchmarks evaluate), on the task
and on its shifted variant.
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
from q2rl.config import from_dict
from q2rl.demos.hdf5 import read_demos
from q2rl.demos.scripted import DEFAULT_EPISODES, ScriptedDemoSpec, default_noise, record_scripted_demos
from q2rl.robot.sim import make_sim_env
from q2rl.robot.sim.config import SimEnvConfig


def run_one(task: str, policy: str, demos: int, seed: int, eval_episodes: int, workdir: Path,
            demo_noise: float | None = None, bc_overrides: dict | None = None) -> dict:
    env_cfg = SimEnvConfig(task=task)
    spec = ScriptedDemoSpec(episodes=demos, noise=default_noise(task) if demo_noise is None else demo_noise, seed=seed)
    t0 = time.perf_counter()
    record = record_scripted_demos(env_cfg, spec, workdir / f"{task}-{seed}.hdf5", overwrite=True, progress=False)
    t1 = time.perf_counter()
    overrides = dict(bc_overrides or {})
    cfg = from_dict(BCConfig, {**overrides, "policy": {**overrides.get("policy", {}), "kind": policy}, "seed": seed})
    result = train_bc(read_demos(record.out), cfg, progress=False)
    t2 = time.perf_counter()
    evaluation = _evaluate(result.policy, env_cfg, eval_episodes, seed)
    modal = _evaluate(result.policy, env_cfg, eval_episodes, seed, "mode")
    shifted = shifted_modal = None
    if not task.endswith("_shifted"):  # the distribution-shift experiment: same policy, shifted starts
        shifted_cfg = dataclasses.replace(env_cfg, task=f"{task}_shifted")
        shifted = _evaluate(result.policy, shifted_cfg, eval_episodes, seed)
        shifted_modal = _evaluate(result.policy, shifted_cfg, eval_episodes, seed, "mode")
    t3 = time.perf_counter()
    return {
        "task": task, "policy": policy, "seed": seed, "demos": demos, "noise": spec.noise,
        "expert_success_rate": round(record.expert_success_rate, 3), "demo_mean_length": round(record.mean_length, 1),
        "bc_steps": cfg.steps, "initial_val_nll": _rounded(result.initial_val_nll),
        "final_val_nll": _rounded(result.final_val_nll), "final_train_nll": _rounded(result.final_train_nll),
        "record_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1), "eval_s": round(t3 - t2, 1),
        "eval_episodes": eval_episodes, "mean_length": round(float(sum(evaluation.lengths)) / eval_episodes, 1),
        "bc_overrides": overrides,
        "shifted_success_rate": shifted.success_rate if shifted else None,
        "shifted_mode_success_rate": shifted_modal.success_rate if shifted_modal else None,
        "mode_success_rate": modal.success_rate,
        "success_rate": evaluation.success_rate,
    }


def _rounded(nll: float | None) -> float | None:
    return None if nll is None else round(nll, 3)  # None: no held-out demos (val_fraction 0)


def _evaluate(policy, env_cfg: SimEnvConfig, episodes: int, seed: int, action_mode: str = "sample"):
    env = make_sim_env(env_cfg)
    try:
        return evaluate_policy(policy, env, episodes, seed=10_000 + 1000 * seed, action_mode=action_mode,
                               progress=False)
    finally:
        env.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="pick_cube,peg_insert,kitting")
    p.add_argument("--policies", default="gaussian")
    p.add_argument("--demos", type=int, default=DEFAULT_EPISODES)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--seeds", default="0")
    p.add_argument("--demo-noise", type=float, default=None, help="scripted expert's noise (default: the task's)")
    p.add_argument("--bc", default="{}", help="BCConfig fields as JSON (e.g. the network: "
                   '{"policy": {"hidden_dims": [256, 256]}, "steps": 8000}); --policies sets the kind')
    args = p.parse_args()
    bc_overrides = json.loads(args.bc)
    os.environ.setdefault("MUJOCO_GL", "egl")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            for policy in args.policies.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    row = run_one(task, policy, args.demos, seed, args.eval_episodes, Path(tmp), args.demo_noise,
                                  bc_overrides)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(json.dumps({"bench": "bc_tasks", "results": [
        {k: r[k] for k in ("task", "policy", "seed", "demos", "noise", "shifted_success_rate",
                           "shifted_mode_success_rate", "mode_success_rate", "success_rate")} for r in rows]}))


if __name__ == "__main__":
    main()
