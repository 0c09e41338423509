"""How well V_phi, fitted on a Q-Estimation's rollouts, predicts pi_BC's return on rollouts it did not see.

    .venv/bin/python bench/value_generalisation.py [--config configs/sim/pick_cube.yaml] [--rollouts 60] \
        [--fit-on 20] [--splits 4] [--bag 6]

1. `--rollouts` episodes of sampled pi_BC on pick_cube, as a session takes its Q-Estimation rollouts (`make run`'s
   BC policy and actor: bench/learner_speed.py's pick_cube_rollouts).
2. `--splits` times: `--fit-on` of them at random are the fit's rollouts, the rest are held out. On the fit's
   rollouts: V_phi as the learner fits it (the value stage of QEstimation, its held-out stop included), with one
   head (the default) and bagged (`q_estimation.value_heads` = `--bag`: the mean of heads that each regress a
   bootstrap resample of the episodes).
3. Each estimate's RMSE against the held-out episodes' Monte-Carlo returns (the regression's own targets), in
   return units, over all their states and over their first states only (the reset scenes, where the gate's first
   decision of an episode is made), next to the constant that predicts the fit's mean return everywhere.

The last line is JSON: {"rollouts", "fit_on", "splits", "bc_success", "rmse_all": {"constant", "fit", "bagged"},
"rmse_first_state": {...}, "first_state_spread": {"fit", "bagged"}} (the spread: the std of the estimate over the
held-out first states).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learner_speed import ACTION_DIM, pick_cube_rollouts, start_agent_fit  # noqa: E402

from q2rl.config import from_dict  # noqa: E402
from q2rl.core.agent_config import AgentConfig  # noqa: E402
from q2rl.core.agents import make_agent  # noqa: E402
from q2rl.core.q_estimation import rollout_data  # noqa: E402
from q2rl.core.sac import value  # noqa: E402


def fit_value(agent, bc, episodes: list, key: jax.Array):
    """V_phi fitted on `episodes` as the learner's Q-Estimation fits it (the value stage alone)."""
    fit = start_agent_fit(agent, episodes, bc, *jax.random.split(key))
    while fit.stage_name == "value":
        fit.advance()
    return fit.params


def rmse(estimate: np.ndarray, returns: np.ndarray) -> float:
    return float(np.sqrt(np.mean((estimate - returns) ** 2)))


def measure(episodes: list, bc, fit_on: int, splits: int, bag: int, seed: int) -> dict:
    cfg = from_dict(AgentConfig, {"preset": "cpu"})
    agents = {"fit": make_agent(cfg, ACTION_DIM, ()),
              "bagged": make_agent(from_dict(AgentConfig, {"preset": "cpu", "q_estimation": {"value_heads": bag}}),
                                   ACTION_DIM, ())}
    value_of = {name: jax.jit(lambda params, obs, nets=agent.nets: value(nets, params, obs))
                for name, agent in agents.items()}
    rng = np.random.default_rng(seed)
    errors = {"all": {"constant": [], "fit": [], "bagged": []}, "first": {"constant": [], "fit": [], "bagged": []}}
    spread = {"fit": [], "bagged": []}
    for split in range(splits):
        order = rng.permutation(len(episodes))
        fitted, held = [episodes[i] for i in order[:fit_on]], [episodes[i] for i in order[fit_on:]]
        test = rollout_data(held, cfg)
        firsts = np.cumsum([0] + [len(ep) for ep in held[:-1]])
        mean_return = float(rollout_data(fitted, cfg).returns.mean())
        estimates = {name: np.asarray(value_of[name](fit_value(agent, bc, fitted,
                                                                jax.random.PRNGKey(1000 * seed + split)), test.obs))
                     for name, agent in agents.items()}
        for name, estimate in (("constant", np.full_like(test.returns, mean_return)), *estimates.items()):
            errors["all"][name].append(rmse(estimate, test.returns) ** 2)
            errors["first"][name].append(rmse(estimate[firsts], test.returns[firsts]) ** 2)
            if name != "constant":
                spread[name].append(float(np.std(estimate[firsts])))
        print(f"split {split}: RMSE all states constant {np.sqrt(errors['all']['constant'][-1]):.1f} fit "
              f"{np.sqrt(errors['all']['fit'][-1]):.1f} bagged {np.sqrt(errors['all']['bagged'][-1]):.1f}; first "
              f"states {np.sqrt(errors['first']['constant'][-1]):.1f} / {np.sqrt(errors['first']['fit'][-1]):.1f} / "
              f"{np.sqrt(errors['first']['bagged'][-1]):.1f}", flush=True)
    pooled = lambda xs: round(float(np.sqrt(np.mean(xs))), 1)  # noqa: E731 - RMSE over the pooled splits
    return {"rmse_all": {k: pooled(v) for k, v in errors["all"].items()},
            "rmse_first_state": {k: pooled(v) for k, v in errors["first"].items()},
            "first_state_spread": {k: round(float(np.mean(v)), 1) for k, v in spread.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/sim/pick_cube.yaml", help="the session config whose BC rolls out")
    p.add_argument("--rollouts", type=int, default=60)
    p.add_argument("--fit-on", type=int, default=20, help="rollouts per fit (a session's rollout_episodes)")
    p.add_argument("--splits", type=int, default=4)
    p.add_argument("--bag", type=int, default=6, help="heads of the bagged V_phi (q_estimation.value_heads)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if not 2 <= args.fit_on < args.rollouts:
        p.error("--fit-on must be at least 2 and fewer than --rollouts (the rest are held out)")
    os.environ.setdefault("MUJOCO_GL", "egl")
    episodes, bc = pick_cube_rollouts(args.config, args.seed, rollout_episodes=args.rollouts)
    success = float(np.mean([ep.success for ep in episodes]))
    print(f"{len(episodes)} rollouts, pi_BC succeeded in {100 * success:.0f}%", flush=True)
    figures = measure(episodes, bc, args.fit_on, args.splits, args.bag, args.seed)
    print(json.dumps({"rollouts": len(episodes), "fit_on": args.fit_on, "splits": args.splits,
                      "bc_success": round(success, 3), **figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
