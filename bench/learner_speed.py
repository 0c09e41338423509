"""Learner throughput, the calibrated critic's cost, the Q-Estimation fit's time and actor decision latency on this
machine (CPU JAX; or a GPU when JAX has one).

    .venv/bin/python bench/learner_speed.py [--seconds 10] [--fit-seconds 20]
    .venv/bin/python bench/learner_speed.py --only fit         # the Q-Estimation fit alone (a few minutes)
    .venv/bin/python bench/learner_speed.py --only pixels      # the pixel presets alone

For the `cpu` and `paper` presets (state observations, pick_cube sizes: state 17, action 7), a small image config
(one 64x64 camera, learned encoder) and the pixel presets (two 84x84 cameras; each preset with the frozen pi_BC
encoder, whose minibatches hold features as replay stores them, and with the learned one), it times the jitted
update call (`utd` critic minibatches + `actor_utd` actor steps, 1 in every config here) after compilation (one
by one when a call takes over 0.5 s, so slow calls do not queue up), and the jitted gate at batch 1 (BC + V_phi +
pi_RL + Q_RL ensemble). "updates" are update calls; critic transitions per second = updates/s x utd x the minibatch size, which
`agent.batch_accounting` sets (docs/design.md#batch-and-utd): the `paper` preset is timed both ways. The calibrated
critic's cost is the `paper` update's time with the calibrated term (the default: on an eighth of each minibatch)
over its time without (and with the term on the whole minibatch, `calibrated_fraction: 1`).

The Q-Estimation fit (docs/design.md#fit-time) runs on real pick_cube rollouts: `make run`'s BC policy (--config;
scripted demos + BC, trained once and cached under runs/bc-cache) rolled out by the session's actor and stored by its
learner. Each preset's fit runs to convergence as the learner runs it (qest_fit_s_<preset>, with the steps each stage
ran), except those --extrapolate names (by default `paper` on a CPU): their stages are timed for --fit-seconds each
and extrapolated to the steps the first preset converged in (qest_fit_s_<preset>_extrapolated). The fixed-steps fit
(every configured step, as before the held-out stop) is extrapolated the same way. qest_rollout_s_at_10hz is the
robot time of the rollouts the fit follows: their steps at 10 Hz. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
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


def measure(name: str, overrides: dict, seconds: float, cameras=(), image_size=64, min_calls: int = 3) -> dict:
    """Update calls/s (at least `min_calls` timed) and the gate's latency at batch 1 of one agent config. With the
    frozen image encoder the minibatches hold pi_BC's features, as replay stores them; the gate gets images."""
    cfg = from_dict(AgentConfig, overrides)
    agent = make_agent(cfg, ACTION_DIM, cameras)
    bc = make_bc(cameras, image_size)
    params = agent.init_params(jax.random.PRNGKey(1), example_obs(cameras, image_size), bc)
    state = agent.init_state(params)
    rng = np.random.default_rng(0)
    batches = [random_batches(cfg, cameras, image_size, rng) for _ in range(4)]
    if agent.frame_view is not None:
        as_stored = lambda obs: jax.device_get(agent.frame_view(bc, obs))
        batches = [b._replace(obs=as_stored(b.obs), next_obs=as_stored(b.next_obs)) for b in batches]
    t = time.perf_counter()
    update = agent.update_donating  # what the learner runs
    state, m = update(state, batches[0], jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    state, m = update(state, batches[1], jax.random.PRNGKey(1))
    jax.block_until_ready(state)
    slow = time.perf_counter() - t > 0.5  # calls are dispatched asynchronously: a slow one must not queue up dozens
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < min_calls:
        state, m = update(state, batches[n % 4], jax.random.PRNGKey(n))
        n += 1
        if slow:
            jax.block_until_ready(state)
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
    out = {"name": name, "image_encoder": cfg.image_encoder if cameras else None, "utd": cfg.utd,
           "batch_size": cfg.batch_size, "minibatch": cfg.minibatch_size,
           "ensemble": cfg.ensemble_size, "hidden": list(cfg.hidden_dims), "cameras": list(cameras),
           "compile_s": round(compile_s, 2), "updates_per_s": round(updates_per_s, 2),
           "critic_minibatches_per_s": round(updates_per_s * cfg.utd, 1),
           "critic_transitions_per_s": round(updates_per_s * cfg.utd * cfg.minibatch_size),
           "gate_p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
           "gate_p99_ms": round(float(np.percentile(lat_ms, 99)), 3)}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def pick_cube_rollouts(config: str, seed: int = 0, rollout_episodes: int | None = None) -> tuple[list, BCPolicy]:
    """pi_BC's Q-Estimation rollouts on pick_cube as a session takes them: the BC policy of `config` (scripted demos
    + BC, trained once and cached: sample_efficiency.session_bc), the session's Actor and Learner in this process
    (q2rl.local.LocalRun), and the episodes exported from the learner's replay as its fit reads them. The learner's
    own fit is left empty (0 steps per stage): the fits are timed here, one per preset, on these same episodes."""
    import tempfile
    import threading
    from pathlib import Path

    os.environ.setdefault("MUJOCO_GL", "egl")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sample_efficiency import bench_run_config, session_bc

    from q2rl.local import LocalRun

    bc, demos = session_bc(config, "pick_cube")
    empty_fit = {"q_estimation": {"value_updates": 0, "actor_updates": 0, "critic_updates": 0}}
    if rollout_episodes is not None:  # more than the config's (bench/value_generalisation.py holds some out)
        empty_fit["q_estimation"]["rollout_episodes"] = rollout_episodes
    cfg = bench_run_config("pick_cube", "q2rl", seed, eval_episodes=1, eval_deterministic=False,
                           agent_overrides=empty_fit, demos=str(demos), base_config=config)
    with tempfile.TemporaryDirectory() as run_dir:
        run = LocalRun(cfg, bc, run_dir, log=lambda line: None)
        while run.learner.book.phase == "rollout":
            run.actor.run_episode(threading.Event())
        run.env.close()
        learner = run.learner
        return [learner.replay.export_episode(a, e) for a, e in learner.book.rollout_keys], bc


def start_fit(overrides: dict, episodes: list, bc: BCPolicy, seed: int = 0):
    """A preset's Q-Estimation fit on `episodes`, started as the learner starts it (fresh params with `bc`)."""
    agent = make_agent(from_dict(AgentConfig, overrides), ACTION_DIM, ())
    return start_agent_fit(agent, episodes, bc, jax.random.PRNGKey(seed + 1), jax.random.PRNGKey(seed))


def start_agent_fit(agent, episodes: list, bc: BCPolicy, init_key: jax.Array, fit_key: jax.Array):
    """`agent`'s Q-Estimation fit on `episodes` from fresh params (drawn by `init_key`) with `bc`; one agent serves
    many fits without compiling again."""
    from q2rl.core.parameters import init_agent_params
    from q2rl.interfaces import example_obs

    state_dim = int(np.asarray(bc.normalizer.state_mean).shape[-1])
    params = init_agent_params(agent, init_key, example_obs(state_dim, {}), bc)
    return agent.q_estimation.start(jax.device_get(params), episodes, fit_key)


def fit_to_convergence(name: str, overrides: dict, episodes: list, bc: BCPolicy) -> dict:
    """The Q-Estimation fit run to its end in the learner's chunks: each stage until its held-out loss converges (or
    its configured steps are done). Wall time in all and per stage (its first chunk, which scores the targets and
    support and compiles, apart), the steps each stage ran and its kept params' held-out loss."""
    fit = start_fit(overrides, episodes, bc)
    stages, t_all = {}, time.perf_counter()
    while not fit.finished:
        stage, t = fit.stage_name, time.perf_counter()
        fit.advance()
        jax.block_until_ready(fit.params)
        first = time.perf_counter() - t
        while fit.stage_name == stage:
            fit.advance()
        jax.block_until_ready(fit.params)
        stages[stage] = {"s": round(time.perf_counter() - t, 1), "first_chunk_s": round(first, 1),
                         "steps": int(fit.kept[stage][0]), "max_steps": fit.qe.stage_steps(stage, True)}
    report = fit.report()
    kept = {"value": report.value_heldout[1], "actor": report.actor_heldout[1], "critic": report.critic_heldout[1]}
    out = {"name": name, "fit_s": round(time.perf_counter() - t_all, 1), "stages": stages,
           "heldout_loss": {k: round(v, 3) for k, v in kept.items() if k in stages},
           "heldout_episodes": report.heldout_episodes, "rollout_steps": report.num_steps}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def stage_rates(name: str, overrides: dict, episodes: list, bc: BCPolicy, seconds: float) -> dict:
    """Each stage of the fit timed without running it out: its first chunk, then regression steps per second over
    up to `seconds` more (converge_patience 0, so no held-out set: every stage would run its configured steps)."""
    overrides = {**overrides, "q_estimation": {**overrides.get("q_estimation", {}), "converge_patience": 0}}
    fit = start_fit(overrides, episodes, bc)
    rates = {}
    while not fit.finished:
        stage, steps = fit.stage_name, fit.qe.stage_steps(fit.stage_name, True)
        first_steps, t = min(fit.chunk_steps, steps), time.perf_counter()
        fit.advance()
        jax.block_until_ready(fit.params)
        first, t0 = time.perf_counter() - t, time.perf_counter()
        while fit.stage_name == stage and time.perf_counter() - t0 < seconds:
            fit.advance()
        jax.block_until_ready(fit.params)
        ran = (fit.done if fit.stage_name == stage else steps) - first_steps
        rates[stage] = {"first_chunk_s": round(first, 2), "first_chunk_steps": first_steps,
                        "steps_per_s": round(ran / max(time.perf_counter() - t0, 1e-9), 1), "max_steps": steps}
        if fit.stage_name == stage:  # the rest of the stage is extrapolated, not run
            fit.end_stage()
    print(json.dumps({"name": name, "stage_rates": rates}), file=sys.stderr, flush=True)
    return rates


def extrapolated_s(rates: dict, steps: dict) -> float:
    """The fit's time at `rates` (stage_rates) if each stage ran `steps[stage]` steps."""
    total = 0.0
    for stage, r in rates.items():
        left = steps[stage] - r["first_chunk_steps"]
        total += r["first_chunk_s"] + (left / r["steps_per_s"] if left > 0 else 0.0)
    return round(total, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="timing window per configuration")
    p.add_argument("--only", choices=("all", "speed", "pixels", "fit"), default="all",
                   help="speed: update calls and gate latency only; pixels: those of the pixel presets only; fit: the "
                        "Q-Estimation fit only")
    p.add_argument("--fit-presets", default="cpu,paper", help="presets whose Q-Estimation fit is measured")
    p.add_argument("--extrapolate", default="auto",
                   help="presets (of --fit-presets, after one that runs) whose fit is timed per stage and extrapolated "
                        "instead of run to convergence; auto: paper on a CPU, none on a GPU; none: run them all")
    p.add_argument("--fit-seconds", type=float, default=20.0,
                   help="timing window per fit stage for the extrapolations and the fixed-steps (before) figure; "
                        "0: no fixed-steps figure")
    p.add_argument("--config", default="configs/sim/pick_cube.yaml",
                   help="the session config whose BC policy makes the Q-Estimation rollouts")
    args = p.parse_args(argv)
    extrapolate = {"auto": "paper" if jax.devices()[0].platform == "cpu" else "", "none": ""}.get(
        args.extrapolate, args.extrapolate).split(",")
    presets = args.fit_presets.split(",")
    if args.fit_seconds <= 0 and set(extrapolate) & set(presets):
        p.error("--fit-seconds 0 times nothing to extrapolate from: add --extrapolate none")
    figures = {}
    if args.only in ("all", "speed"):
        figures.update(speed_figures(args.seconds))
    if args.only == "pixels":
        figures.update(pixel_figures(args.seconds))
    if args.only in ("all", "fit"):
        figures.update(fit_figures(args.config, presets, extrapolate, args.fit_seconds))
    figures.update({"load_avg_1m": round(os.getloadavg()[0], 2), "device": jax.devices()[0].platform})
    print(json.dumps(figures))
    return 0


def speed_figures(seconds: float) -> dict:
    cpu = measure("cpu", {"preset": "cpu"}, seconds)
    paper = measure("paper", {"preset": "paper"}, seconds)
    authors = measure("paper_authors_accounting", {"preset": "paper", "batch_accounting": "update"}, seconds)
    plain = measure("paper_plain_critic", {"preset": "paper", "calibrated_conservatism": 0.0}, seconds)
    whole = measure("paper_calibrated_whole", {"preset": "paper", "calibrated_fraction": 1.0}, seconds)
    image = measure("image_small", {"preset": "cpu", "batch_size": 32, "utd": 1, "ensemble_size": 2,
                                    "image_encoder": "learned"}, seconds, cameras=("wrist",), image_size=64)
    table((cpu, paper, authors, plain, whole, image))
    return {
        "updates_per_s_cpu_preset": cpu["updates_per_s"], "updates_per_s_paper_preset": paper["updates_per_s"],
        "updates_per_s_paper_authors_accounting": authors["updates_per_s"],
        "critic_transitions_per_s_paper": paper["critic_transitions_per_s"],
        "critic_transitions_per_s_paper_authors_accounting": authors["critic_transitions_per_s"],
        "calibrated_cost_ratio": round(plain["updates_per_s"] / paper["updates_per_s"], 3),
        "calibrated_cost_ratio_whole_minibatch": round(plain["updates_per_s"] / whole["updates_per_s"], 3),
        "updates_per_s_image_small": image["updates_per_s"], "actor_latency_p50_ms": cpu["gate_p50_ms"],
        "actor_latency_p99_ms": cpu["gate_p99_ms"], "actor_latency_p99_ms_paper": paper["gate_p99_ms"],
        "actor_latency_p99_ms_image": image["gate_p99_ms"],
        **pixel_figures(seconds),
    }


def pixel_figures(seconds: float) -> dict:
    """The pixel presets: two 84x84 cameras (configs/sim/pick_cube_pixels*.yaml), each size with either encoder."""
    pixels = dict(cameras=("wrist", "front"), image_size=84)
    cpu = measure("pixels_cpu", {"preset": "cpu", "image_encoder": "frozen_bc"}, seconds, **pixels)
    cpu_learned = measure("pixels_cpu_learned", {"preset": "cpu", "image_encoder": "learned"}, seconds, min_calls=1,
                          **pixels)
    paper = measure("pixels_paper", {"preset": "paper", "image_encoder": "learned"}, seconds, min_calls=1, **pixels)
    paper_frozen = measure("pixels_paper_frozen", {"preset": "paper", "image_encoder": "frozen_bc"}, seconds, **pixels)
    table((cpu, cpu_learned, paper, paper_frozen))
    return {
        "updates_per_s_pixels_cpu": cpu["updates_per_s"],
        "updates_per_s_pixels_cpu_learned": cpu_learned["updates_per_s"],
        "updates_per_s_pixels_paper": paper["updates_per_s"],
        "updates_per_s_pixels_paper_frozen": paper_frozen["updates_per_s"],
        "actor_latency_p99_ms_pixels": cpu["gate_p99_ms"],
        "actor_latency_p99_ms_pixels_learned": cpu_learned["gate_p99_ms"],
        "actor_latency_p99_ms_pixels_paper": paper["gate_p99_ms"],
    }


def table(rows) -> None:
    """The measured configs as a markdown table (stdout)."""
    print("| config | images | utd | batch | minibatch | ensemble | updates/s | critic transitions/s | gate p50 ms | "
          "gate p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        images = f"{len(r['cameras'])} cam, {r['image_encoder']}" if r["cameras"] else "-"
        print(f"| {r['name']} | {images} | {r['utd']} | {r['batch_size']} | {r['minibatch']} | {r['ensemble']} | "
              f"{r['updates_per_s']} | {r['critic_transitions_per_s']} | {r['gate_p50_ms']} | {r['gate_p99_ms']} |")


def fit_figures(config: str, presets: list[str], extrapolate: list[str], seconds: float) -> dict:
    """The Q-Estimation fit of each preset on one set of pick_cube rollouts and the robot time those rollouts take at
    10 Hz. A preset in `extrapolate` is not run out: its stages are timed for `seconds` each and its time is
    extrapolated to the steps the first preset run out converged in (the same rollouts and regressions; a larger
    network may need other step counts). `seconds` > 0 also gives the before figure of each preset: every configured
    step (converge_patience 0), extrapolated the same way."""
    episodes, bc = pick_cube_rollouts(config)
    steps = sum(len(ep) for ep in episodes)
    out = {"qest_rollout_s_at_10hz": steps / 10.0, "qest_rollout_episodes": len(episodes),
           "qest_rollout_success": float(np.mean([ep.success for ep in episodes]))}
    print(f"Q-Estimation rollouts: {len(episodes)} episodes, {steps} steps = {steps / 10:g} s at 10 Hz")
    converged = None
    for preset in presets:
        overrides = {"preset": preset}
        rates = stage_rates(preset, overrides, episodes, bc, seconds) if seconds > 0 or preset in extrapolate else None
        if preset not in extrapolate:
            fit = fit_to_convergence(preset, overrides, episodes, bc)
            converged = converged or {k: v["steps"] for k, v in fit["stages"].items()}
            out.update({f"qest_fit_s_{preset}": fit["fit_s"], f"qest_fit_how_{preset}": "run to convergence",
                        f"qest_stage_steps_{preset}": {k: v["steps"] for k, v in fit["stages"].items()},
                        f"qest_stage_s_{preset}": {k: v["s"] for k, v in fit["stages"].items()},
                        f"qest_heldout_loss_{preset}": fit["heldout_loss"]})
            print(f"Q-Estimation fit, {preset}: {fit['fit_s']} s to convergence: {fit['stages']}")
        elif converged is None:
            raise SystemExit(f"--extrapolate {preset}: list a preset that runs to convergence before it")
        else:
            out[f"qest_fit_s_{preset}_extrapolated"] = extrapolated_s(rates, converged)
            # under the key too, with how it was obtained beside it
            out[f"qest_fit_s_{preset}"], out[f"qest_fit_how_{preset}"] = out[f"qest_fit_s_{preset}_extrapolated"], \
                "extrapolated"
            out[f"qest_steps_per_s_{preset}"] = {k: r["steps_per_s"] for k, r in rates.items()}
            out["qest_note"] = (f"qest_fit_s_{preset}_extrapolated: each stage timed for {seconds:g} s, at the steps "
                                f"the {presets[0]} preset's fit converged in ({converged})")
            print(f"Q-Estimation fit, {preset}: {out[f'qest_fit_s_{preset}_extrapolated']} s extrapolated "
                  f"(steps/s {out[f'qest_steps_per_s_{preset}']}) to the steps {converged}")
        if seconds > 0:
            fixed = extrapolated_s(rates, {k: r["max_steps"] for k, r in rates.items()})
            out[f"qest_fixed_steps_fit_s_{preset}_extrapolated"] = fixed
            print(f"  every configured step instead (the fixed-steps fit, extrapolated): {fixed} s")
    return out


if __name__ == "__main__":
    sys.exit(main())
