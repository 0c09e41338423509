"""Q-Estimation (docs/design.md#q-estimation): the BC policy's Q-function from a few of its own rollouts.

    qe = QEstimation(nets, cfg)
    params, report = qe.fit(params, rollout_episodes, key)    # V_phi fitted and frozen, Q_RL and pi_RL initialised

    Qhat_BC(s, a) = V_phi(s) + alpha * (max(log pi_BC(a|s), floor) + H[pi_BC(.|s)])

V_phi regresses the Monte-Carlo returns of the shaped rewards r' = scale * r + bias; a failed (truncated)
episode gets the failure convention r'_neg / (1 - gamma) at every step (`infinite_horizon`) or its plain
discounted sum (`discounted`). Since E_{a~pi_BC}[log pi_BC(a|s)] = -H, E_{a~pi_BC}[Qhat_BC(s, a)] = V_phi(s).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from q2rl.core.agent_config import AgentConfig, QEstimationConfig
from q2rl.core.replay import Episode
from q2rl.core.sac import AgentParams, Networks, actor_dist, bc_dist, bc_nll_target, features, value


# ------------------------------------------------------------------------------------------------ math
def shape_rewards(rewards: np.ndarray, scale: float, bias: float) -> np.ndarray:
    """r' = scale * r + bias."""
    return scale * np.asarray(rewards, np.float64) + bias


def mc_returns(rewards: np.ndarray, success: bool, discount: float, scale: float = 5.0, bias: float = -1.0,
               failure_return: str = "infinite_horizon") -> np.ndarray:
    """Per-step Monte-Carlo returns G_t = sum_k gamma^k r'_{t+k} of one episode (float64 [L]).

    A failed episode under `infinite_horizon` returns r'_neg / (1 - gamma) at every step, r'_neg = bias
    (the shaped reward of a step without success), as if failure went on forever.
    """
    shaped = shape_rewards(rewards, scale, bias)
    if not success and failure_return == "infinite_horizon":
        return np.full(len(shaped), bias / (1.0 - discount))
    if failure_return not in ("infinite_horizon", "discounted"):
        raise ValueError(f"failure_return {failure_return!r}: use 'discounted' or 'infinite_horizon'")
    returns = np.zeros(len(shaped))
    running = 0.0
    for t in range(len(shaped) - 1, -1, -1):
        running = shaped[t] + discount * running
        returns[t] = running
    return returns


def bc_log_prior(log_prob: jax.Array, alpha: float, log_prob_floor: float) -> jax.Array:
    """alpha * max(log pi_BC(a|s), floor): the action-dependent part of Qhat_BC."""
    return alpha * jnp.maximum(log_prob, log_prob_floor)


def qhat_bc_from_terms(v: jax.Array, log_prob: jax.Array, entropy: jax.Array, alpha: float,
                       log_prob_floor: float) -> jax.Array:
    """Qhat_BC = V + alpha * (max(log pi_BC(a|s), floor) + H) (paper Eq. 6, docs/design.md#estimated-bc-q-function)."""
    return v + bc_log_prior(log_prob, alpha, log_prob_floor) + alpha * entropy


def qhat_bc(nets: Networks, params: AgentParams, obs: Any, action: jax.Array, cfg: QEstimationConfig,
            key: jax.Array | None = None) -> jax.Array:
    """Qhat_BC(obs, action) with the frozen V_phi and pi_BC; log-prob and entropy from one distribution."""
    dist = bc_dist(params, obs)
    return qhat_bc_from_terms(value(nets, params, obs), dist.log_prob(action), dist.entropy(key), cfg.alpha,
                              cfg.log_prob_floor)


# ------------------------------------------------------------------------------------------------ data
class RolloutData(NamedTuple):
    """Flattened Q-Estimation rollouts: observations, executed (BC) actions, MC returns."""

    obs: dict
    actions: np.ndarray
    returns: np.ndarray


def rollout_data(episodes: Sequence[Episode], cfg: AgentConfig) -> RolloutData:
    """Stack the steps of `episodes` with their MC returns (the last next-observation frame is dropped)."""
    if not episodes:
        raise ValueError("Q-Estimation needs at least one rollout episode")
    obs_parts, actions, returns = [], [], []
    for ep in episodes:
        n = len(ep)
        obs_parts.append(jax.tree_util.tree_map(lambda x: x[:n], ep.obs))
        actions.append(ep.actions)
        returns.append(mc_returns(ep.rewards, ep.success, cfg.discount, cfg.reward_scale, cfg.reward_bias,
                                  cfg.q_estimation.failure_return))
    obs = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *obs_parts)
    return RolloutData(obs, np.concatenate(actions).astype(np.float32), np.concatenate(returns).astype(np.float32))


