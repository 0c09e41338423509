"""Simulated Franka Panda tasks in MuJoCo with the real robot's observation/action contract.

    env = make_sim_env(SimEnvConfig(task="pick_cube", cameras=("wrist", "front")))
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

Scripted experts (q2rl.robot.sim.experts.make_expert) read the privileged state through
`env.unwrapped.privileged_state()` when the policy's observation does not carry it.
"""

from __future__ import annotations

from q2rl.robot.sim.config import SimEnvConfig
from q2rl.robot.sim.env import FrankaSimEnv
from q2rl.robot.sim.tasks import TASKS


def make_sim_env(cfg: SimEnvConfig) -> FrankaSimEnv:
    """A gymnasium env for `cfg.task` (validated; raises ConfigError naming the bad field)."""
    return FrankaSimEnv(cfg)


__all__ = ["TASKS", "FrankaSimEnv", "SimEnvConfig", "make_sim_env"]
