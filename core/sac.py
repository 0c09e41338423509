"""SAC with a critic ensemble and a BC-regularised actor (docs/design.md#the-critic-and-its-regulariser): networks, losses, one jitted update.

    nets = make_networks(cfg, action_dim=7, camera_names=())
    state = init_state(nets, cfg, key, example_obs, bc=bc_policy)      # immutable pytree
    update = make_update(nets, cfg)                                      # jitted
    state, metrics = update(state, batch, key)    # batch leaves have a leading [utd] axis

One update call = lax.scan over `utd` critic minibatches with `actor_utd` actor (and temperature) updates spread
evenly among them, each on the minibatch of the critic step before it (default 1: one, on the last minibatch).
Each optimizer sees only its own parameter subtree. The learner state holds the frozen pieces the losses need
(pi_BC for IBRL's bootstrap; V_phi for the actor's gate) so the update is a function of its inputs.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from q2rl.core.agent_config import AgentConfig
from q2rl.core.distributions import TanhGaussian
from q2rl.core.encoders import BC_FEATURES, ObsEncoder, augment_observation
from q2rl.core.networks import MLP
from q2rl.core.normalization import ObsNormalizer
from q2rl.core.replay import Batch


# ------------------------------------------------------------------------------------------------ networks
class Critic(nn.Module):
    """Q(features, action) -> [...] with a LayerNorm MLP."""

    hidden_dims: Sequence[int]
    layer_norm: bool = True

    @nn.compact
    def __call__(self, features: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate([features, action], axis=-1)
        x = MLP(tuple(self.hidden_dims), layer_norm=self.layer_norm, activate_final=True)(x)
        return nn.Dense(1)(x)[..., 0]


def critic_heads_and_features(critic: "EnsembleCritic", critic_params: Any, features: jax.Array, action: jax.Array
                              ) -> tuple[jax.Array, jax.Array]:
    """All heads' Q [E, ...] and their penultimate features Phi [E, ..., H] (the last hidden layer, which the NTK
    regulariser decorrelates), from the ensemble's own parameters: the same numbers as `critic.apply`."""
    heads = critic_params["params"]["heads"]
    mlp = MLP(tuple(critic.hidden_dims), layer_norm=critic.layer_norm, activate_final=True)
    x = jnp.concatenate([features, action], axis=-1)
    phi = jax.vmap(lambda p: mlp.apply({"params": p}, x))(heads["MLP_0"])
    q = jax.vmap(lambda p, h: nn.Dense(1).apply({"params": p}, h)[..., 0])(heads["Dense_0"], phi)
    return q, phi


class EnsembleCritic(nn.Module):
    """`ensemble_size` independent critics via nn.vmap: (features, action) -> [E, ...]."""

    hidden_dims: Sequence[int]
    ensemble_size: int
    layer_norm: bool = True

    @nn.compact
    def __call__(self, features: jax.Array, action: jax.Array) -> jax.Array:
        vmapped = nn.vmap(Critic, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=None, out_axes=0, axis_size=self.ensemble_size)
        return vmapped(self.hidden_dims, self.layer_norm, name="heads")(features, action)


class PolicyNet(nn.Module):
    """pi_RL(features) -> TanhGaussian with state-dependent, clipped log std."""

    action_dim: int
    hidden_dims: Sequence[int]
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, features: jax.Array) -> TanhGaussian:
        h = MLP(tuple(self.hidden_dims), activate_final=True)(features)
        mean = nn.Dense(self.action_dim, name="mean")(h)
        log_std = jnp.clip(nn.Dense(self.action_dim, name="log_std")(h), self.log_std_min, self.log_std_max)
        return TanhGaussian(mean, log_std)


def value_head(hidden_dims: Sequence[int], features: jax.Array) -> jax.Array:
    """One head of V_phi, features -> [...]; called inside a compact module, whose parameters it adds."""
    h = MLP(tuple(hidden_dims), layer_norm=True, activate_final=True)(features)
    return nn.Dense(1)(h)[..., 0]


class ValueHead(nn.Module):
    """One head of V_phi as a module of its own (vmapped into ValueNet's heads)."""

    hidden_dims: Sequence[int]

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        return value_head(self.hidden_dims, features)


