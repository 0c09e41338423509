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
    in jitted lax.scan chunks that can stop and go on: the state between chunks is just (params, opt_state)."""

    def __init__(self, loss_fn: Callable[[Any, Any, jax.Array], jax.Array], data: Any, batch_size: int,
                 learning_rate: float):
        n = jax.tree_util.tree_leaves(data)[0].shape[0]
        self.tx = tx = regression_optimizer(learning_rate)
        self.data = jax.tree_util.tree_map(jnp.asarray, data)

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

    def init(self, params: Any) -> Any:
        return self.tx.init(params)

    def chunk(self, params: Any, opt_state: Any, key: jax.Array, num: int) -> tuple[Any, Any, float]:
        """`num` steps; the new params and optimiser state and the chunk's mean loss."""
        params, opt_state, loss = self._run(params, opt_state, self.data, key, num)
        return params, opt_state, float(loss)


class QEstimationReport(NamedTuple):
    """Losses of the three regressions (first and last chunk means) and the data they saw."""

    num_steps: int
    num_episodes: int
    success_rate: float
    mean_return: float
    value_loss: tuple[float, float]
    critic_loss: tuple[float, float]
    actor_nll: tuple[float, float]


def _ends(losses: Sequence[float]) -> tuple[float, float]:
    return (float(losses[0]), float(losses[-1])) if len(losses) else (float("nan"), float("nan"))


# The regressions in order: pi_RL before the critic, whose regression support includes pi_RL samples.
STAGES = ("value", "actor", "critic")


class QEstimation:
    """Phase 1 of Q2RL: fit V_phi, pre-train pi_RL by NLL on the rollouts, regress Q_RL onto Qhat_BC."""

    def __init__(self, nets: Networks, cfg: AgentConfig):
        self.nets, self.cfg, self.qcfg = nets, cfg, cfg.q_estimation

    def fit(self, params: AgentParams, episodes: Sequence[Episode], key: jax.Array,
            init_critic: bool = True) -> tuple[AgentParams, QEstimationReport]:
        """All of phase 1 on the rollout `episodes` in one call; `init_critic=False` is the no-Q-init ablation."""
        fit = self.start(params, episodes, key, init_critic)
        while not fit.advance():
            pass
        return fit.params, fit.report()

    def start(self, params: AgentParams, episodes: Sequence[Episode], key: jax.Array,
              init_critic: bool = True) -> "QEstimationFit":
        """Phase 1 as pieces a caller runs one at a time (`advance`), e.g. between a learner's other chores."""
        if params.bc is None:
            raise ValueError("Q-Estimation needs the BC policy in params.bc")
        return QEstimationFit(self, params, rollout_data(episodes, self.cfg), len(episodes),
                              float(np.mean([ep.success for ep in episodes])), key, init_critic)

    def stage_steps(self, stage: str, init_critic: bool) -> int:
        q = self.qcfg
        return {"value": q.value_updates, "actor": q.actor_updates if q.init_actor == "bc" else 0,
                "critic": q.critic_updates if init_critic else 0}[stage]

    def regression(self, stage: str, params: AgentParams, data: RolloutData, key: jax.Array
                   ) -> tuple[AgentParams, Regression, Callable[[AgentParams], Any], Callable[[AgentParams, Any], AgentParams]]:
        """What one stage regresses, given the params it starts from: (params ready for it, its Regression, the
        part it trains, how to put that part back). Deterministic in (params, data, key), so a stage can be set up
        again after a restart and go on from a saved (part, optimiser state)."""
        nets, qcfg = self.nets, self.qcfg
        norm = params.normalizer
        if stage == "value":
            # V_phi regresses returns standardised by their mean and std (the losses are in those units).
            stats = np.asarray([data.returns.mean(), max(float(data.returns.std()), 1e-3)], np.float32)

            def value_loss(v_params, batch, key):
                obs, g = batch
                return jnp.mean((nets.value.apply(v_params, norm.normalize(obs)) - (g - stats[0]) / stats[1]) ** 2)

            return (params.replace(value_stats=jnp.asarray(stats)),
                    Regression(value_loss, (data.obs, data.returns), qcfg.batch_size, qcfg.learning_rate),
                    STAGE_PARTS["value"], lambda p, v: p.replace(value=v))
        if stage == "actor":
            # Every minibatch draws fresh BC actions: fitting the one executed action per state instead memorises it
            # and leaves pi_RL far narrower than pi_BC; then E_{a~pi_RL}[log pi_BC(a|s) + H] > 0, and the TD backup
            # from the Qhat_BC-initialised critic integrates that bonus over the horizon (Q_RL drifts up).
            def actor_loss(actor, obs, key):
                feats = jax.lax.stop_gradient(features(nets, params, obs))
                bc_actions = bc_nll_target(bc_dist(params, obs).sample(key))
                return -jnp.mean(nets.actor.apply(actor, feats).log_prob(jax.lax.stop_gradient(bc_actions)))

            return (params, Regression(actor_loss, data.obs, qcfg.batch_size, qcfg.actor_learning_rate),
                    STAGE_PARTS["actor"], lambda p, a: p.replace(actor=a))
        # Every head of Q_RL (and the shared encoder) regresses onto Qhat_BC; the targets copy the result. Support:
        # the rollout's (s, a) with precomputed targets, and with `critic_support=data_policy_uniform` also
        # a ~ pi_RL(s) and a ~ U[-1, 1]^d at the same states, scored by Qhat_BC on the fly.
        wide = qcfg.critic_support == "data_policy_uniform"
        targets = self.critic_targets(params, data, key)

        def critic_loss(critic_and_encoder, batch, key):
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

        def put_critic(p, critic_and_encoder):
            critic, encoder = critic_and_encoder
            return p.replace(critic=critic, encoder=encoder, critic_target=critic, encoder_target=encoder)

        return (params, Regression(critic_loss, (data.obs, data.actions, targets), qcfg.batch_size, qcfg.learning_rate),
                STAGE_PARTS["critic"], put_critic)

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


