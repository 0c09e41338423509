"""Q-Estimation (docs/design.md#q-estimation): the BC policy's Q-function from a few of its own rollouts.

    qe = QEstimation(nets, cfg)
    params, report = qe.fit(params, rollout_episodes, key)    # V_phi fitted and frozen, Q_RL and pi_RL initialised
    fit = qe.start(params, rollout_episodes, key)              # the same in resumable pieces: fit.advance() ...

    Qhat_BC(s, a) = V_phi(s) + alpha * (max(log pi_BC(a|s), floor) + H[pi_BC(.|s)])

V_phi regresses the Monte-Carlo returns of the shaped rewards r' = scale * r + bias; a failed (truncated)
episode gets the failure convention r'_neg / (1 - gamma) at every step (`infinite_horizon`) or its plain
discounted sum (`discounted`). Since E_{a~pi_BC}[log pi_BC(a|s)] = -H, E_{a~pi_BC}[Qhat_BC(s, a)] = V_phi(s).
"""

from __future__ import annotations

import itertools
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
    """Flattened Q-Estimation rollouts: observations, executed (BC) actions, MC returns, and the index (in the
    episodes given) of the episode each row came from."""

    obs: dict
    actions: np.ndarray
    returns: np.ndarray
    episode: np.ndarray


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
    episode = np.concatenate([np.full(len(ep), i, np.int32) for i, ep in enumerate(episodes)])
    return RolloutData(obs, np.concatenate(actions).astype(np.float32), np.concatenate(returns).astype(np.float32),
                       episode)


def bootstrap_weights(num_episodes: int, heads: int, key: jax.Array) -> np.ndarray:
    """[heads, num_episodes] weights of each episode in each head's regression: Poisson(1) draws, the online form
    of a bootstrap resample (an episode drawn k times counts k times; about a third sit out a head). One head: all 1,
    the plain fit."""
    if heads == 1:
        return np.ones((1, num_episodes), np.float32)
    return np.asarray(jax.random.poisson(key, 1.0, (heads, num_episodes)), np.float32)


def bagged_value_loss(per_head: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """The mean over heads of each head's weighted mean squared error: `per_head` [H, B] predictions, `targets`
    [B], `weights` [H, B] (a head whose weights are all 0 in a minibatch adds 0)."""
    sq = weights * (per_head - targets[None]) ** 2
    return jnp.mean(jnp.sum(sq, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1e-6))


def holdout_episodes(successes: Sequence[bool], fraction: float, key: jax.Array) -> list[int]:
    """The indices of the episodes a fit holds out to tell when its regressions converge: round(fraction * n),
    at least 1 and at most n - 1 (none below 2 episodes or at fraction 0), drawn at random by `key`, successes and
    failures in turn (their returns differ most, so a held-out set of one kind would judge V_phi on half the task)."""
    n = len(successes)
    if n < 2 or fraction <= 0:
        return []
    count = min(n - 1, max(1, round(fraction * n)))
    order = [int(i) for i in np.asarray(jax.random.permutation(key, n))]
    groups = sorted(([i for i in order if successes[i] == kind] for kind in (True, False)),
                    key=lambda g: order.index(g[0]) if g else n)  # the group of the first drawn episode leads
    turns = [i for pair in itertools.zip_longest(*groups) for i in pair if i is not None]
    return sorted(turns[:count])


def take_rows(data: Any, rows: np.ndarray) -> Any:
    """The rows `rows` of every [N, ...] leaf of `data`."""
    return jax.tree_util.tree_map(lambda x: x[rows], data)


def chunked(fn: Callable[[np.ndarray, jax.Array], Any], n: int, key: jax.Array, chunk: int) -> Any:
    """`fn(rows, key)` over rows 0..n-1 in chunks of `chunk` (the last padded with row n-1, so one compiled shape
    serves all), each with its own key; the results' [chunk, ...] leaves concatenated and cut to [n, ...]."""
    out = []
    for start in range(0, n, chunk):
        key, sub = jax.random.split(key)
        out.append(jax.device_get(fn(np.minimum(np.arange(start, start + chunk), n - 1), sub)))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs)[:n], *out)