class ValueNet(nn.Module):
    """V_phi's heads: obs -> [heads, ...], one observation encoder (frozen after Q-Estimation). One head keeps the
    parameter layout of the single-network V_phi (encoder, MLP_0, Dense_0), so older checkpoints load."""

    hidden_dims: Sequence[int]
    camera_names: Sequence[str] = ()
    image_feature_dim: int = 64
    heads: int = 1
    image_input: str = "pixels"
    read_bc_memory: bool = False

    @nn.compact
    def __call__(self, obs: Any) -> jax.Array:
        features = ObsEncoder(tuple(self.camera_names), feature_dim=self.image_feature_dim,
                              image_input=self.image_input, read_bc_memory=self.read_bc_memory,
                              name="encoder")(obs)
        if self.heads == 1:
            return value_head(self.hidden_dims, features)[None]
        vmapped = nn.vmap(ValueHead, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=None, out_axes=0, axis_size=self.heads)
        return vmapped(self.hidden_dims, name="heads")(features)


class Networks(NamedTuple):
    """The (static) flax modules of an agent."""

    encoder: ObsEncoder  # shared: trained by the critic loss, read through stop_gradient by the actor
    actor: PolicyNet
    critic: EnsembleCritic
    value: ValueNet
    action_dim: int


def make_networks(cfg: AgentConfig, action_dim: int, camera_names: Sequence[str] = ()) -> Networks:
    """The modules `cfg` describes, for `action_dim` actions and the given cameras (empty: state only)."""
    cams = tuple(camera_names)
    image_input = BC_FEATURES if cfg.image_encoder == "frozen_bc" else "pixels"
    return Networks(
        encoder=ObsEncoder(cams, feature_dim=cfg.image_feature_dim, image_input=image_input,
                           read_bc_memory=cfg.read_bc_memory),
        actor=PolicyNet(action_dim, tuple(cfg.hidden_dims), cfg.actor_log_std_min, cfg.actor_log_std_max),
        critic=EnsembleCritic(tuple(cfg.hidden_dims), cfg.ensemble_size, cfg.critic_layer_norm),
        value=ValueNet(tuple(cfg.value_hidden_dims), cams, cfg.image_feature_dim, cfg.q_estimation.value_heads,
                       image_input, cfg.read_bc_memory),
        action_dim=action_dim,
    )


# ------------------------------------------------------------------------------------------------ state
@struct.dataclass
class AgentParams:
    """All parameters an actor or learner needs. `bc` and `value` are frozen during online RL, except for
    batch_online, which trains both (frozen_params)."""

    encoder: Any
    actor: Any
    critic: Any
    critic_target: Any
    encoder_target: Any
    value: Any
    value_stats: jax.Array  # [2]: V_phi(s) = mean + std * net(s); set from the MC returns before fitting
    normalizer: ObsNormalizer
    bc: Any  # a BCPolicy (pytree) or None
    log_temperature: jax.Array


@struct.dataclass
class SacState:
    """The learner's immutable state: parameters, one optimizer state per trained subtree, step counter."""

    params: AgentParams
    actor_opt: Any  # over policy_trained(): pi_RL, or pi_BC's network for an imitation policy (batch_online)
    critic_opt: Any  # over critic_trained(): (critic, encoder), and IQL's V for batch_online
    temperature_opt: Any
    step: jax.Array


class Optimizers(NamedTuple):
    actor: optax.GradientTransformation
    critic: optax.GradientTransformation
    temperature: optax.GradientTransformation


def make_optimizers(cfg: AgentConfig) -> Optimizers:
    return Optimizers(optax.adam(cfg.actor_lr), optax.adam(cfg.critic_lr), optax.adam(cfg.actor_lr))


def init_params(nets: Networks, cfg: AgentConfig, key: jax.Array, example_obs: Any,
                normalizer: ObsNormalizer | None = None, bc: Any = None) -> AgentParams:
    """Fresh parameters; `example_obs` is a batched observation (shapes only)."""
    k_enc, k_actor, k_critic, k_value = jax.random.split(key, 4)
    if normalizer is None:
        normalizer = bc.normalizer if bc is not None else ObsNormalizer.identity(example_obs["state"].shape[-1])
    obs = normalizer.normalize(example_obs)
    encoder = nets.encoder.init(k_enc, obs)
    features = nets.encoder.apply(encoder, obs)
    action = jnp.zeros((*features.shape[:-1], nets.action_dim), jnp.float32)
    critic = nets.critic.init(k_critic, features, action)
    return AgentParams(
        encoder=encoder, actor=nets.actor.init(k_actor, features), critic=critic, critic_target=critic,
        encoder_target=encoder, value=nets.value.init(k_value, obs),
        value_stats=jnp.asarray([0.0, 1.0], jnp.float32), normalizer=normalizer, bc=bc,
        log_temperature=jnp.asarray(jnp.log(cfg.init_temperature), jnp.float32),
    )


