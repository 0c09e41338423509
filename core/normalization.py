"""Observation normalisation: per-dimension state statistics, stored with the policy that was trained on them."""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class ObsNormalizer:
    """(state - mean) / std for the `state` entry of an observation; images pass through unchanged."""

    state_mean: Any
    state_std: Any

    @classmethod
    def fit(cls, states: np.ndarray, min_std: float = 1e-2) -> "ObsNormalizer":
        """Statistics of a [N, D] array; dimensions that barely vary get std `min_std` (no blow-up)."""
        states = np.asarray(states, np.float32)
        if states.ndim != 2 or len(states) == 0:
            raise ValueError(f"ObsNormalizer.fit: expected a non-empty [N, D] array, got shape {states.shape}")
        mean = states.mean(axis=0)
        std = np.maximum(states.std(axis=0), min_std)
        return cls(state_mean=mean.astype(np.float32), state_std=std.astype(np.float32))

    @classmethod
    def identity(cls, state_dim: int) -> "ObsNormalizer":
        return cls(state_mean=np.zeros(state_dim, np.float32), state_std=np.ones(state_dim, np.float32))

    def normalize(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        state = (jnp.asarray(obs["state"], jnp.float32) - self.state_mean) / self.state_std
        return {**obs, "state": state}