class QEstimationFit:
    """Phase 1 under way: the stages of STAGES in order, each a Regression run `chunk_steps` steps per `advance()`.

        fit = qe.start(params, episodes, key)
        while not fit.advance(): ...          # a learner keeps serving, reporting and checkpointing in between
        params, report = fit.params, fit.report()

    `progress()` is what a checkpoint keeps (a pytree and JSON metadata); `restore()` puts it back into a fit
    started afresh on the same episodes and key, which then goes on where the saved one stopped."""

    def __init__(self, qe: QEstimation, params: AgentParams, data: RolloutData, num_episodes: int,
                 success_rate: float, key: jax.Array, init_critic: bool, chunk_steps: int = 100):
        self.qe, self.data, self.key, self.init_critic = qe, data, key, init_critic
        self.num_episodes, self.success_rate = num_episodes, success_rate
        self.chunk_steps = chunk_steps  # small enough that a learner's chores between chunks stay timely
        self.params = params
        self.stage, self.done = 0, 0  # index into STAGES, steps done in it
        self.losses: dict[str, list[float]] = {name: [] for name in STAGES}
        self._current: tuple | None = None  # (Regression, get part, put part, part, optimiser state)
        # The params as the current stage began: its loss reads them (e.g. pi_RL's samples through the encoder the
        # critic stage trains), so a restored stage must read the same, not the partly trained ones.
        self._stage_params: AgentParams | None = None
        self._skip_empty_stages()

    @property
    def finished(self) -> bool:
        return self.stage >= len(STAGES)

    @property
    def stage_name(self) -> str:
        return STAGES[self.stage] if not self.finished else "done"

    def steps_left(self) -> int:
        return sum(self.qe.stage_steps(name, self.init_critic) for name in STAGES[self.stage:]) - self.done

    def advance(self) -> bool:
        """Run one chunk of the current stage; True once every stage is done."""
        if self.finished:
            return True
        regression, get, put, part, opt_state = self._current or self._begin_stage()
        steps = self.qe.stage_steps(STAGES[self.stage], self.init_critic)
        num = min(self.chunk_steps, steps - self.done)
        # A chunk's key depends only on the stage and the steps done, so a restored fit draws what the saved one would.
        key = jax.random.fold_in(self._stage_key(), self.done)
        part, opt_state, loss = regression.chunk(part, opt_state, key, num)
        self.losses[STAGES[self.stage]].append(loss)
        self.done += num
        self.params = put(self.params, part)
        self._current = (regression, get, put, part, opt_state)
        if self.done >= steps:
            self.end_stage()
        return self.finished

    def end_stage(self) -> None:
        """Go to the next stage that has steps (the current one's params stay as they are)."""
        self.stage, self.done, self._current, self._stage_params = self.stage + 1, 0, None, None
        self._skip_empty_stages()

    def report(self) -> QEstimationReport:
        return QEstimationReport(
            num_steps=len(self.data.actions), num_episodes=self.num_episodes, success_rate=self.success_rate,
            mean_return=float(np.mean(self.data.returns)), value_loss=_ends(self.losses["value"]),
            critic_loss=_ends(self.losses["critic"]), actor_nll=_ends(self.losses["actor"]))

    def progress(self) -> tuple[dict, dict]:
        """(pytree, metadata) to checkpoint: the params so far, the current stage's optimiser state, where it is."""
        meta = {"stage": self.stage, "done": self.done, "losses": self.losses, "init_critic": self.init_critic}
        if self._current is None:  # between stages
            return {"params": self.params}, meta
        return {"params": self.params, "stage_params": self._stage_params, "opt_state": self._current[4]}, meta

    def progress_template(self, meta: dict) -> dict:
        """The pytree structure `progress()` had at the saved point (to restore the checkpoint into)."""
        if int(meta["stage"]) >= len(STAGES) or int(meta["done"]) == 0:
            return {"params": self.params}
        part = STAGE_PARTS[STAGES[int(meta["stage"])]](self.params)
        return {"params": self.params, "stage_params": self.params, "opt_state": regression_optimizer(1.0).init(part)}

    def restore(self, tree: dict, meta: dict) -> None:
        """Go on from a saved progress of a fit on the same episodes and key."""
        if meta.get("init_critic") != self.init_critic or not 0 <= int(meta["stage"]) <= len(STAGES):
            raise ValueError(f"saved Q-Estimation progress {meta} does not belong to this fit")
        self.params, self.stage, self.done = tree["params"], int(meta["stage"]), int(meta["done"])
        self.losses = {name: [float(x) for x in meta["losses"].get(name, [])] for name in STAGES}
        self._current = self._stage_params = None
        if not self.finished and self.done > 0:
            self._stage_params = tree["stage_params"]
            _, regression, get, put = self.qe.regression(STAGES[self.stage], self._stage_params, self.data,
                                                         self._stage_key())
            self._current = (regression, get, put, get(self.params), tree["opt_state"])

    def _stage_key(self) -> jax.Array:
        return jax.random.fold_in(self.key, self.stage)

    def _begin_stage(self) -> tuple:
        ready, regression, get, put = self.qe.regression(STAGES[self.stage], self.params, self.data, self._stage_key())
        self.params = self._stage_params = ready  # e.g. with V_phi's return statistics
        part = get(self.params)
        self._current = (regression, get, put, part, regression.init(part))
        return self._current

    def _skip_empty_stages(self) -> None:
        while not self.finished and self.qe.stage_steps(STAGES[self.stage], self.init_critic) == 0:
            self.stage += 1
