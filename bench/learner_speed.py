"""Learner throughput, the calibrated critic's cost, the Q-Estimation fit's time and actor decision latency on this
machine (CPU JAX; or a GPU when JAX has one).

    .venv/bin/python bench/learner_speed.py [--seconds 10] [--fit-seconds 20]

For the `cpu` and `paper` presets (state observations, pick_cube sizes: state 17, action 7) and a small image
config (one 64x64 camera), it times the jitted update call (`utd` critic minibatches + `actor_utd` actor steps,
1 in every config here) after compilation, and the jitted gate at batch 1 (BC + V_phi + pi_RL + Q_RL ensemble).
"updates" are update calls; critic transitions per second = updates/s x utd x the minibatch size, which
`agent.batch_accounting` sets (docs/design.md#batch-and-utd): the `paper` preset is timed both ways. The calibrated
critic's cost is the `paper` update's time with the calibrated term over its time without (and with the term on a
quarter of each minibatch, `calibrated_fraction: 0.25`). The Q-Estimation fit runs each regression for up to
--fit-seconds and extrapolates its steps to the preset's total (20 rollouts of 60 steps, as pick_cube); the
rollouts it follows take rollout_episodes x 60 steps / 10 Hz on a robot. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from q2rl.config import from_dict
from q2rl.core.agent_config import AgentConfig
from q2rl.core.agents import make_agent
from q2rl.core.normalization import ObsNormalizer
from q2rl.core.policies import BCPolicy, PolicyConfig, make_policy_net
from q2rl.core.replay import Batch

STATE_DIM, ACTION_DIM = 17, 7


def make_bc(cameras: tuple[str, ...], image_size: int) -> BCPolicy:
    net = make_policy_net(PolicyConfig(), ACTION_DIM, cameras)
    obs = example_obs(cameras, image_size, batch=1)
    return BCPolicy(net, net.init(jax.random.PRNGKey(0), obs), ObsNormalizer.identity(STATE_DIM))


def example_obs(cameras, image_size, batch=None, rng=None):
    rng = rng or np.random.default_rng(0)
    shape = () if batch is None else (batch,)
    obs = {"state": rng.normal(size=(*shape, STATE_DIM)).astype(np.float32)}
    if cameras:
        obs["images"] = {c: rng.integers(0, 255, (*shape, image_size, image_size, 3), dtype=np.uint8)
                         for c in cameras}
    return obs


def random_batches(cfg: AgentConfig, cameras, image_size, rng) -> Batch:
    u, b = cfg.utd, cfg.minibatch_size
    obs = lambda: jax.tree_util.tree_map(lambda x: x.reshape(u, b, *x.shape[1:]),
                                         example_obs(cameras, image_size, u * b, rng))
    return Batch(obs=obs(), actions=rng.uniform(-1, 1, (u, b, ACTION_DIM)).astype(np.float32),
                 rewards=rng.normal(size=(u, b)).astype(np.float32), discounts=np.full((u, b), 0.99, np.float32),
                 next_obs=obs(), a_bc=rng.uniform(-1, 1, (u, b, ACTION_DIM)).astype(np.float32),
                 is_demo=np.zeros((u, b), bool))


def measure(name: str, overrides: dict, seconds: float, cameras=(), image_size=64) -> dict:
    cfg = from_dict(AgentConfig, overrides)
    agent = make_agent(cfg, ACTION_DIM, cameras)
    bc = make_bc(cameras, image_size)
    params = agent.init_params(jax.random.PRNGKey(1), example_obs(cameras, image_size), bc)
    state = agent.init_state(params)
    rng = np.random.default_rng(0)
    batches = [random_batches(cfg, cameras, image_size, rng) for _ in range(4)]
    t = time.perf_counter()
    state, m = agent.update(state, batches[0], jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        state, m = agent.update(state, batches[n % 4], jax.random.PRNGKey(n))
        n += 1
    jax.block_until_ready(state)
    updates_per_s = n / (time.perf_counter() - t0)
    # actor decision latency at batch 1, host observation in, host action out
    gate_params = state.params
    obs_list = [example_obs(cameras, image_size, rng=np.random.default_rng(i)) for i in range(50)]
    np.asarray(agent.gate(gate_params, obs_list[0], jax.random.PRNGKey(0))[0])
    lat = []
    key = jax.random.PRNGKey(1)
    for i in range(400 if not cameras else 100):
        key, sub = jax.random.split(key)
        t = time.perf_counter()
        action, info = agent.gate(gate_params, obs_list[i % 50], sub)
        np.asarray(action), bool(info.use_rl)
        lat.append(time.perf_counter() - t)
    lat_ms = np.asarray(lat) * 1e3
    out = {"name": name, "utd": cfg.utd, "batch_size": cfg.batch_size, "minibatch": cfg.minibatch_size,
           "ensemble": cfg.ensemble_size, "hidden": list(cfg.hidden_dims), "cameras": list(cameras),
           "compile_s": round(compile_s, 2), "updates_per_s": round(updates_per_s, 2),
           "critic_minibatches_per_s": round(updates_per_s * cfg.utd, 1),
           "critic_transitions_per_s": round(updates_per_s * cfg.utd * cfg.minibatch_size),
           "gate_p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
           "gate_p99_ms": round(float(np.percentile(lat_ms, 99)), 3)}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def fit_seconds(name: str, overrides: dict, seconds: float, steps_per_episode: int = 60) -> dict:
    """The Q-Estimation fit of a preset on synthetic pick_cube-sized rollouts: each regression timed for up to
    `seconds` after its first (compiling) chunk, its total steps extrapolated at that rate."""
    from q2rl.core.replay import Episode

    cfg = from_dict(AgentConfig, overrides)
    agent = make_agent(cfg, ACTION_DIM, ())
    bc = make_bc((), 64)
    params = agent.init_params(jax.random.PRNGKey(1), example_obs((), 64), bc)
    rng = np.random.default_rng(0)
    n = steps_per_episode
    episodes = [Episode(obs={"state": rng.normal(size=(n + 1, STATE_DIM)).astype(np.float32)},
                        actions=rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32),
                        rewards=np.r_[np.zeros(n - 1), float(i % 2)].astype(np.float32),
                        terminated=np.r_[np.zeros(n - 1, bool), i % 2 == 1], truncated=np.r_[np.zeros(n - 1, bool), i % 2 == 0],
                        a_bc=np.zeros((n, ACTION_DIM), np.float32), a_rl=np.zeros((n, ACTION_DIM), np.float32),
                        q_bc=np.zeros(n), q_rl=np.zeros(n), source=np.zeros(n, np.int8), param_version=np.zeros(n, np.int64))
                for i in range(cfg.q_estimation.rollout_episodes)]
    fit = agent.q_estimation.start(params, episodes, jax.random.PRNGKey(0))
    total_s, rates = 0.0, {}
    while not fit.finished:
        stage, steps = fit.stage_name, fit.qe.stage_steps(fit.stage_name, True)
        t = time.perf_counter()
        fit.advance()  # the first chunk compiles
        jax.block_until_ready(fit.params)
        first = time.perf_counter() - t
        done, t0 = fit.chunk_steps, time.perf_counter()
        while fit.stage_name == stage and time.perf_counter() - t0 < seconds:
            fit.advance()
            done += fit.chunk_steps
        jax.block_until_ready(fit.params)
        rate = (done - fit.chunk_steps) / max(time.perf_counter() - t0, 1e-9) if done > fit.chunk_steps else 0.0
        rates[stage] = round(rate, 1)
        total_s += first + (steps - fit.chunk_steps) / rate if rate else first
        if fit.stage_name == stage:  # the rest of the stage is extrapolated, not run
            fit.end_stage()
    out = {"name": name, "fit_s": round(total_s, 1), "steps_per_s": rates,
           "rollout_s_at_10hz": cfg.q_estimation.rollout_episodes * steps_per_episode / 10.0}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="timing window per configuration")
    p.add_argument("--fit-seconds", type=float, default=20.0, help="timing window per Q-Estimation regression")
    args = p.parse_args(argv)
    cpu = measure("cpu", {"preset": "cpu"}, args.seconds)
    paper = measure("paper", {"preset": "paper"}, args.seconds)
    authors = measure("paper_authors_accounting", {"preset": "paper", "batch_accounting": "update"}, args.seconds)
    plain = measure("paper_plain_critic", {"preset": "paper", "calibrated_conservatism": 0.0}, args.seconds)
    quarter = measure("paper_calibrated_quarter", {"preset": "paper", "calibrated_fraction": 0.25}, args.seconds)
    image = measure("image_small", {"preset": "cpu", "batch_size": 32, "utd": 1, "ensemble_size": 2},
                    args.seconds, cameras=("wrist",), image_size=64)
    fit_cpu = fit_seconds("cpu", {"preset": "cpu"}, args.fit_seconds)
    fit_paper = fit_seconds("paper", {"preset": "paper"}, args.fit_seconds)
    print("| config | utd | batch | minibatch | ensemble | updates/s | critic transitions/s | gate p50 ms | gate p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in (cpu, paper, authors, plain, quarter, image):
        print(f"| {r['name']} | {r['utd']} | {r['batch_size']} | {r['minibatch']} | {r['ensemble']} | "
              f"{r['updates_per_s']} | {r['critic_transitions_per_s']} | {r['gate_p50_ms']} | {r['gate_p99_ms']} |")
    for f in (fit_cpu, fit_paper):
        print(f"Q-Estimation fit, {f['name']}: {f['fit_s']} s (steps/s {f['steps_per_s']}), after rollouts of "
              f"{f['rollout_s_at_10hz']} s at 10 Hz")
    print(json.dumps({
        "updates_per_s_cpu_preset": cpu["updates_per_s"], "updates_per_s_paper_preset": paper["updates_per_s"],
        "updates_per_s_paper_authors_accounting": authors["updates_per_s"],
        "critic_transitions_per_s_paper": paper["critic_transitions_per_s"],
        "critic_transitions_per_s_paper_authors_accounting": authors["critic_transitions_per_s"],
        "calibrated_cost_ratio": round(plain["updates_per_s"] / paper["updates_per_s"], 3),
        "calibrated_cost_ratio_quarter": round(plain["updates_per_s"] / quarter["updates_per_s"], 3),
        "qest_fit_s_cpu": fit_cpu["fit_s"], "qest_fit_s_paper": fit_paper["fit_s"],
        "qest_rollout_s_at_10hz": fit_cpu["rollout_s_at_10hz"],
        "updates_per_s_image_small": image["updates_per_s"], "actor_latency_p50_ms": cpu["gate_p50_ms"],
        "actor_latency_p99_ms": cpu["gate_p99_ms"], "actor_latency_p99_ms_paper": paper["gate_p99_ms"],
        "actor_latency_p99_ms_image": image["gate_p99_ms"], "load_avg_1m": round(__import__("os").getloadavg()[0], 2),
        "device": jax.devices()[0].platform,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