# ------------------------------------------------------------------------------------------------ fitting
def regress(loss_fn: Callable[[Any, Any, jax.Array], jax.Array], init: Any, data: Any, steps: int, batch_size: int,
            learning_rate: float, key: jax.Array, chunk: int = 500) -> tuple[Any, np.ndarray]:
    """Adam on `loss_fn(params, minibatch, key)` for `steps` steps of random minibatches of `data` (a pytree of
    [N, ...] arrays). Runs as jitted lax.scan chunks; returns the params and the per-chunk mean losses."""
    if steps <= 0:
        return init, np.zeros(0)
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    tx = optax.adam(learning_rate)
    data = jax.tree_util.tree_map(jnp.asarray, data)

    def run(params, opt_state, data, key, num):
        def body(carry, k):
            params, opt_state = carry
            k_idx, k_loss = jax.random.split(k)
            idx = jax.random.randint(k_idx, (batch_size,), 0, n)
            batch = jax.tree_util.tree_map(lambda x: x[idx], data)
            loss, grads = jax.value_and_grad(loss_fn)(params, batch, k_loss)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jax.random.split(key, num))
        return params, opt_state, jnp.mean(losses)

    run_jit = jax.jit(run, static_argnums=4)  # data is an argument, not a baked-in constant
    params, opt_state, losses = init, tx.init(init), []
    done = 0
    while done < steps:
        num = min(chunk, steps - done)
        key, sub = jax.random.split(key)
        params, opt_state, loss = run_jit(params, opt_state, data, sub, num)
        losses.append(float(loss))
        done += num
    return params, np.asarray(losses)


class QEstimationReport(NamedTuple):
    """Losses of the three regressions (first and last chunk means) and the data they saw."""

    num_steps: int
    num_episodes: int
    success_rate: float
    mean_return: float
    value_loss: tuple[float, float]
    critic_loss: tuple[float, float]
    actor_nll: tuple[float, float]


def _ends(losses: np.ndarray) -> tuple[float, float]:
    return (float(losses[0]), float(losses[-1])) if len(losses) else (float("nan"), float("nan"))