# ------------------------------------------------------------------------------------------------ fitting
def regression_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """The optimiser of every Q-Estimation regression (its state's structure does not depend on the rate)."""
    return optax.adam(learning_rate)


# What each stage trains, read off the params (STAGES below names them in order).
STAGE_PARTS: dict[str, Callable[[AgentParams], Any]] = {
    "value": lambda p: p.value,
    "actor": lambda p: p.actor,
    "critic": lambda p: (p.critic, p.encoder),
}


class Regression:
    """Adam on `loss_fn(params, minibatch, key)` over random minibatches of `data` (a pytree of [N, ...] arrays),
    in jitted lax.scan chunks that can stop and go on: the state between chunks is just (params, opt_state).
    With `heldout` (the same pytree layout, or what `heldout_fn` reads), `heldout_loss` scores params on all of it
    with a fixed key, by `heldout_fn` (default: the loss itself)."""

    def __init__(self, loss_fn: Callable[[Any, Any, jax.Array], jax.Array], data: Any, batch_size: int,
                 learning_rate: float, heldout: Any = None,
                 heldout_fn: Callable[[Any, Any, jax.Array], jax.Array] | None = None):
        n = jax.tree_util.tree_leaves(data)[0].shape[0]
        self.tx = tx = regression_optimizer(learning_rate)
        self.data = jax.tree_util.tree_map(jnp.asarray, data)
        self.heldout = None if heldout is None else jax.tree_util.tree_map(jnp.asarray, heldout)

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

        self._run = jax.jit(run, static_argnums=4)  # data is an argument, not a baked-in constant
        # One key for every evaluation: the held-out loss is then a function of the params alone, so chunks compare.
        judge = heldout_fn or loss_fn
        self._heldout = jax.jit(lambda params, heldout: judge(params, heldout, jax.random.PRNGKey(0)))

    def init(self, params: Any) -> Any:
        return self.tx.init(params)

    def chunk(self, params: Any, opt_state: Any, key: jax.Array, num: int) -> tuple[Any, Any, float]:
        """`num` steps; the new params and optimiser state and the chunk's mean loss."""
        params, opt_state, loss = self._run(params, opt_state, self.data, key, num)
        return params, opt_state, float(loss)

    def heldout_loss(self, params: Any) -> float | None:
        """The loss on the held-out data (None without it)."""
        return None if self.heldout is None else float(self._heldout(params, self.heldout))


class Convergence(NamedTuple):
    """A stage's held-out loss so far: the best (the loss of the params it keeps) and the steps run since then."""

    best: float | None = None
    since_best: int = 0


def track(state: Convergence, loss: float, steps: int, tol: float) -> Convergence:
    """After `steps` more steps at held-out loss `loss`: a new best if it beats the old one by more than `tol`
    (relative to its size), else `steps` more without improvement. A smaller gain is noise, not progress."""
    if state.best is None or loss < state.best - tol * abs(state.best):
        return Convergence(float(loss), 0)
    return Convergence(state.best, state.since_best + steps)


class QEstimationReport(NamedTuple):
    """Losses of the three regressions (first and last chunk means), their held-out losses (the first chunk's and
    the kept params'), the steps each ran and the data they saw (held-out episodes included)."""

    num_steps: int
    num_episodes: int
    success_rate: float
    mean_return: float
    value_loss: tuple[float, float]
    critic_loss: tuple[float, float]
    actor_nll: tuple[float, float]
    heldout_episodes: int = 0
    stage_steps: tuple[int, int, int] = (0, 0, 0)  # value, actor, critic: the steps run, up to the configured ones
    value_heldout: tuple[float, float] = (float("nan"), float("nan"))
    actor_heldout: tuple[float, float] = (float("nan"), float("nan"))
    critic_heldout: tuple[float, float] = (float("nan"), float("nan"))


def _ends(losses: Sequence[float]) -> tuple[float, float]:
    return (float(losses[0]), float(losses[-1])) if len(losses) else (float("nan"), float("nan"))


