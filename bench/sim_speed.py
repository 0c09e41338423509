"""Simulated Franka speed: control steps per second, state-only and with two 64x64 cameras, on one core.

    python bench/sim_speed.py --task pick_cube --steps 3000
    python bench/sim_speed.py --task kitting --expert-episodes 50 --expert-noise 0,0.3   # + scripted expert success

Random actions (seeded); episode resets are included in the timing (they are part of real use).
The last line is one JSON object: {"task", "steps_per_s", "image_steps_per_s", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def measure(task: str, steps: int, cameras: tuple[str, ...], image_size: int, timestep: float) -> dict:
    """Steps per second of random-action rollouts, and the mean reset time."""
    from q2rl.robot.sim import SimEnvConfig, make_sim_env

    env = make_sim_env(SimEnvConfig(task=task, cameras=cameras, image_size=image_size, physics_timestep=timestep))
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    env.step(np.zeros(7, np.float32))  # first render creates the GL context: keep it out of the timing
    resets, reset_time = 0, 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, size=7).astype(np.float32))
        if terminated or truncated:
            t = time.perf_counter()
            env.reset()
            reset_time += time.perf_counter() - t
            resets += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    env.close()
    # CPU time (all threads of this process) is what a step costs; wall time also shows the machine's load.
    return {"steps_per_s": steps / elapsed, "cpu_steps_per_s": steps / cpu, "reset_ms": 1000 * reset_time / max(resets, 1)}


def expert_success(task: str, noise: float, episodes: int) -> dict:
    """Success rate and mean length of the scripted expert over seeds 0..episodes-1."""
    from q2rl.robot.sim import SimEnvConfig, make_sim_env
    from q2rl.robot.sim.experts import expert_observation, make_expert

    cfg = SimEnvConfig(task=task)
    env = make_sim_env(cfg)
    expert = make_expert(task, noise, np.random.default_rng(0), cfg)
    successes, lengths = [], []
    for seed in range(episodes):
        env.reset(seed=seed)
        expert.reset()
        while True:
            _, _, terminated, truncated, info = env.step(expert.act(expert_observation(env)))
            if terminated or truncated:
                break
        successes.append(info["success"])
        lengths.append(env.elapsed_steps)
    return {"success_rate": float(np.mean(successes)), "mean_length": float(np.mean(lengths))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="pick_cube", help="task name (see q2rl.robot.sim.TASKS)")
    parser.add_argument("--steps", type=int, default=3000, help="control steps for the state-only measurement")
    parser.add_argument("--image-steps", type=int, default=0, help="steps with cameras (default: steps // 5)")
    parser.add_argument("--image-size", type=int, default=64, help="camera image size in pixels")
    parser.add_argument("--expert-episodes", type=int, default=0, help="also measure the scripted expert (0 = skip)")
    parser.add_argument("--expert-noise", default="0", help="comma-separated expert noise levels")
    parser.add_argument("--physics-timestep", type=float, default=0.005, help="MuJoCo timestep in seconds")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    state = measure(args.task, args.steps, (), args.image_size, args.physics_timestep)
    print(f"state-only: {state['steps_per_s']:.0f} steps/s, reset {state['reset_ms']:.1f} ms", flush=True)
    images = measure(args.task, args.image_steps or max(args.steps // 5, 50), ("wrist", "front"), args.image_size, args.physics_timestep)
    print(f"2 cameras {args.image_size}x{args.image_size}: {images['steps_per_s']:.0f} steps/s", flush=True)
    result = {
        "task": args.task,
        "steps_per_s": round(state["steps_per_s"], 1),
        "image_steps_per_s": round(images["steps_per_s"], 1),
        "cpu_steps_per_s": round(state["cpu_steps_per_s"], 1),
        "image_cpu_steps_per_s": round(images["cpu_steps_per_s"], 1),
        "reset_ms": round(state["reset_ms"], 2),
        "image_size": args.image_size,
        "physics_timestep": args.physics_timestep,
        "mujoco_gl": os.environ["MUJOCO_GL"],
    }
    if args.expert_episodes > 0:
        result["expert"] = {}
        for noise in (float(x) for x in args.expert_noise.split(",")):
            stats = expert_success(args.task, noise, args.expert_episodes)
            print(f"expert noise {noise}: success {stats['success_rate']:.2f}, {stats['mean_length']:.1f} steps", flush=True)
            result["expert"][str(noise)] = stats
    print(json.dumps(result))


if __name__ == "__main__":
    main()