def critic_trained(cfg: AgentConfig, params: AgentParams) -> tuple:
    """What the critic optimizer trains: (critic, encoder), plus V (params.value) when the critic's objective is
    IQL's."""
    if cfg.rules.critic_objective == "iql":
        return params.critic, params.encoder, params.value
    return params.critic, params.encoder


def with_critic_trained(cfg: AgentConfig, params: AgentParams, trained: tuple) -> AgentParams:
    """`params` with critic_trained's subtrees replaced."""
    params = params.replace(critic=trained[0], encoder=trained[1])
    return params.replace(value=trained[2]) if cfg.rules.critic_objective == "iql" else params


def policy_trained(cfg: AgentConfig, params: AgentParams) -> Any:
    """What the actor optimizer trains: pi_RL, or pi_BC's network parameters (imitation)."""
    return params.bc.params if cfg.rules.policy_objective == "imitation" else params.actor


def frozen_params(cfg: AgentConfig) -> tuple[str, ...]:
    """The AgentParams fields an update reads and never changes (phase 1 fitted them, or they came with pi_BC):
    FROZEN_PARAMS less what this algorithm trains (batch_online: V and pi_BC)."""
    trained = {"iql": ("value",), "td": ()}[cfg.rules.critic_objective]
    trained += ("bc",) if cfg.rules.policy_objective == "imitation" else ()
    return tuple(n for n in FROZEN_PARAMS if n not in trained)


def init_state(params: AgentParams, opts: Optimizers, cfg: AgentConfig) -> SacState:
    """Optimizer states for exactly the subtrees each optimizer trains.

    Every leaf becomes a device array of its own first, so the update sees the same argument types on every call
    and a donating update never gets one buffer twice (fresh targets are their networks' very arrays).
    """
    seen: set[int] = set()

    def own(x):
        x = jnp.asarray(x)
        if id(x) in seen:
            x = jnp.array(x, copy=True)
        seen.add(id(x))
        return x

    params = jax.tree_util.tree_map(own, params)
    return SacState(
        params=params,
        actor_opt=opts.actor.init(policy_trained(cfg, params)),
        critic_opt=opts.critic.init(critic_trained(cfg, params)),
        temperature_opt=opts.temperature.init(params.log_temperature),
        step=jnp.zeros((), jnp.int32),
    )


# ------------------------------------------------------------------------------------------------ functions
def frozen_encoder(nets: Networks) -> bool:
    """The agent reads images through pi_BC's frozen encoder (agent.image_encoder: frozen_bc, with cameras)."""
    return nets.encoder.image_input == BC_FEATURES and bool(nets.encoder.camera_names)


def observe(nets: Networks, bc: Any, obs: Any) -> Any:
    """The observation as the agent's networks read it: with the frozen encoder, its frozen-encoder view (pi_BC's
    features of its images, computed here once for every network that reads it); otherwise `obs` itself. Replay
    stores frames in this view, so the update gets them ready (docs/design.md#pixels-and-the-frozen-encoder)."""
    return bc.frozen_view(obs) if frozen_encoder(nets) else obs


def features(nets: Networks, params: AgentParams, obs: Any, target: bool = False) -> jax.Array:
    """Encoder features of a normalised observation (target encoder for bootstraps)."""
    enc = params.encoder_target if target else params.encoder
    return nets.encoder.apply(enc, params.normalizer.normalize(obs))


def actor_dist(nets: Networks, params: AgentParams, obs: Any) -> TanhGaussian:
    """pi_RL(.|obs), reading the shared encoder through stop_gradient."""
    return nets.actor.apply(params.actor, jax.lax.stop_gradient(features(nets, params, obs)))


def critic_values(nets: Networks, params: AgentParams, obs: Any, action: jax.Array, target: bool = False
                  ) -> jax.Array:
    """All heads of Q_RL (or of the target critic): [E, ...]."""
    feats = features(nets, params, obs, target)
    return nets.critic.apply(params.critic_target if target else params.critic, feats, action)


def value(nets: Networks, params: AgentParams, obs: Any) -> jax.Array:
    """V_phi(obs) -> [...]: the mean of its heads (each regresses standardised returns; see AgentParams.value_stats)."""
    raw = jnp.mean(nets.value.apply(params.value, params.normalizer.normalize(obs)), axis=0)
    return params.value_stats[0] + params.value_stats[1] * raw