# The regressions in order: pi_RL before the critic, whose regression support includes pi_RL samples.
STAGES = ("value", "actor", "critic")
HOLDOUT_EVAL_MAX = 512  # held-out states scored after each chunk (evenly spaced when there are more)


def output_bias_at(critic: Any, mean: float) -> Any:
    """The critic params with every head's output bias (sac.Critic's last Dense) at `mean`. The critic regression
    starts there: from 0, Adam's first steps at 3e-4 would go into moving the output to Qhat_BC's offset (about -100
    at the default shaping) before the shape."""
    def put(path, leaf):
        names = tuple(getattr(k, "key", None) for k in path)
        return jnp.full_like(leaf, mean) if names[-3:] == ("heads", "Dense_0", "bias") else leaf

    out = jax.tree_util.tree_map_with_path(put, critic)
    if jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: a is b, out, critic)):
        raise ValueError("the critic's output bias (heads/Dense_0/bias) is not where output_bias_at looks")
    return out


class CriticSupport(NamedTuple):
    """The actions off the data the critic regresses at, `support_samples` (K) per rollout state, with Qhat_BC."""

    policy_actions: np.ndarray  # [N, K, A] a ~ pi_RL(s)
    policy_targets: np.ndarray  # [N, K] Qhat_BC(s, a)
    uniform_actions: np.ndarray  # [N, K, A] a ~ U[-1, 1]^A
    uniform_targets: np.ndarray  # [N, K]


def score_support(nets: Networks, qcfg: QEstimationConfig, params: AgentParams, obs: Any, key: jax.Array
                  ) -> CriticSupport:
    """`support_samples` (K) actions per state of `obs` ([c, ...]) from pi_RL and from U[-1, 1]^A, with Qhat_BC."""
    k = qcfg.support_samples
    k_pi, k_uniform, k_q = jax.random.split(key, 3)
    repeat = lambda x, times: jnp.broadcast_to(x, (times, *x.shape)).reshape(-1, *x.shape[1:])  # [times * c, ...]
    # pi_RL on K copies of the states, one draw each (vmapping the draw over K keys compiles several times slower)
    a_pi = actor_dist(nets, params, jax.tree_util.tree_map(lambda x: repeat(x, k), obs)).sample(k_pi)  # [K * c, A]
    a_uniform = jax.random.uniform(k_uniform, a_pi.shape, minval=-1.0, maxval=1.0)
    q = qhat_bc(nets, params, jax.tree_util.tree_map(lambda x: repeat(x, 2 * k), obs),
                jnp.concatenate([a_pi, a_uniform]), qcfg, k_q)  # one call scores both
    per_state = lambda x: jnp.swapaxes(x.reshape(k, -1, *x.shape[1:]), 0, 1)  # [K * c, ...] -> [c, K, ...]
    return CriticSupport(per_state(a_pi), per_state(q[:len(a_pi)]), per_state(a_uniform), per_state(q[len(a_pi):]))


