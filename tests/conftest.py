"""Shared pytest setup. MuJoCo renders headless through EGL unless the caller chose otherwise."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def sim_env_factory():
    """Build simulated Franka envs from SimEnvConfig keyword arguments; closes them after the test."""
    from q2rl.robot.sim import SimEnvConfig, make_sim_env

    envs = []

    def make(**kwargs):
        env = make_sim_env(SimEnvConfig(**kwargs))
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.fixture
def rng():
    """A seeded numpy Generator (tests pass RNGs explicitly, like the library does)."""
    return np.random.default_rng(0)
