"""One way to build the actor's environment from the run config: the MuJoCo Franka or the real one.

    env = make_env(cfg.env)     # RobotEnv (q2rl.interfaces): same observation/action contract either way

The real robot's modules (franky, pyrealsense2) are imported only when the franka backend is asked for, so a
sim-only install never needs the `robot` extra.
"""

from __future__ import annotations

import os

from q2rl.config import ConfigError
from q2rl.interfaces import RobotEnv


def make_env(cfg) -> RobotEnv:
    """The environment `cfg` (a run_config.EnvConfig) names; raises ConfigError for an unknown backend."""
    if cfg.backend == "sim":
        os.environ.setdefault("MUJOCO_GL", "egl")  # the sim may create a renderer even state-only
        from q2rl.robot.sim import make_sim_env

        return make_sim_env(cfg.sim)
    if cfg.backend == "franka":
        try:
            from q2rl.robot.franka import FrankaEnv
        except ImportError as e:
            raise ConfigError(
                f"backend: 'franka' needs the robot extra ({e}); install it with `pip install -e .[robot]`"
            ) from None
        return FrankaEnv(cfg.franka)
    raise ConfigError(f"backend: {cfg.backend!r} is not one of 'sim', 'franka'")


def is_simulated(cfg) -> bool:
    """True when the actor may run as fast as the learner allows instead of at the robot's control rate."""
    return cfg.backend == "sim"
