"""What the Q2RL gate sees and decides after some online training: per-step records of evaluation episodes.

    .venv/bin/python bench/gate_probe.py --task peg_insert --seed 1 --online-steps 2000 \
        --agent-overrides '{"utd": 4, "ensemble_size": 10}' --out runs/bench/sample_efficiency

That probes the default critic (calibrated_conservatism 1); add `"calibrated_conservatism": 0` to probe the plain
critic, whose post-Q-Estimation dip on peg_insert this probe was written to explain.

1. The BC policy of `bench/sample_efficiency.py` (cached under --out; trained there if missing).
2. Q-Estimation and `--online-steps` steps of online RL: the session's actor and learner in this process
   (q2rl.local.LocalRun with the benchmark's run config), no evaluations.
3. `--episodes` evaluation episodes of the session's Actor (its `evaluate`, with modes, as the sample-efficiency
   curves evaluate), a recorder keeping its per-step records; each step is scored again here: both
   candidates are scored by min-head Q_RL (Q_RL(s, a_rl) and Q_RL(s, a_bc)), by the prior (Qhat_BC(s, a_bc) and
   Qhat_BC(s, a_rl)), by pi_BC's log-likelihood, and by the std over the critic's heads (whether the
   ensemble disagrees more at pi_RL's action, as a disagreement-weighted conservatism would need). Averages over
   the steps where the gate ran pi_RL and where it ran pi_BC say whether a hand-over follows an action the critic
   prefers, or a difference in state value between Q_RL and V_phi.

The last stdout line is JSON: {"task", "seed", "online_steps", "success", "rl_share", "rl_steps": {...},
"bc_steps": {...}, "action_gap_rl_steps": [per-dim mean |a_rl - a_bc|], "action_gap_bc_steps": [...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

SCORES = ("q_rl", "q_rl_at_a_bc", "qhat_bc", "qhat_bc_at_a_rl", "log_pi_bc_a_rl", "log_pi_bc_a_bc",
          "q_rl_head_std", "q_rl_head_std_at_a_bc")


def make_probe(agent):
    """Jitted (params, obs, a_bc, a_rl) -> the SCORES of the gate's two candidates at one observation."""
    import jax
    import jax.numpy as jnp

    from q2rl.core.q_estimation import qhat_bc
    from q2rl.core.sac import bc_dist, critic_values

    qcfg = agent.cfg.q_estimation

    def probe(params, obs, a_bc, a_rl):
        batched = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], obs)
        dist = bc_dist(params, batched)
        a_bc, a_rl = a_bc[None], a_rl[None]
        heads = lambda a: critic_values(agent.nets, params, batched, a)[:, 0]
        q = lambda a: jnp.min(heads(a))
        qhat = lambda a: qhat_bc(agent.nets, params, batched, a, qcfg, jax.random.PRNGKey(0))[0]
        return jnp.stack([q(a_rl), q(a_bc), qhat(a_bc), qhat(a_rl), dist.log_prob(a_rl)[0], dist.log_prob(a_bc)[0],
                          jnp.std(heads(a_rl)), jnp.std(heads(a_bc))])

    return jax.jit(probe)


class StepLog:
    """An Actor's recorder that keeps every step's transition (what the gate proposed, scored and ran)."""

    def __init__(self):
        self.steps: list = []

    def add(self, transition) -> None:
        self.steps.append(transition)

    def end_episode(self, report) -> None:
        pass


def probe_episodes(cfg, bc, agent, params, version: int, episodes: int, eval_seed: int) -> dict:
    """`episodes` evaluation episodes of the session's own Actor with `params` (the gate with modes, as the curves
    evaluate) and a summary of its per-step records, each scored again by the probe."""
    from q2rl.actor.actor import Actor
    from q2rl.robot.envs import make_env

    log, env = StepLog(), make_env(cfg.env)
    try:
        actor = Actor(cfg, env, bc, sink=None, source=None, recorder=log)
        actor.set_params(params, version)
        reports = actor.evaluate(episodes, first_seed=eval_seed, deterministic=True, report=False)
    finally:
        env.close()
    probe = make_probe(agent)
    used_rl = np.asarray([t.source == "rl" for t in log.steps])
    gaps = np.asarray([np.abs(t.a_rl - t.a_bc) for t in log.steps])
    scores = np.asarray([np.asarray(probe(params, t.obs, t.a_bc, t.a_rl)) for t in log.steps])
    mean = lambda rows: {k: round(float(v), 2) for k, v in zip(SCORES, rows.mean(axis=0))} if len(rows) else {}
    return {
        "success": float(np.mean([r.success for r in reports])), "rl_share": float(used_rl.mean()),
        "rl_steps": mean(scores[used_rl]), "bc_steps": mean(scores[~used_rl]),
        "action_gap_rl_steps": np.round(gaps[used_rl].mean(axis=0), 3).tolist() if used_rl.any() else [],
        "action_gap_bc_steps": np.round(gaps[~used_rl].mean(axis=0), 3).tolist() if (~used_rl).any() else [],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="peg_insert")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--online-steps", type=int, default=2000, help="online env steps before probing (0: right "
                                                                   "after Q-Estimation)")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--agent-overrides", default="{}", help='JSON of AgentConfig fields, e.g. {"utd": 4}')
    p.add_argument("--demos", type=int, default=10)
    p.add_argument("--demo-noise", type=float, default=0.2)
    p.add_argument("--bc-steps", type=int, default=2000)
    p.add_argument("--out", default="runs/bench/sample_efficiency", help="where the BC policy is cached")
    p.add_argument("--config", default="", help="start from this run config and its BC (e.g. configs/sim/pick_cube.yaml, "
                   "what `make run` runs), as bench/sample_efficiency.py --config does")
    args = p.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tempfile

    from sample_efficiency import EVAL_SEED, bench_run_config, prepare_bc, session_bc

    from q2rl.local import LocalRun, LocalSchedule

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bc, demos_file = (session_bc(args.config, args.task) if args.config else
                      prepare_bc(args.task, out, args.demos, args.demo_noise, args.bc_steps))
    cfg = bench_run_config(args.task, "q2rl", args.seed, eval_episodes=1, eval_deterministic=True,
                           preset=args.preset, agent_overrides=json.loads(args.agent_overrides), demos=str(demos_file),
                           base_config=args.config)
    with tempfile.TemporaryDirectory() as run_dir:
        run = LocalRun(cfg, bc, run_dir)
        run.run(LocalSchedule(online_steps=args.online_steps, eval_every=0))
        run.actor.refresh()  # the newest set the learner published (the run may end before the actor's next step)
    summary = probe_episodes(cfg, bc, run.learner.agent, run.actor.params, run.actor.version, args.episodes, EVAL_SEED)
    print(json.dumps({"task": args.task, "seed": args.seed, "online_steps": args.online_steps, **summary}))


if __name__ == "__main__":
    main()