def pick_support(support: CriticSupport, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One pi_RL and one uniform action per state ([B, K, ...] -> [2B, ...] actions, [2B] targets), each drawn at
    random from its K."""
    batch, k = support.policy_targets.shape
    rows = jnp.arange(batch)
    j_pi, j_uniform = jax.random.randint(key, (2, batch), 0, k)
    actions = jnp.concatenate([support.policy_actions[rows, j_pi], support.uniform_actions[rows, j_uniform]])
    targets = jnp.concatenate([support.policy_targets[rows, j_pi], support.uniform_targets[rows, j_uniform]])
    return actions, targets


class QEstimation:
    """Phase 1 of Q2RL: fit V_phi, pre-train pi_RL by NLL on the rollouts, regress Q_RL onto Qhat_BC."""

    def __init__(self, nets: Networks, cfg: AgentConfig):
        self.nets, self.cfg, self.qcfg = nets, cfg, cfg.q_estimation
        # Compiled once per agent with the params an argument (closed over, each fit's V_phi and pi_RL would be baked
        # into a new program, compiled again for the held-out rows and after a restore: seconds each on a CPU).
        self._qhat = jax.jit(lambda params, obs, action, key: qhat_bc(nets, params, obs, action, self.qcfg, key))
        self._support = jax.jit(lambda params, obs, key: score_support(nets, self.qcfg, params, obs, key))

    def fit(self, params: AgentParams, episodes: Sequence[Episode], key: jax.Array,
            init_critic: bool = True) -> tuple[AgentParams, QEstimationReport]:
        """All of phase 1 on the rollout `episodes` in one call; `init_critic=False` is the no-Q-init ablation."""
        fit = self.start(params, episodes, key, init_critic)
        while not fit.advance():
            pass
        return fit.params, fit.report()

    def start(self, params: AgentParams, episodes: Sequence[Episode], key: jax.Array,
              init_critic: bool = True) -> "QEstimationFit":
        """Phase 1 as pieces a caller runs one at a time (`advance`), e.g. between a learner's other chores. With
        converge_patience, holdout_fraction of the episodes are held out to tell when each regression converges."""
        if params.bc is None:
            raise ValueError("Q-Estimation needs the BC policy in params.bc")
        q = self.qcfg
        held = holdout_episodes([ep.success for ep in episodes], q.holdout_fraction if q.converge_patience else 0.0,
                                jax.random.fold_in(key, len(STAGES)))  # a stream no stage key uses
        train = rollout_data([ep for i, ep in enumerate(episodes) if i not in held], self.cfg)
        heldout, all_returns = None, train.returns
        if held:
            heldout = rollout_data([episodes[i] for i in held], self.cfg)
            all_returns = np.concatenate([train.returns, heldout.returns])
            n = len(heldout.actions)
            heldout = take_rows(heldout, np.linspace(0, n - 1, min(n, HOLDOUT_EVAL_MAX)).round().astype(int))
        return QEstimationFit(self, params, train, len(episodes), float(np.mean([ep.success for ep in episodes])),
                              key, init_critic, heldout=heldout, num_heldout=len(held), all_returns=all_returns)

    def stage_steps(self, stage: str, init_critic: bool) -> int:
        """The most steps `stage` runs (it stops sooner once its held-out loss converges)."""
        q = self.qcfg
        return {"value": q.value_updates, "actor": q.actor_updates if q.init_actor == "bc" else 0,
                "critic": q.critic_updates if init_critic else 0}[stage]

    def regression(self, stage: str, params: AgentParams, data: RolloutData, key: jax.Array,
                   heldout: RolloutData | None = None
                   ) -> tuple[AgentParams, Regression, Callable[[AgentParams], Any], Callable[[AgentParams, Any], AgentParams]]:
        """What one stage regresses, given the params it starts from: (params ready for it, its Regression, the
        part it trains, how to put that part back). Deterministic in (params, data, heldout, key), so a stage can be
        set up again after a restart and go on from a saved (part, optimiser state)."""
        nets, qcfg = self.nets, self.qcfg
        norm = params.normalizer
        if stage == "value":
            # V_phi regresses returns standardised by their mean and std (the losses are in those units). Each head
            # weighs the rows by its bootstrap weight of their episode; the held-out loss is that of the heads' mean,
            # the V_phi the gate reads.
            stats = np.asarray([data.returns.mean(), max(float(data.returns.std()), 1e-3)], np.float32)
            weights = bootstrap_weights(int(data.episode.max()) + 1, qcfg.value_heads, key)[:, data.episode].T

            def standardised(g):
                return (g - stats[0]) / stats[1]

            def value_loss(v_params, batch, key):
                obs, g, w = batch
                return bagged_value_loss(nets.value.apply(v_params, norm.normalize(obs)), standardised(g), w.T)

            def heldout_loss(v_params, batch, key):
                obs, g = batch
                return jnp.mean((jnp.mean(nets.value.apply(v_params, norm.normalize(obs)), axis=0)
                                 - standardised(g)) ** 2)

            held = None if heldout is None else (heldout.obs, heldout.returns)
            return (params.replace(value_stats=jnp.asarray(stats)),
                    Regression(value_loss, (data.obs, data.returns, weights), qcfg.batch_size, qcfg.learning_rate,
                               held, heldout_fn=heldout_loss),
                    STAGE_PARTS["value"], lambda p, v: p.replace(value=v))
        if stage == "actor":
            # Every minibatch draws fresh BC actions: fitting the one executed action per state instead memorises it
            # and leaves pi_RL far narrower than pi_BC; then E_{a~pi_RL}[log pi_BC(a|s) + H] > 0, and the TD backup
            # from the Qhat_BC-initialised critic integrates that bonus over the horizon (Q_RL drifts up).
            def actor_loss(actor, obs, key):
                feats = jax.lax.stop_gradient(features(nets, params, obs))
                bc_actions = bc_nll_target(bc_dist(params, obs).sample(key))
                return -jnp.mean(nets.actor.apply(actor, feats).log_prob(jax.lax.stop_gradient(bc_actions)))

            return (params, Regression(actor_loss, data.obs, qcfg.batch_size, qcfg.actor_learning_rate,
                                       None if heldout is None else heldout.obs),
                    STAGE_PARTS["actor"], lambda p, a: p.replace(actor=a))
        # Every head of Q_RL (and the shared encoder) regresses onto Qhat_BC; the targets copy the result. Support:
        # the rollout's (s, a), and with `critic_support=data_policy_uniform` also a ~ pi_RL(s) and a ~ U[-1, 1]^d
        # at the same states, each a third of the loss. pi_RL, pi_BC and V_phi are frozen in this stage, so the
        # targets and the off-data actions (K per state) are drawn and scored once, here; each step picks one of each
        # per state. The encoder then runs once per step and the critic once, on [data; pi; uniform].
        wide = qcfg.critic_support == "data_policy_uniform"
        k_data, k_support, k_held, k_held_support = jax.random.split(key, 4)

        def regression_data(part: RolloutData, k_targets, k_more):
            base = (part.obs, part.actions, self.critic_targets(params, part, k_targets))
            return (*base, self.critic_support(params, part, k_more)) if wide else base

        def critic_loss(critic_and_encoder, batch, key):
            critic, encoder = critic_and_encoder
            obs, actions, targets = batch[:3]
            if wide:
                more_actions, more_targets = pick_support(batch[3], key)
                actions, targets = jnp.concatenate([actions, more_actions]), jnp.concatenate([targets, more_targets])
            feats = nets.encoder.apply(encoder, norm.normalize(obs))
            feats = jnp.tile(feats, (len(actions) // len(feats), 1))  # rows in the order of the stacked actions
            # the mean over the stacked rows weighs data, pi and uniform a third each
            return jnp.mean((nets.critic.apply(critic, feats, actions) - targets[None]) ** 2)

        def put_critic(p, critic_and_encoder):
            critic, encoder = critic_and_encoder
            return p.replace(critic=critic, encoder=encoder, critic_target=critic, encoder_target=encoder)

        train = regression_data(data, k_data, k_support)
        held = None if heldout is None else regression_data(heldout, k_held, k_held_support)
        mean = np.mean([np.mean(train[2])] + ([np.mean(train[3].policy_targets), np.mean(train[3].uniform_targets)]
                                              if wide else []))
        return (params.replace(critic=output_bias_at(params.critic, float(mean))),
                Regression(critic_loss, train, qcfg.batch_size, qcfg.learning_rate, held),
                STAGE_PARTS["critic"], put_critic)

    def critic_targets(self, params: AgentParams, data: RolloutData, key: jax.Array, chunk: int = 1024
                       ) -> np.ndarray:
        """Qhat_BC at the rollout's (s, a) pairs, with the fitted V_phi."""
        return chunked(lambda rows, k: self._qhat(params, take_rows(data.obs, rows), data.actions[rows], k),
                       len(data.actions), key, chunk)

    def critic_support(self, params: AgentParams, data: RolloutData, key: jax.Array, chunk: int = 1024
                       ) -> CriticSupport:
        """`support_samples` actions per rollout state from pi_RL and from U[-1, 1]^A, with their Qhat_BC (about
        `chunk` scored pairs per compiled call)."""
        return chunked(lambda rows, k: self._support(params, take_rows(data.obs, rows), k), len(data.actions), key,
                       max(1, chunk // self.qcfg.support_samples))


class QEstimationFit:
    """Phase 1 under way: the stages of STAGES in order, each a Regression run `chunk_steps` steps per `advance()`
    until its configured steps are done or its held-out loss has converged.

        fit = qe.start(params, episodes, key)
        while not fit.advance(): ...          # a learner keeps serving, reporting and checkpointing in between
        params, report = fit.params, fit.report()

    `progress()` is what a checkpoint keeps (a pytree and JSON metadata); `restore()` puts it back into a fit
    started afresh on the same episodes and key, which then goes on where the saved one stopped."""

    def __init__(self, qe: QEstimation, params: AgentParams, data: RolloutData, num_episodes: int,
                 success_rate: float, key: jax.Array, init_critic: bool, chunk_steps: int = 100,
                 heldout: RolloutData | None = None, num_heldout: int = 0, all_returns: np.ndarray | None = None):
        self.qe, self.data, self.key, self.init_critic = qe, data, key, init_critic
        self.heldout, self.num_heldout = heldout, num_heldout
        self.num_episodes, self.success_rate = num_episodes, success_rate
        self.all_returns = data.returns if all_returns is None else all_returns
        self.chunk_steps = chunk_steps  # small enough that a learner's chores between chunks stay timely
        self.params = params
        self.stage, self.done = 0, 0  # index into STAGES, steps done in it
        self.losses: dict[str, list[float]] = {name: [] for name in STAGES}
        self.heldout_losses: dict[str, list[float]] = {name: [] for name in STAGES}
        self.kept: dict[str, list] = {}  # per finished stage: [steps it ran, held-out loss of the params it kept]
        self.convergence = Convergence()
        self._current: tuple | None = None  # (Regression, get part, put part, part, optimiser state)
        # The params as the current stage began: its loss reads them (e.g. pi_RL's samples through the encoder the
        # critic stage trains), so a restored stage must read the same, not the partly trained ones.
        self._stage_params: AgentParams | None = None
        # The part with the best held-out loss so far: a stage ends with it, not with the last chunk's. On the few
        # held-out episodes the last `converge_patience` steps gained less than noise, or overfitted the rest.
        self._best: Any = None
        self._skip_empty_stages()

    @property
    def finished(self) -> bool:
        return self.stage >= len(STAGES)

    @property
    def stage_name(self) -> str:
        return STAGES[self.stage] if not self.finished else "done"

    def steps_left(self) -> int:
        """The most steps still to run (fewer once a stage's held-out loss converges)."""
        return sum(self.qe.stage_steps(name, self.init_critic) for name in STAGES[self.stage:]) - self.done

    def advance(self) -> bool:
        """Run one chunk of the current stage; True once every stage is done."""
        if self.finished:
            return True
        regression, get, put, part, opt_state = self._current or self._begin_stage()
        name, steps = STAGES[self.stage], self.qe.stage_steps(STAGES[self.stage], self.init_critic)
        num = min(self.chunk_steps, steps - self.done)
        # A chunk's key depends only on the stage and the steps done, so a restored fit draws what the saved one would.
        key = jax.random.fold_in(self._stage_key(), self.done)
        part, opt_state, loss = regression.chunk(part, opt_state, key, num)
        self.losses[name].append(loss)
        self.done += num
        self.params = put(self.params, part)
        self._current = (regression, get, put, part, opt_state)
        held = regression.heldout_loss(part)
        if held is None:
            self._best = part
        else:
            self.heldout_losses[name].append(held)
            self.convergence = track(self.convergence, held, num, self.qe.qcfg.converge_tol)
            if self.convergence.since_best == 0:
                self._best = part
        if self.done >= steps or self.converged():
            self.params = put(self.params, self._best)
            self.kept[name] = [self.done, self.convergence.best]
            self.end_stage()
        return self.finished

    def converged(self) -> bool:
        """The current stage's held-out loss has not improved by converge_tol for converge_patience steps."""
        patience = self.qe.qcfg.converge_patience
        return self.heldout is not None and patience > 0 and self.convergence.since_best >= patience

    def end_stage(self) -> None:
        """Go to the next stage that has steps (the current one's params stay as they are)."""
        self.stage, self.done, self._current, self._stage_params = self.stage + 1, 0, None, None
        self._best, self.convergence = None, Convergence()
        self._skip_empty_stages()

    def report(self) -> QEstimationReport:
        def heldout(name: str) -> tuple[float, float]:
            losses, kept = self.heldout_losses[name], self.kept.get(name, [0, None])[1]
            return (float(losses[0]) if losses else float("nan"), float("nan") if kept is None else float(kept))

        return QEstimationReport(
            num_steps=len(self.all_returns), num_episodes=self.num_episodes, success_rate=self.success_rate,
            mean_return=float(np.mean(self.all_returns)), value_loss=_ends(self.losses["value"]),
            critic_loss=_ends(self.losses["critic"]), actor_nll=_ends(self.losses["actor"]),
            heldout_episodes=self.num_heldout,
            stage_steps=tuple(int(self.kept.get(name, [0])[0]) for name in STAGES),
            value_heldout=heldout("value"), actor_heldout=heldout("actor"), critic_heldout=heldout("critic"))

    def progress(self) -> tuple[dict, dict]:
        """(pytree, metadata) to checkpoint: the params so far, the current stage's optimiser state and best part,
        where it is, and its held-out loss record (so a restored fit stops where the saved one would)."""
        meta = {"stage": self.stage, "done": self.done, "losses": self.losses, "init_critic": self.init_critic,
                "heldout_losses": self.heldout_losses, "kept": self.kept,
                "best": self.convergence.best, "since_best": self.convergence.since_best}
        if self._current is None:  # between stages
            return {"params": self.params}, meta
        return {"params": self.params, "stage_params": self._stage_params, "opt_state": self._current[4],
                "best_part": self._best}, meta

    def progress_template(self, meta: dict) -> dict:
        """The pytree structure `progress()` had at the saved point (to restore the checkpoint into)."""
        if int(meta["stage"]) >= len(STAGES) or int(meta["done"]) == 0:
            return {"params": self.params}
        part = STAGE_PARTS[STAGES[int(meta["stage"])]](self.params)
        return {"params": self.params, "stage_params": self.params, "opt_state": regression_optimizer(1.0).init(part),
                "best_part": part}

    def restore(self, tree: dict, meta: dict) -> None:
        """Go on from a saved progress of a fit on the same episodes and key."""
        if meta.get("init_critic") != self.init_critic or not 0 <= int(meta["stage"]) <= len(STAGES):
            raise ValueError(f"saved Q-Estimation progress {meta} does not belong to this fit")
        self.params, self.stage, self.done = tree["params"], int(meta["stage"]), int(meta["done"])
        self.losses = {name: [float(x) for x in meta["losses"].get(name, [])] for name in STAGES}
        self.heldout_losses = {name: [float(x) for x in meta["heldout_losses"].get(name, [])] for name in STAGES}
        self.kept = {name: list(v) for name, v in meta["kept"].items()}
        best = meta["best"]
        self.convergence = Convergence(None if best is None else float(best), int(meta["since_best"]))
        self._current = self._stage_params = self._best = None
        if not self.finished and self.done > 0:
            self._stage_params, self._best = tree["stage_params"], tree["best_part"]
            _, regression, get, put = self.qe.regression(STAGES[self.stage], self._stage_params, self.data,
                                                         self._stage_key(), self.heldout)
            self._current = (regression, get, put, get(self.params), tree["opt_state"])

    def _stage_key(self) -> jax.Array:
        return jax.random.fold_in(self.key, self.stage)

    def _begin_stage(self) -> tuple:
        ready, regression, get, put = self.qe.regression(STAGES[self.stage], self.params, self.data,
                                                         self._stage_key(), self.heldout)
        self.params = self._stage_params = ready  # e.g. with V_phi's return statistics
        part = get(self.params)
        self._current = (regression, get, put, part, regression.init(part))
        return self._current

    def _skip_empty_stages(self) -> None:
        while not self.finished and self.qe.stage_steps(STAGES[self.stage], self.init_critic) == 0:
            self.stage += 1
