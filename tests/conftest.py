"""Shared pytest setup. MuJoCo renders headless through EGL unless the caller chose otherwise."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
# Compiled XLA programs are kept on disk and shared by the test processes: every learner and actor a process test
# starts compiles the same tiny networks again, and so does every in-process Learner (a new jit per instance). A
# learner-restart test takes 31 s instead of 52 s once the cache holds its programs. Set before JAX is imported.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"q2rl-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")


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