def bc_dist(params: AgentParams, obs: Any):
    """pi_BC(.|obs), a recurrent pi_BC's memory read from obs[BC_CARRY]; frozen but for batch_online, which retrains
    it by imitation."""
    return params.bc.at(obs)


def subsample_min(key: jax.Array, q_heads: jax.Array, subsample: int) -> jax.Array:
    """min over a random subset (without replacement) of `subsample` of the E heads: [E, B] -> [B]."""
    ensemble = q_heads.shape[0]
    if subsample >= ensemble:
        return jnp.min(q_heads, axis=0)
    heads = jax.random.choice(key, ensemble, (subsample,), replace=False)
    return jnp.min(q_heads[heads], axis=0)


# ------------------------------------------------------------------------------------------------ losses
# pi_RL scores BC actions for its NLL inside +-BC_NLL_LIMIT (as the authors' release does, 0.99). A BC action
# clipped to the box edge (pick_cube: the gripper in ~half of the sampled BC actions) otherwise sits at
# atanh(1 - 1e-6) = 7.25 pre-tanh, where its NLL is hundreds to thousands of nats and swamps the Q term.
BC_NLL_LIMIT = 0.99


def bc_nll_target(a_bc: jax.Array) -> jax.Array:
    """The BC action pi_RL's NLL scores: clipped to +-BC_NLL_LIMIT (see above)."""
    return jnp.clip(a_bc, -BC_NLL_LIMIT, BC_NLL_LIMIT)


class CriticMetrics(NamedTuple):
    critic_loss: jax.Array  # the TD part
    q_mean: jax.Array
    target_mean: jax.Array
    conservative_term: jax.Array  # calibrated_conservative_term, unweighted (0 when calibrated_conservatism is 0)
    q_head_std: jax.Array  # std over critic heads at the batch's (data) actions
    ntk_term: jax.Array  # ntk_regulariser, unweighted (0 when ntk_weight is 0)
    cql_term: jax.Array  # weighted_cql_term, unweighted (0 when cql_weight is 0)
    value_loss: jax.Array  # IQL's expectile loss of V (0 unless batch_online)


class Regularisers(NamedTuple):
    """What Simplified Q's critic terms need beyond the batch, drawn outside the gradient: a uniform action per
    state, and pi_RL's action at an independently drawn state (the batch's states rolled by one row)."""

    uniform_actions: jax.Array  # [B, A]
    other_policy_actions: jax.Array  # [B, A]: a ~ pi_RL(s2), s2 = the batch's obs rolled by one row


class ActorMetrics(NamedTuple):
    actor_loss: jax.Array
    q_term: jax.Array
    bc_nll: jax.Array
    entropy: jax.Array
    temperature: jax.Array
    q_head_std: jax.Array  # std over critic heads at pi_RL's actions (against CriticMetrics' at the data actions)


class UpdateMetrics(NamedTuple):
    critic: CriticMetrics
    actor: ActorMetrics


def td_target(nets: Networks, cfg: AgentConfig, params: AgentParams, batch: Batch, key: jax.Array) -> jax.Array:
    """r' + discount * min_subset Q_target(s', a') (minus the entropy term when enabled); no gradient.

    `batch.discounts` already is gamma^n * (1 - terminated): truncation bootstraps, termination does not.
    With bootstrap max_rl_bc (IBRL's rule, the default for ibrl) it takes the better of a'_rl and a'_bc (pi_BC's
    mode) under the target critic. Without a target network (target_network: false) the live critic bootstraps,
    through stop_gradient (a semi-gradient). With IQL's objective (batch_online) it is r' + discount * V(s').
    """
    if cfg.rules.critic_objective == "iql":
        return jax.lax.stop_gradient(batch.rewards + batch.discounts * value(nets, params, batch.next_obs))
    k_action, k_heads = jax.random.split(key)
    dist = actor_dist(nets, params, batch.next_obs)
    next_action, next_log_prob = dist.sample_and_log_prob(k_action)
    target = cfg.target_network
    next_q = subsample_min(k_heads, critic_values(nets, params, batch.next_obs, next_action, target=target),
                           cfg.critic_subsample)
    if cfg.bootstrap == "max_rl_bc":  # resolved per algorithm when the config is built
        bc_action = jnp.clip(bc_dist(params, batch.next_obs).mode(), -1.0, 1.0)
        bc_q = subsample_min(k_heads, critic_values(nets, params, batch.next_obs, bc_action, target=target),
                             cfg.critic_subsample)
        next_q = jnp.maximum(next_q, bc_q)
    if cfg.entropy:
        next_q = next_q - jnp.exp(params.log_temperature) * next_log_prob
    return jax.lax.stop_gradient(batch.rewards + batch.discounts * next_q)


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    """IQL's asymmetric square |tau - 1(diff < 0)| * diff^2, elementwise (diff = Q - V): minimised over V by the
    tau-expectile of Q."""
    weight = jnp.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff ** 2


