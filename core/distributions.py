"""Action distributions as pytrees: sample, score and take the entropy from one and the same object.

All distributions are batch-shaped over leading dimensions and event-shaped over the last (action) axis.
`log_prob` and `entropy` return nats summed over action dimensions (docs/design.md#closed-forms):

    log pi(a|s) = -1/2 * sum_i [ (a_i - mu_i)^2 / sigma_i^2 + log(2 pi sigma_i^2) ]
    H           =        sum_i 1/2 * log(2 pi e sigma_i^2)

    dist, carry = policy.distribution(obs, carry)
    a = dist.sample(key); logp = dist.log_prob(a); h = dist.entropy()
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

LOG_2PI = math.log(2.0 * math.pi)
# Boundary actions (exactly +-1, e.g. a closed gripper) have infinite pre-tanh value; score them just inside.
TANH_CLIP_EPS = 1e-6


def gaussian_log_prob(mean: jax.Array, log_std: jax.Array, x: jax.Array) -> jax.Array:
    """Diagonal-Gaussian log density of `x`, summed over the last axis."""
    z = (x - mean) * jnp.exp(-log_std)
    return -0.5 * jnp.sum(z * z + 2.0 * log_std + LOG_2PI, axis=-1)


def gaussian_entropy(log_std: jax.Array) -> jax.Array:
    """Closed-form diagonal-Gaussian entropy sum_i 1/2 log(2 pi e sigma_i^2), summed over the last axis."""
    return jnp.sum(0.5 * (LOG_2PI + 1.0) + log_std, axis=-1)


@struct.dataclass
class DiagGaussian:
    """Gaussian with diagonal covariance; mean and log_std are [..., d]."""

    mean: jax.Array
    log_std: jax.Array

    @property
    def std(self) -> jax.Array:
        return jnp.exp(self.log_std)

    def sample(self, key: jax.Array) -> jax.Array:
        noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> jax.Array:
        return self.mean

    def log_prob(self, action: jax.Array) -> jax.Array:
        return gaussian_log_prob(self.mean, self.log_std, action)

    def entropy(self, key: jax.Array | None = None) -> jax.Array:
        del key  # closed form
        return gaussian_entropy(self.log_std)


@struct.dataclass
class GaussianMixture:
    """Mixture of K diagonal Gaussians: logits [..., K], means and log_stds [..., K, d].

    The entropy has no closed form. `entropy_estimator="bound"` (default) gives the upper bound
    H(w) + sum_k w_k H_k; `"mc"` gives the Monte-Carlo estimate -mean log p(a_j), a_j ~ p (needs a key).
    """

    logits: jax.Array
    means: jax.Array
    log_stds: jax.Array
    entropy_estimator: str = struct.field(pytree_node=False, default="bound")
    mc_samples: int = struct.field(pytree_node=False, default=16)

    @property
    def log_weights(self) -> jax.Array:
        return jax.nn.log_softmax(self.logits, axis=-1)

    def _component(self, index: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and log_std of component `index` ([...] ints) -> two [..., d] arrays."""
        take = lambda x: jnp.take_along_axis(x, index[..., None, None], axis=-2)[..., 0, :]
        return take(self.means), take(self.log_stds)

    def sample(self, key: jax.Array) -> jax.Array:
        component_key, noise_key = jax.random.split(key)
        index = jax.random.categorical(component_key, self.logits, axis=-1)
        mean, log_std = self._component(index)
        return mean + jnp.exp(log_std) * jax.random.normal(noise_key, mean.shape, mean.dtype)

    def mode(self) -> jax.Array:
        """Mean of the most probable component (the mixture's true mode has no closed form)."""
        return self._component(jnp.argmax(self.logits, axis=-1))[0]

    def log_prob(self, action: jax.Array) -> jax.Array:
        per_component = gaussian_log_prob(self.means, self.log_stds, action[..., None, :])
        return jax.nn.logsumexp(self.log_weights + per_component, axis=-1)

    def entropy_bound(self) -> jax.Array:
        """Upper bound H(w) + sum_k w_k H_k on the mixture entropy."""
        log_w = self.log_weights
        w = jnp.exp(log_w)
        weight_entropy = -jnp.sum(w * log_w, axis=-1)
        return weight_entropy + jnp.sum(w * gaussian_entropy(self.log_stds), axis=-1)

    def entropy_mc(self, key: jax.Array, num_samples: int | None = None) -> jax.Array:
        """Monte-Carlo entropy estimate from `num_samples` (default mc_samples) samples per batch element."""
        n = self.mc_samples if num_samples is None else num_samples
        actions = jax.vmap(self.sample)(jax.random.split(key, n))  # [n, ..., d]
        return -jnp.mean(jax.vmap(self.log_prob)(actions), axis=0)

    def entropy(self, key: jax.Array | None = None) -> jax.Array:
        if self.entropy_estimator == "bound":
            return self.entropy_bound()
        if self.entropy_estimator == "mc":
            if key is None:
                raise ValueError("GaussianMixture.entropy: the 'mc' estimator needs a PRNG key")
            return self.entropy_mc(key)
        raise ValueError(f"GaussianMixture.entropy_estimator={self.entropy_estimator!r}: use 'bound' or 'mc'")


def _log_one_minus_tanh_sq(u: jax.Array) -> jax.Array:
    """log(1 - tanh(u)^2), stable for large |u|: 2 (log 2 - u - softplus(-2u))."""
    return 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))


@struct.dataclass
class TanhGaussian:
    """a = tanh(u), u ~ N(mean, diag(exp(log_std)^2)); actions in (-1, 1), for the RL actor.

    log p(a) = log N(u) - sum_i log(1 - tanh(u_i)^2). Actions at the boundary are clipped to +-(1 - eps)
    before the inverse tanh so that scoring a demonstrated +-1 (gripper) stays finite.
    """

    mean: jax.Array
    log_std: jax.Array
    mc_samples: int = struct.field(pytree_node=False, default=1)

    def _pre_tanh_sample(self, key: jax.Array) -> jax.Array:
        noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + jnp.exp(self.log_std) * noise

    def _pre_tanh_log_prob(self, u: jax.Array) -> jax.Array:
        return gaussian_log_prob(self.mean, self.log_std, u) - jnp.sum(_log_one_minus_tanh_sq(u), axis=-1)

    def sample(self, key: jax.Array) -> jax.Array:
        return jnp.tanh(self._pre_tanh_sample(key))

    def sample_and_log_prob(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """A sample and its log-prob, computed from the pre-tanh value (exact, no arctanh round trip)."""
        u = self._pre_tanh_sample(key)
        return jnp.tanh(u), self._pre_tanh_log_prob(u)

    def mode(self) -> jax.Array:
        return jnp.tanh(self.mean)

    def log_prob(self, action: jax.Array) -> jax.Array:
        limit = 1.0 - TANH_CLIP_EPS
        u = jnp.arctanh(jnp.clip(action, -limit, limit))
        return self._pre_tanh_log_prob(u)

    def entropy(self, key: jax.Array | None = None) -> jax.Array:
        """Monte-Carlo entropy estimate (no closed form); needs a key."""
        if key is None:
            raise ValueError("TanhGaussian.entropy has no closed form: pass a PRNG key for the MC estimate")
        keys = jax.random.split(key, self.mc_samples)
        log_probs = jax.vmap(lambda k: self.sample_and_log_prob(k)[1])(keys)
        return -jnp.mean(log_probs, axis=0)


Distribution = DiagGaussian | GaussianMixture | TanhGaussian
