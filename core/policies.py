"""Policy networks (obs, carry) -> (distribution, carry) and the frozen BC policy container.

Every policy net takes a recurrent carry so that a recurrent policy (GMM-RNN) fits the same interface;
feed-forward nets use the empty carry `()`:

    net = make_policy_net(PolicyConfig(kind="gmm"), action_dim=7)
    params = net.init(key, obs_batch, net.initial_carry(batch))
    dist, carry = net.apply(params, obs_batch, carry)

`BCPolicy` bundles the (static) net, its params and the observation normaliser; `policy.distribution(obs)`
takes a single observation or a batch. Sample, score and take the entropy from the one `dist` it returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from q2rl.config import ConfigError, doc
from q2rl.core.distributions import DiagGaussian, Distribution, GaussianMixture
from q2rl.core.encoders import BC_CARRY, BC_FEATURES, ConvEncoder, ObsEncoder, conv_name
from q2rl.core.networks import MLP
from q2rl.core.normalization import ObsNormalizer

Carry = Any  # () for feed-forward policies; a pytree of [batch, ...] arrays for recurrent ones


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Architecture of a BC policy network (stored in its checkpoint so it can be rebuilt)."""

    kind: Literal["gaussian", "gmm", "gmm_rnn"] = doc(
        "gaussian", "Action head: diagonal Gaussian, Gaussian mixture, or a recurrent (LSTM) Gaussian mixture.")
    # Small on purpose: 2x256 memorises the noise of 20 demos (held-out NLL rises while train NLL falls).
    hidden_dims: tuple[int, ...] = doc((64, 64), "Widths of the MLP trunk.")
    activation: str = doc("relu", "Trunk activation: relu, gelu, silu, tanh or elu.")
    layer_norm: bool = doc(False, "LayerNorm after every hidden layer.")
    dropout_rate: float = doc(0.2, "Trunk dropout in training (0 disables); curbs overfitting to demo noise.")
    num_modes: int = doc(5, "Number of mixture components (gmm only).")
    # -2 keeps std >= 0.135: one mistimed gripper switch in held-out demos then costs ~100 nats, not ~10^4.
    log_std_min: float = doc(-2.0, "Lower bound of the per-dimension log std (soft clamp).")
    log_std_max: float = doc(1.0, "Upper bound of the per-dimension log std (soft clamp).")
    squash_mean: bool = doc(True, "tanh on the means, keeping them inside the [-1, 1] action box.")
    entropy_estimator: Literal["bound", "mc"] = doc("bound", "GMM entropy: upper bound or Monte Carlo.")
    entropy_mc_samples: int = doc(16, "Samples per state for the Monte-Carlo GMM entropy.")
    image_feature_dim: int = doc(64, "Feature size of each camera's conv encoder.")
    rnn_hidden_dim: int = doc(128, "gmm_rnn: width of the LSTM between the encoder and the MLP trunk.")
    # robomimic's rollout convention: the memory restarts every `rnn_horizon` steps, as it does in training (windows
    # of that length from a zero state), so the policy never meets a memory longer than it was trained on.
    rnn_horizon: int = doc(10, "gmm_rnn: steps per training window; the memory restarts every this many steps.")

    def validate(self) -> None:
        if not self.hidden_dims or min(self.hidden_dims) <= 0:
            raise ConfigError(f"hidden_dims: {self.hidden_dims} must be a non-empty list of positive widths")
        if self.num_modes < 1:
            raise ConfigError(f"num_modes: {self.num_modes} must be >= 1")
        if not self.log_std_min < self.log_std_max:
            raise ConfigError("log_std_min: must be smaller than log_std_max")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(f"dropout_rate: {self.dropout_rate} must be in [0, 1)")
        if self.rnn_hidden_dim < 1 or self.rnn_horizon < 1:
            raise ConfigError(f"rnn_hidden_dim, rnn_horizon: {self.rnn_hidden_dim}, {self.rnn_horizon} must be >= 1")


class PolicyNet(Protocol):
    """What every policy network provides (flax modules: call through `.apply(params, ...)`)."""

    def __call__(self, obs: Mapping[str, Any], carry: Carry = (), training: bool = False
                 ) -> tuple[Distribution, Carry]: ...

    def initial_carry(self, batch_size: int | None = None) -> Carry: ...


def soft_clamp(x: jax.Array, low: float, high: float) -> jax.Array:
    """Smoothly squash x into (low, high); keeps gradients alive where a hard clip would cut them."""
    return low + 0.5 * (high - low) * (jnp.tanh(x) + 1.0)