def ntk_regulariser(phi: jax.Array, phi_other: jax.Array) -> jax.Array:
    """Simplified Q's regulariser: the mean over heads and rows of (Phi(s, a_u) . Phi(s2, a2))^2, from the
    penultimate features [E, B, H] at the two pairs."""
    return jnp.mean(jnp.sum(phi * phi_other, axis=-1) ** 2)


def weighted_cql_term(q_uniform: jax.Array, q_data: jax.Array, uniform_actions: jax.Array, actions: jax.Array
                      ) -> jax.Array:
    """Simplified Q's CQL term from heads [E, B]: mean (1 - exp(-|a - a_u|^2)) Q(s, a_u) - mean Q(s, a): a uniform
    action is pushed down as far as it lies from the data's, and the data's action up."""
    weight = 1.0 - jnp.exp(-jnp.sum((actions - uniform_actions) ** 2, axis=-1))
    return jnp.mean(weight[None] * q_uniform) - jnp.mean(q_data)


def critic_loss(nets: Networks, cfg: AgentConfig, params: AgentParams, trained: tuple, batch: Batch,
                target: jax.Array, calibration: tuple | None = None, regularisers: Regularisers | None = None,
                value_target: jax.Array | None = None) -> tuple[jax.Array, CriticMetrics]:
    """Mean over heads and batch of (Q_i(s, a) - target)^2, plus
    - w * calibrated_conservative_term when `calibration` = (w, actions a ~ pi_RL(s), V_phi(s)) at the batch's first
      k states (k = the rows given; the term is then a mean over those);
    - ntk_weight * ntk_regulariser and cql_weight * weighted_cql_term from `regularisers` (Simplified Q);
    - IQL's expectile loss of V(s) against `value_target` (min-subset Q_target(s, a)) when V is trained here.
    `trained` is critic_trained(cfg, params). The metrics report the parts apart."""
    params = with_critic_trained(cfg, params, trained)
    feats = nets.encoder.apply(params.encoder, params.normalizer.normalize(batch.obs))
    zero = jnp.zeros(())
    term = ntk = cql = value_loss = zero
    if calibration is None:
        q = nets.critic.apply(params.critic, feats, batch.actions)
    else:
        # One critic pass over the data actions and, stacked under them, pi_RL's actions at the first k states.
        weight, policy_actions, reference = calibration
        n, k = batch.actions.shape[0], policy_actions.shape[0]
        q_all = nets.critic.apply(params.critic, jnp.concatenate([feats, feats[:k]]),
                                  jnp.concatenate([batch.actions, policy_actions]))
        q = q_all[:, :n]
        term = calibrated_conservative_term(q_all[:, n:], q[:, :k], reference)
    td = jnp.mean((q - target[None]) ** 2)
    loss = td if calibration is None else td + weight * term
    if regularisers is not None:
        q_uniform, phi_uniform = critic_heads_and_features(nets.critic, params.critic, feats,
                                                           regularisers.uniform_actions)
        if cfg.ntk_weight > 0:
            _, phi_other = critic_heads_and_features(nets.critic, params.critic, jnp.roll(feats, 1, axis=0),
                                                     regularisers.other_policy_actions)
            ntk = ntk_regulariser(phi_uniform, phi_other)
            loss = loss + cfg.ntk_weight * ntk
        if cfg.cql_weight > 0:
            cql = weighted_cql_term(q_uniform, q, regularisers.uniform_actions, batch.actions)
            loss = loss + cfg.cql_weight * cql
    if value_target is not None:
        value_loss = jnp.mean(expectile_loss(value_target - value(nets, params, batch.obs),
                                             cfg.batch_online.expectile))
        loss = loss + value_loss
    return loss, CriticMetrics(td, jnp.mean(q), jnp.mean(target), term, jnp.mean(jnp.std(q, axis=0)), ntk, cql,
                               value_loss)


