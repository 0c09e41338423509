"""Simulated Franka Panda tasks in MuJoCo with the real robot's observation/action contract.

    env = make_sim_env(SimEnvConfig(task="pick_cube", cameras=("wrist", "front")))
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

Scripted experts (q2rl.robot.sim.experts.make_expert) read the privileged state through
`env.unwrapped.privileged_state()` when the policy's observation does not carry it.

Why it is fast (bench/sim_speed.py; 2-core machine, one core, MuJoCo 3.8): the Panda (assets/panda.xml) is a
real 7-joint chain built from capsules and boxes; only the hand, the finger pads and the objects collide.
Per 0.1 s control step the env runs two damped-least-squares IK iterations in numpy (~70 us) and then
20 MuJoCo substeps of 5 ms (pick_cube ~9-14 us each, peg_insert ~20-30 us: box-box contacts) driven by
joint position servos, in five calls that ramp the joint targets. Measured: timestep 0.002 s ~1600
steps/s, 0.005 s (default) ~2200-2400, 0.01 s ~3000 (peg insertion gets less reliable at 0.01 s).
Two 64x64 cameras (EGL on llvmpipe, shadows/reflections/MSAA off, one Renderer per env): ~600 steps/s with
MuJoCo's default tessellation, ~1100-1200 with 12 slices per round shape and a coarse table grid (the
default; no visible difference at 64x64).
"""

from __future__ import annotations

from q2rl.robot.sim.config import SimEnvConfig
from q2rl.robot.sim.env import FrankaSimEnv
from q2rl.robot.sim.tasks import TASKS


def make_sim_env(cfg: SimEnvConfig) -> FrankaSimEnv:
    """A gymnasium env for `cfg.task` (validated; raises ConfigError naming the bad field)."""
    return FrankaSimEnv(cfg)


__all__ = ["TASKS", "FrankaSimEnv", "SimEnvConfig", "make_sim_env"]