class _FeedForwardPolicy(nn.Module):
    """Shared trunk: encoder (state [+ cameras]) -> MLP. Subclasses add the head."""

    action_dim: int
    hidden_dims: Sequence[int] = (256, 256)
    activation: str = "relu"
    layer_norm: bool = False
    dropout_rate: float = 0.0
    log_std_min: float = -2.0
    log_std_max: float = 1.0
    squash_mean: bool = True
    camera_names: Sequence[str] = ()
    image_feature_dim: int = 64
    image_input: str = "pixels"  # "bc_features": its own conv features, computed before (BCPolicy.frozen_view)

    def initial_carry(self, batch_size: int | None = None) -> Carry:
        del batch_size
        return ()

    def encode(self, obs: Mapping[str, Any]) -> jax.Array:
        return ObsEncoder(tuple(self.camera_names), feature_dim=self.image_feature_dim,
                          image_input=self.image_input, name="encoder")(obs)

    def mlp(self, x: jax.Array, training: bool) -> jax.Array:
        return MLP(tuple(self.hidden_dims), self.activation, self.layer_norm, self.dropout_rate or None,
                   activate_final=True, name="trunk")(x, training=training)

    def trunk(self, obs: Mapping[str, Any], training: bool) -> jax.Array:
        return self.mlp(self.encode(obs), training)

    def means(self, raw: jax.Array) -> jax.Array:
        return jnp.tanh(raw) if self.squash_mean else raw


class GaussianPolicy(_FeedForwardPolicy):
    """Diagonal Gaussian with state-dependent mean and (soft-clamped) log std."""

    @nn.compact
    def __call__(self, obs: Mapping[str, Any], carry: Carry = (), training: bool = False
                 ) -> tuple[DiagGaussian, Carry]:
        h = self.trunk(obs, training)
        mean = self.means(nn.Dense(self.action_dim, name="mean")(h))
        log_std = soft_clamp(nn.Dense(self.action_dim, name="log_std")(h), self.log_std_min, self.log_std_max)
        return DiagGaussian(mean, log_std), carry


class GMMPolicy(_FeedForwardPolicy):
    """Mixture of `num_modes` diagonal Gaussians with state-dependent weights, means and log stds."""

    num_modes: int = 5
    entropy_estimator: str = "bound"
    entropy_mc_samples: int = 16

    @nn.compact
    def __call__(self, obs: Mapping[str, Any], carry: Carry = (), training: bool = False
                 ) -> tuple[GaussianMixture, Carry]:
        return self.mixture(self.trunk(obs, training)), carry

    def mixture(self, h: jax.Array) -> GaussianMixture:
        k, d = self.num_modes, self.action_dim
        logits = nn.Dense(k, name="logits")(h)
        # Spread the initial means so the components do not start identical (they would stay tied).
        raw_means = nn.Dense(k * d, name="means", bias_init=nn.initializers.uniform(2.0))(h)
        means = self.means(raw_means - 1.0).reshape(*h.shape[:-1], k, d)
        raw_log_stds = nn.Dense(k * d, name="log_stds")(h).reshape(*h.shape[:-1], k, d)
        log_stds = soft_clamp(raw_log_stds, self.log_std_min, self.log_std_max)
        return GaussianMixture(logits, means, log_stds, entropy_estimator=self.entropy_estimator,
                               mc_samples=self.entropy_mc_samples)


class GMMRNNPolicy(GMMPolicy):
    """The Q2RL paper's real-robot pi_BC (robomimic's GMM-RNN): encoder -> LSTM -> MLP -> Gaussian mixture.

    The carry is {"h", "c": [..., rnn_hidden_dim], "t": [...] int32 steps since the episode began}: the memory the
    next step reads, zeroed after every rnn_horizon-th step (robomimic's rollout convention, matching training on
    windows of rnn_horizon steps from a zero state), so a carry is what it says, and other networks may read it.
    The memory reads observations only, never actions, so it is a function of the episode's observations: the
    learner recomputes it from the stored frames (docs/design.md#recurrent-bc)."""

    rnn_hidden_dim: int = 128
    rnn_horizon: int = 10

    def initial_carry(self, batch_size: int | None = None) -> Carry:
        lead = () if batch_size is None else (batch_size,)
        zeros = jnp.zeros(lead + (self.rnn_hidden_dim,), jnp.float32)
        return {"h": zeros, "c": zeros, "t": jnp.zeros(lead, jnp.int32)}

    @nn.compact
    def __call__(self, obs: Mapping[str, Any], carry: Carry = (), training: bool = False
                 ) -> tuple[GaussianMixture, Carry]:
        if not isinstance(carry, Mapping) or set(carry) != {"h", "c", "t"}:
            raise ValueError("a recurrent pi_BC (gmm_rnn) needs its carry {h, c, t}: start an episode with "
                             "policy.initial_carry() and pass on the carry each step returns")
        (c, h), y = nn.LSTMCell(self.rnn_hidden_dim, name="lstm")((carry["c"], carry["h"]), self.encode(obs))
        t = carry["t"] + 1
        restart = (t % self.rnn_horizon == 0)[..., None]
        memory = {"h": jnp.where(restart, 0.0, h), "c": jnp.where(restart, 0.0, c), "t": t}
        return self.mixture(self.mlp(y, training)), memory