def decaying_weight(start: float, final: float, decay_updates: int, step: jax.Array) -> jax.Array:
    """`start` at update 0, falling linearly to `final` over `decay_updates` and staying there (0: constant)."""
    if decay_updates == 0:
        return jnp.asarray(start, jnp.float32)
    return optax.linear_schedule(start, final, decay_updates)(step)


def conservatism_weight(cfg: AgentConfig, step: jax.Array) -> jax.Array:
    """calibrated_conservatism at update `step`."""
    return decaying_weight(cfg.calibrated_conservatism, cfg.calibrated_conservatism_final,
                           cfg.calibrated_conservatism_decay_updates, step)


def bc_weight_at(cfg: AgentConfig, step: jax.Array) -> jax.Array:
    """w of the actor loss at update `step` (cfg.bc_weight is resolved when the config is built)."""
    return decaying_weight(cfg.bc_weight, cfg.bc_weight_final, cfg.bc_weight_decay_updates, step)


def calibrated_conservative_term(q_policy: jax.Array, q_data: jax.Array, reference: jax.Array) -> jax.Array:
    """Cal-QL's regulariser with V_phi as the calibration, from the heads [E, B] at a ~ pi_RL(s) and at the data
    actions: mean of max(Q_i(s, a_pi), V_phi(s)) - Q_i(s, a_data). It lowers Q_RL at pi_RL's actions only where it
    rates them above what the BC rollouts measured, and raises it at the actions that were executed."""
    return jnp.mean(jnp.maximum(q_policy, reference[None]) - q_data)


def actor_loss(nets: Networks, cfg: AgentConfig, params: AgentParams, actor: Any, batch: Batch, key: jax.Array,
               bc_weight: jax.Array | float | None = None) -> tuple[jax.Array, ActorMetrics]:
    """(1 - w)(-Q(s, a~pi_RL)) + w NLL_piRL(a_bc|s) [+ temperature * log pi_RL(a|s)]; Q = mean (or min) of heads;
    w is `bc_weight` (the decayed value at this update), cfg.bc_weight if not given."""
    w = cfg.bc_weight if bc_weight is None else bc_weight
    feats = jax.lax.stop_gradient(features(nets, params, batch.obs))
    dist = nets.actor.apply(actor, feats)
    action, log_prob = dist.sample_and_log_prob(key)
    q_heads = nets.critic.apply(params.critic, feats, action)
    q = jnp.min(q_heads, axis=0) if cfg.actor_q == "min" else jnp.mean(q_heads, axis=0)
    q_term = -jnp.mean(q)
    bc_nll = -jnp.mean(dist.log_prob(bc_nll_target(batch.a_bc)))
    temperature = jnp.exp(params.log_temperature)
    loss = (1.0 - w) * q_term + w * bc_nll
    if cfg.entropy:
        loss = loss + temperature * jnp.mean(log_prob)
    q_head_std = jnp.mean(jnp.std(q_heads, axis=0))
    return loss, ActorMetrics(loss, q_term, bc_nll, -jnp.mean(log_prob), temperature, q_head_std)


def imitation_loss(params: AgentParams, bc_params: Any, batch: Batch, key: jax.Array
                   ) -> tuple[jax.Array, ActorMetrics]:
    """batch_online's policy objective: the NLL of the stored actions (demos and autonomous alike) under pi_BC's
    network with `bc_params`; the metrics put it where the SAC actor's are (bc_nll, entropy; no Q term)."""
    bc = params.bc.replace(params=bc_params)
    dist, _ = bc.distribution(batch.obs)
    nll = -jnp.mean(dist.log_prob(batch.actions))
    zero = jnp.zeros(())
    return nll, ActorMetrics(nll, zero, nll, jnp.mean(dist.entropy(key)), zero, zero)


def without_encoder_grads(grads: Any) -> Any:
    """pi_BC's gradients with its image encoder's set to zero: its features are what replay stored for each frame
    (the frozen-encoder view), so they must not move (Adam then leaves those weights exactly as they are)."""
    if "encoder" not in grads.get("params", {}):
        return grads
    inner = dict(grads["params"], encoder=jax.tree_util.tree_map(jnp.zeros_like, grads["params"]["encoder"]))
    return {**grads, "params": inner}


