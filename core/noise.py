"""Temporally correlated exploration noise: the Ornstein-Uhlenbeck process batch_online adds to its executed
training actions (docs/design.md#batch-online-rl).

    x = np.zeros(action_dim)                                   # at every episode's start
    x = ou_step(x, rng.standard_normal(action_dim), theta, sigma, dt)
    action = np.clip(action + x, -1, 1)

Euler-Maruyama steps of dx = -theta x dt + sigma dW: x' = (1 - theta dt) x + sigma sqrt(dt) n, n ~ N(0, 1). The
noise keeps rho = 1 - theta dt of itself from step to step (autocorrelation rho^k at lag k) and its stationary
variance is sigma^2 dt / (1 - rho^2).
"""

from __future__ import annotations

import math

import numpy as np


def ou_step(x: np.ndarray, normal: np.ndarray, theta: float, sigma: float, dt: float) -> np.ndarray:
    """One step of the OU noise from `x`, given a standard normal draw of its shape."""
    return (1.0 - theta * dt) * x + sigma * math.sqrt(dt) * normal


def ou_stationary_std(theta: float, sigma: float, dt: float) -> float:
    """The standard deviation the noise settles at (per dimension)."""
    rho = 1.0 - theta * dt
    return sigma * math.sqrt(dt / (1.0 - rho * rho)) if abs(rho) < 1.0 else float("inf")
