"""Learner throughput and actor decision latency on this machine (CPU JAX).

    .venv/bin/python bench/learner_speed.py [--seconds 10]

For the `cpu` and `paper` presets (state observations, pick_cube sizes: state 17, action 7) and a small image
config (one 64x64 camera), it times the jitted update call (`utd` critic minibatches + `actor_utd` actor steps,
1 in every config here) after compilation, and the jitted gate at batch 1 (BC + V_phi + pi_RL + Q_RL ensemble).
"updates" are update calls; critic minibatches per second = updates/s x utd. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
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
    u, b = cfg.utd, cfg.batch_size
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
    out = {"name": name, "utd": cfg.utd, "batch_size": cfg.batch_size, "ensemble": cfg.ensemble_size,
           "hidden": list(cfg.hidden_dims), "cameras": list(cameras), "compile_s": round(compile_s, 2),
           "updates_per_s": round(updates_per_s, 2), "critic_minibatches_per_s": round(updates_per_s * cfg.utd, 1),
           "gate_p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
           "gate_p99_ms": round(float(np.percentile(lat_ms, 99)), 3)}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="timing window per configuration")
    args = p.parse_args(argv)
    cpu = measure("cpu", {"preset": "cpu"}, args.seconds)
    paper = measure("paper", {"preset": "paper"}, args.seconds)
    image = measure("image_small", {"preset": "cpu", "batch_size": 32, "utd": 1, "ensemble_size": 2},
                    args.seconds, cameras=("wrist",), image_size=64)
    print("| config | utd | batch | ensemble | updates/s | critic minibatches/s | gate p50 ms | gate p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in (cpu, paper, image):
        print(f"| {r['name']} | {r['utd']} | {r['batch_size']} | {r['ensemble']} | {r['updates_per_s']} | "
              f"{r['critic_minibatches_per_s']} | {r['gate_p50_ms']} | {r['gate_p99_ms']} |")
    print(json.dumps({
        "updates_per_s_cpu_preset": cpu["updates_per_s"], "updates_per_s_paper_preset": paper["updates_per_s"],
        "updates_per_s_image_small": image["updates_per_s"], "actor_latency_p50_ms": cpu["gate_p50_ms"],
        "actor_latency_p99_ms": cpu["gate_p99_ms"], "actor_latency_p99_ms_paper": paper["gate_p99_ms"],
        "actor_latency_p99_ms_image": image["gate_p99_ms"], "load_avg_1m": round(__import__("os").getloadavg()[0], 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