def temperature_loss(log_temperature: jax.Array, entropy: jax.Array, target_entropy: float) -> jax.Array:
    """Auto temperature: grows when the entropy is below target, shrinks above."""
    return jnp.exp(log_temperature) * (entropy - target_entropy)


# ------------------------------------------------------------------------------------------------ updates
def polyak(target: Any, online: Any, tau: float) -> Any:
    return jax.tree_util.tree_map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


def critic_step(nets: Networks, cfg: AgentConfig, opts: Optimizers, state: SacState, batch: Batch,
                key: jax.Array) -> tuple[SacState, CriticMetrics]:
    """One critic (+ encoder, + IQL's V) gradient step and a Polyak update of the targets (none without a target
    network: nothing reads them)."""
    p = state.params
    if cfg.image_shift_pad > 0 and nets.encoder.camera_names and not frozen_encoder(nets):
        # DrQ: the learned encoder sees each minibatch's images shifted at random (obs and next_obs apart)
        key, k_obs, k_next = jax.random.split(key, 3)
        batch = batch._replace(obs=augment_observation(k_obs, batch.obs, cfg.image_shift_pad),
                               next_obs=augment_observation(k_next, batch.next_obs, cfg.image_shift_pad))
    calibration = regularisers = value_target = None
    if cfg.calibrated_conservatism > 0:  # static: without it the key stream and the loss are as before
        key, k_pi = jax.random.split(key)
        rows = batch.actions.shape[0]
        k = max(1, round(cfg.calibrated_fraction * rows))  # static: a shape
        obs = batch.obs if k == rows else jax.tree_util.tree_map(lambda x: x[:k], batch.obs)
        calibration = (conservatism_weight(cfg, state.step),
                       jax.lax.stop_gradient(actor_dist(nets, p, obs).sample(k_pi)),
                       jax.lax.stop_gradient(value(nets, p, obs)))
    if cfg.ntk_weight > 0 or cfg.cql_weight > 0:  # static, as above
        key, k_uniform, k_pi = jax.random.split(key, 3)
        other = jax.tree_util.tree_map(lambda x: jnp.roll(x, 1, axis=0), batch.obs)
        regularisers = Regularisers(
            jax.random.uniform(k_uniform, batch.actions.shape, jnp.float32, -1.0, 1.0),
            jax.lax.stop_gradient(actor_dist(nets, p, other).sample(k_pi)))
    if cfg.rules.critic_objective == "iql":
        key, k_heads = jax.random.split(key)
        value_target = jax.lax.stop_gradient(subsample_min(
            k_heads, critic_values(nets, p, batch.obs, batch.actions, target=True), cfg.critic_subsample))
    target = td_target(nets, cfg, p, batch, key)
    trained = critic_trained(cfg, p)
    grads, metrics = jax.grad(critic_loss, argnums=3, has_aux=True)(nets, cfg, p, trained, batch, target,
                                                                    calibration, regularisers, value_target)
    updates, critic_opt = opts.critic.update(grads, state.critic_opt, trained)
    p = with_critic_trained(cfg, p, optax.apply_updates(trained, updates))
    if cfg.target_network:
        p = p.replace(critic_target=polyak(p.critic_target, p.critic, cfg.tau),
                      encoder_target=polyak(p.encoder_target, p.encoder, cfg.tau))
    return state.replace(params=p, critic_opt=critic_opt), metrics


def actor_step(nets: Networks, cfg: AgentConfig, opts: Optimizers, state: SacState, batch: Batch,
               key: jax.Array) -> tuple[SacState, ActorMetrics]:
    """One actor gradient step (and one temperature step when the entropy term is on); with an imitation policy
    (batch_online), one NLL step of pi_BC's network on the minibatch's actions instead."""
    p = state.params
    if cfg.rules.policy_objective == "imitation":
        grads, metrics = jax.grad(lambda b: imitation_loss(p, b, batch, key), has_aux=True)(p.bc.params)
        updates, actor_opt = opts.actor.update(without_encoder_grads(grads), state.actor_opt, p.bc.params)
        p = p.replace(bc=p.bc.replace(params=optax.apply_updates(p.bc.params, updates)))
        return state.replace(params=p, actor_opt=actor_opt), metrics
    w = bc_weight_at(cfg, state.step)
    grads, metrics = jax.grad(lambda a: actor_loss(nets, cfg, p, a, batch, key, w), has_aux=True)(p.actor)
    updates, actor_opt = opts.actor.update(grads, state.actor_opt, p.actor)
    p = p.replace(actor=optax.apply_updates(p.actor, updates))
    temperature_opt = state.temperature_opt
    if cfg.entropy:
        target_entropy = cfg.target_entropy if cfg.target_entropy is not None else -nets.action_dim / 2.0
        t_grad = jax.grad(temperature_loss)(p.log_temperature, metrics.entropy, target_entropy)
        t_updates, temperature_opt = opts.temperature.update(t_grad, state.temperature_opt, p.log_temperature)
        p = p.replace(log_temperature=optax.apply_updates(p.log_temperature, t_updates))
    return state.replace(params=p, actor_opt=actor_opt, temperature_opt=temperature_opt), metrics