class QEstimation:
    """Phase 1 of Q2RL: fit V_phi, regress Q_RL onto Qhat_BC, pre-train pi_RL by NLL on the rollouts."""

    def __init__(self, nets: Networks, cfg: AgentConfig):
        self.nets, self.cfg, self.qcfg = nets, cfg, cfg.q_estimation

    def fit_value(self, params: AgentParams, data: RolloutData, key: jax.Array) -> tuple[AgentParams, np.ndarray]:
        """V_phi <- argmin MSE(V_phi(s), G), on returns standardised by their mean and std (losses in those units)."""
        nets, norm = self.nets, params.normalizer
        stats = np.asarray([data.returns.mean(), max(float(data.returns.std()), 1e-3)], np.float32)

        def loss(v_params, batch, key):
            obs, g = batch
            return jnp.mean((nets.value.apply(v_params, norm.normalize(obs)) - (g - stats[0]) / stats[1]) ** 2)

        v, losses = regress(loss, params.value, (data.obs, data.returns), self.qcfg.value_updates,
                            self.qcfg.batch_size, self.qcfg.learning_rate, key)
        return params.replace(value=v, value_stats=jnp.asarray(stats)), losses

    def critic_targets(self, params: AgentParams, data: RolloutData, key: jax.Array, chunk: int = 1024
                       ) -> np.ndarray:
        """Qhat_BC at the rollout's (s, a) pairs, with the fitted V_phi."""
        fn = jax.jit(lambda o, a, k: qhat_bc(self.nets, params, o, a, self.qcfg, k))
        n = len(data.actions)
        out = []
        for start in range(0, n, chunk):
            key, sub = jax.random.split(key)
            obs = jax.tree_util.tree_map(lambda x: x[start:start + chunk], data.obs)
            out.append(np.asarray(fn(obs, data.actions[start:start + chunk], sub)))
        return np.concatenate(out)

    def fit_critic(self, params: AgentParams, data: RolloutData, targets: np.ndarray, key: jax.Array
                   ) -> tuple[AgentParams, np.ndarray]:
        """Every head of Q_RL (and the shared encoder) regresses onto Qhat_BC; targets copy the result.

        Support: the rollout's (s, a) with precomputed targets, and with `critic_support=data_policy_uniform`
        also a ~ pi_RL(s) and a ~ U[-1, 1]^d at the same states, scored by Qhat_BC on the fly.
        """
        nets, qcfg = self.nets, self.qcfg
        norm = params.normalizer
        wide = qcfg.critic_support == "data_policy_uniform"

        def loss(critic_and_encoder, batch, key):
            critic, encoder = critic_and_encoder
            obs, a, q = batch
            feats = nets.encoder.apply(encoder, norm.normalize(obs))
            err = jnp.mean((nets.critic.apply(critic, feats, a) - q[None]) ** 2)
            if not wide:
                return err
            k_pi, k_uniform, k_h1, k_h2 = jax.random.split(key, 4)
            a_pi = jax.lax.stop_gradient(actor_dist(nets, params, obs).sample(k_pi))
            a_uniform = jax.random.uniform(k_uniform, a.shape, minval=-1.0, maxval=1.0)
            for extra, k_h in ((a_pi, k_h1), (a_uniform, k_h2)):
                target = jax.lax.stop_gradient(qhat_bc(nets, params, obs, extra, qcfg, k_h))
                err = err + jnp.mean((nets.critic.apply(critic, feats, extra) - target[None]) ** 2)
            return err / 3.0

        (critic, encoder), losses = regress(loss, (params.critic, params.encoder),
                                            (data.obs, data.actions, targets), qcfg.critic_updates,
                                            qcfg.batch_size, qcfg.learning_rate, key)
        return params.replace(critic=critic, encoder=encoder, critic_target=critic, encoder_target=encoder), losses

    def fit_actor(self, params: AgentParams, data: RolloutData, key: jax.Array) -> tuple[AgentParams, np.ndarray]:
        """pi_RL <- argmax E_{a~pi_BC(s)} log pi_RL(a|s) at the rollout states.

        Every minibatch draws fresh BC actions: fitting the one executed action per state instead memorises
        it and leaves pi_RL far narrower than pi_BC; then E_{a~pi_RL}[log pi_BC(a|s) + H] > 0, and the TD
        backup from the Qhat_BC-initialised critic integrates that bonus over the horizon (Q_RL drifts up).
        """
        nets = self.nets

        def loss(actor, obs, key):
            feats = jax.lax.stop_gradient(features(nets, params, obs))
            bc_actions = bc_nll_target(bc_dist(params, obs).sample(key))
            return -jnp.mean(nets.actor.apply(actor, feats).log_prob(jax.lax.stop_gradient(bc_actions)))

        actor, losses = regress(loss, params.actor, data.obs, self.qcfg.actor_updates, self.qcfg.batch_size,
                                self.qcfg.actor_learning_rate, key)
        return params.replace(actor=actor), losses

    def fit(self, params: AgentParams, episodes: Sequence[Episode], key: jax.Array,
            init_critic: bool = True) -> tuple[AgentParams, QEstimationReport]:
        """All of phase 1 on the rollout `episodes`; `init_critic=False` is the no-Q-init ablation."""
        if params.bc is None:
            raise ValueError("Q-Estimation needs the BC policy in params.bc")
        data = rollout_data(episodes, self.cfg)
        k_value, k_targets, k_critic, k_actor = jax.random.split(key, 4)
        params, value_losses = self.fit_value(params, data, k_value)
        actor_losses = np.zeros(0)
        if self.qcfg.init_actor == "bc":  # before the critic: its regression support includes pi_RL samples
            params, actor_losses = self.fit_actor(params, data, k_actor)
        critic_losses = np.zeros(0)
        if init_critic:
            targets = self.critic_targets(params, data, k_targets)
            params, critic_losses = self.fit_critic(params, data, targets, k_critic)
        report = QEstimationReport(
            num_steps=len(data.actions), num_episodes=len(episodes),
            success_rate=float(np.mean([ep.success for ep in episodes])), mean_return=float(np.mean(data.returns)),
            value_loss=_ends(value_losses), critic_loss=_ends(critic_losses), actor_nll=_ends(actor_losses))
        return params, report
