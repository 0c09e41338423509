"""The real-robot control loop against franky-sim: step period and jitter at 10 Hz, the per-step work around
the robot (state read + target math + send), and the camera crop/resize cost. Prints one JSON line.

    python bench/real_robot_loop.py [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _percentiles(values: list[float]) -> dict:
    a = np.asarray(values) * 1000.0
    return {"mean_ms": round(float(a.mean()), 3), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "max_ms": round(float(a.max()), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()

    from franky_sim import SimulationServer
    from franky_sim.mujoco_simulator import MujocoSimulator

    from q2rl.config import from_dict
    from q2rl.robot.cameras import crop_and_resize
    from q2rl.robot.franka import FrankaEnv, compute_target
    from q2rl.robot.real_config import FrankaEnvConfig

    rng = np.random.default_rng(0)
    result: dict = {"bench": "real_robot_loop", "steps": args.steps}
    with MujocoSimulator() as sim:
        robot = sim.add_robot()
        with SimulationServer(sim) as server:
            server.run_async()
            cfg = from_dict(FrankaEnvConfig, {
                "robot_ip": robot.hostname, "realtime": "ignore", "max_episode_steps": args.steps + 1,
                "joint_reset_every": 0, "relative_dynamics_factor": 0.5, "reset_dynamics_factor": 0.5,
                "home_position": [0.5, 0.0, 0.35], "gripper": {"command_timeout_s": 15.0},
            })
            env = FrankaEnv(cfg)
            try:
                t0 = time.perf_counter()
                env.reset(seed=0)
                result["reset_s"] = round(time.perf_counter() - t0, 3)
                periods, work = [], []
                last = time.perf_counter()
                for _ in range(args.steps):
                    action = rng.uniform(-0.5, 0.5, 7).astype(np.float32)
                    t = time.perf_counter()
                    m = env._measure()
                    target = compute_target(action, m.position, m.quat, env.limits)
                    env._send_target(target)
                    work.append(time.perf_counter() - t)
                    env.step(action)
                    now = time.perf_counter()
                    periods.append(now - last)
                    last = now
                result["step_period"] = _percentiles(periods[1:])
                result["read_math_send"] = _percentiles(work)
            finally:
                env.close()
    frame = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    t = time.perf_counter()
    for _ in range(200):
        crop_and_resize(frame, (80, 0, 560, 480), 84, 84)
    result["crop_resize_640x480_to_84_ms"] = round((time.perf_counter() - t) / 200 * 1000, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