def update_step(nets: Networks, cfg: AgentConfig, opts: Optimizers, state: SacState, batches: Batch,
                key: jax.Array) -> tuple[SacState, UpdateMetrics]:
    """lax.scan over the [utd] critic minibatches in cfg.actor_utd equal groups, each group followed by one actor
    update on its last minibatch (un-jitted). Metrics are means over the steps of each kind."""
    utd = jax.tree_util.tree_leaves(batches)[0].shape[0]
    groups = cfg.actor_utd
    if utd % groups:  # AgentConfig.validate says this first; here for batches stacked to another length
        raise ValueError(f"actor_utd={groups} must divide the {utd} stacked minibatches")
    k_critic, k_actor = jax.random.split(key)
    # Split as with a single actor step, so actor_utd 1 keeps the key stream (and the results) it always had.
    actor_keys = k_actor[None] if groups == 1 else jax.random.split(k_actor, groups)
    in_groups = lambda x: x.reshape((groups, utd // groups) + x.shape[1:])

    def critic_body(s, xs):
        batch, k = xs
        return critic_step(nets, cfg, opts, s, batch, k)

    def group_body(s, xs):
        group_batches, critic_keys, actor_key = xs
        s, critic_metrics = jax.lax.scan(critic_body, s, (group_batches, critic_keys))
        last = jax.tree_util.tree_map(lambda x: x[-1], group_batches)
        s, actor_metrics = actor_step(nets, cfg, opts, s, last, actor_key)
        return s, (critic_metrics, actor_metrics)

    state, (critic_metrics, actor_metrics) = jax.lax.scan(
        group_body, state, (jax.tree_util.tree_map(in_groups, batches),
                            in_groups(jax.random.split(k_critic, utd)), actor_keys))
    state = state.replace(step=state.step + 1)
    mean = lambda tree: jax.tree_util.tree_map(jnp.mean, tree)
    return state, UpdateMetrics(mean(critic_metrics), mean(actor_metrics))


# The params an update reads and never changes (phase 1 fitted them, or they came with pi_BC); frozen_params(cfg)
# leaves out what an algorithm does train.
FROZEN_PARAMS = ("value", "value_stats", "normalizer", "bc")


def make_update(nets: Networks, cfg: AgentConfig, opts: Optimizers, donate: bool = False
                ) -> Callable[[SacState, Batch, jax.Array], tuple[SacState, UpdateMetrics]]:
    """The jitted `(state, batches[utd], key) -> (state, metrics)`.

    `donate`: the update writes the parts it replaces (trained params, their targets, optimiser states, step) into
    the old state's buffers instead of fresh ones, so the caller's old state is consumed and must not be read
    again. The frozen params (frozen_params(cfg)) go in apart and are never donated: the gate and Q-Estimation read them.
    (A buffer something else still views, e.g. a numpy array from device_get on the CPU, is copied, not donated.)
    """
    step = lambda s, b, k: update_step(nets, cfg, opts, s, b, k)
    if not donate:
        return jax.jit(step)
    frozen_names = frozen_params(cfg)
    without_frozen = lambda state: state.replace(params=state.params.replace(**{n: None for n in frozen_names}))

    def live_step(live: SacState, frozen: dict, batches: Batch, key: jax.Array):
        state, metrics = step(live.replace(params=live.params.replace(**frozen)), batches, key)
        return without_frozen(state), metrics

    jitted = jax.jit(live_step, donate_argnums=0)

    def update(state: SacState, batches: Batch, key: jax.Array) -> tuple[SacState, UpdateMetrics]:
        frozen = {n: getattr(state.params, n) for n in frozen_names}
        live, metrics = jitted(without_frozen(state), frozen, batches, key)
        return live.replace(params=live.params.replace(**frozen)), metrics

    return update