def make_policy_net(cfg: PolicyConfig, action_dim: int, camera_names: Sequence[str] = ()) -> nn.Module:
    """The policy network `cfg` describes, for `action_dim` actions and the given cameras."""
    common = dict(
        action_dim=action_dim, hidden_dims=tuple(cfg.hidden_dims), activation=cfg.activation,
        layer_norm=cfg.layer_norm, dropout_rate=cfg.dropout_rate, log_std_min=cfg.log_std_min,
        log_std_max=cfg.log_std_max, squash_mean=cfg.squash_mean, camera_names=tuple(camera_names),
        image_feature_dim=cfg.image_feature_dim,
    )
    if cfg.kind == "gaussian":
        return GaussianPolicy(**common)
    mixture = dict(num_modes=cfg.num_modes, entropy_estimator=cfg.entropy_estimator,
                   entropy_mc_samples=cfg.entropy_mc_samples)
    if cfg.kind == "gmm":
        return GMMPolicy(**common, **mixture)
    if cfg.kind == "gmm_rnn":
        return GMMRNNPolicy(**common, **mixture, rnn_hidden_dim=cfg.rnn_hidden_dim, rnn_horizon=cfg.rnn_horizon)
    raise ConfigError(f"kind: {cfg.kind!r} is not a policy kind; use 'gaussian', 'gmm' or 'gmm_rnn'")


def _is_single(obs: Mapping[str, Any]) -> bool:
    return jnp.ndim(obs["state"]) == 1


def _add_batch(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], tree)


def _drop_batch(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: x[0], tree)


@struct.dataclass
class BCPolicy:
    """A trained BC policy: network (static), params and observation normaliser. Immutable, jittable.

        dist, carry = policy.distribution(obs, carry)     # obs single ([D]) or batched ([B, D])
        a = dist.sample(key); logp = dist.log_prob(a); h = dist.entropy()
    """

    module: nn.Module = struct.field(pytree_node=False)
    params: Any
    normalizer: ObsNormalizer

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(self.module.camera_names)

    def initial_carry(self, batch_size: int | None = None) -> Carry:
        """The carry to start an episode with (no batch dim when batch_size is None)."""
        return self.module.initial_carry(batch_size)

    def image_features(self, obs: Mapping[str, Any]) -> dict[str, jax.Array]:
        """pi_BC's conv features of each camera's image: {name: f32[..., F]} (any leading batch dims)."""
        convs = self.params["params"]["encoder"]
        conv = ConvEncoder(feature_dim=self.module.image_feature_dim)
        return {c: conv.apply({"params": convs[conv_name(c)]}, obs["images"][c]) for c in self.camera_names}

    def frozen_view(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """The frozen-encoder view of `obs`: its state and pi_BC's features of its images, no images (an
        observation already in that view is returned as it is). pi_BC reads it as it reads the images."""
        if BC_FEATURES in obs:
            return dict(obs)
        view = {"state": obs["state"], BC_FEATURES: self.image_features(obs)}
        return {**view, BC_CARRY: obs[BC_CARRY]} if BC_CARRY in obs else view

    @property
    def recurrent(self) -> bool:
        """Whether the policy keeps a memory across steps (its carry is not empty)."""
        return bool(jax.tree_util.tree_leaves(self.initial_carry()))

    def at(self, obs: Mapping[str, Any]) -> Distribution:
        """The action distribution at an observation that carries pi_BC's memory under BC_CARRY (a recurrent
        policy's; a feed-forward one needs none)."""
        return self.distribution(obs, obs.get(BC_CARRY, ()))[0]

    def next_carry(self, obs: Mapping[str, Any]) -> Carry:
        """The memory after reading `obs` (which carries the memory before it, under BC_CARRY)."""
        return self.distribution(obs, obs[BC_CARRY])[1]

    def distribution(self, obs: Mapping[str, Any], carry: Carry = ()) -> tuple[Distribution, Carry]:
        """The action distribution at `obs` and the next carry (batch dims follow `obs`); `obs` may be the
        frozen-encoder view (`frozen_view`), whose features stand in for the conv over the images."""
        single = _is_single(obs)
        if single:
            obs, carry = _add_batch(obs), _add_batch(carry)
        module = self.module
        if BC_FEATURES in obs and self.camera_names:
            module = module.clone(image_input=BC_FEATURES)
        dist, carry = module.apply(self.params, self.normalizer.normalize(obs), carry)
        if single:
            dist, carry = _drop_batch(dist), _drop_batch(carry)
        return dist, carry

    def act(self, obs: Mapping[str, Any], key: jax.Array, carry: Carry = (), deterministic: bool = False
            ) -> tuple[jax.Array, Carry]:
        """A sampled (or, deterministic, modal) action and the next carry."""
        dist, carry = self.distribution(obs, carry)
        return (dist.mode() if deterministic else dist.sample(key)), carry
