"""Q-Gating (docs/design.md#q-gating): one pure jitted function the actor calls at every step.

    gate = make_gate(nets, cfg)                      # jitted; `deterministic=True` for evaluation episodes
    action, info = gate(params, obs, key)            # obs is ONE observation (no batch dim)

q2rl: a_bc ~ pi_BC, a_rl ~ pi_RL, q_bc = Qhat_BC(s, a_bc) (frozen), q_rl = min_heads Q_RL(s, a_rl);
execute a_rl when q_rl >= q_bc (ties go to RL). With `q2rl_gate: prior_weighted` both are scored by the live critic
plus alpha log pi_BC instead (see prior_weighted_scores). The baselines reuse the same function (docs/design.md#baselines-and-ablations),
each by its row of ALGO_RULES (gate, scorer, bc_mode): ibrl scores both actions with the target critic (greedy,
or softmax with beta for ibrl_soft); sac_bc, rlpd, simplified_q and q2rl_no_gate always run a_rl; bc always runs
a_bc; batch_online runs the best of N samples of its (retrained) pi_BC under the critic (best_of_n).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from q2rl.core.agent_config import AgentConfig
from q2rl.core.q_estimation import bc_log_prior, qhat_bc
from q2rl.core.sac import AgentParams, Networks, actor_dist, bc_dist, critic_values, observe


class GateInfo(NamedTuple):
    """What the actor records per step: both candidate actions, their values, and which one ran."""

    a_bc: jax.Array
    a_rl: jax.Array
    q_bc: jax.Array
    q_rl: jax.Array
    use_rl: jax.Array  # bool


def gate_rule(q_bc: jax.Array, q_rl: jax.Array) -> jax.Array:
    """True where the RL action runs: q_rl >= q_bc (ties go to RL)."""
    return q_rl >= q_bc


def prior_weighted_scores(nets: Networks, cfg: AgentConfig, params: AgentParams, obs: Any, bc: Any, a_bc: jax.Array,
                          a_rl: jax.Array, q_rl: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(score of a_bc, score of a_rl) = min-head Q_RL(s, a) + alpha * max(log pi_BC(a|s), floor), for one state;
    `bc` is pi_BC(.|s), `q_rl` the min-head Q_RL(s, a_rl) the gate already has.

    Both candidates are scored by one estimator, so a state-level offset between Q_RL and V_phi cancels; the
    prior's log-likelihood keeps a_rl from winning where the critic cannot tell it from a_bc.
    """
    qcfg = cfg.q_estimation
    prior = lambda a: bc_log_prior(bc.log_prob(a), qcfg.alpha, qcfg.log_prob_floor)[0]
    q_bc_critic = jnp.min(critic_values(nets, params, obs, a_bc), axis=0)[0]
    return q_bc_critic + prior(a_bc), q_rl + prior(a_rl)


def broadcast_rows(tree: Any, n: int) -> Any:
    """A pytree with batch dim 1 (one state, or a distribution over one) repeated to n rows."""
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + x.shape[1:]), tree)


def sample_candidates(dist: Any, n: int, key: jax.Array, mode_first: bool = False) -> jax.Array:
    """n actions from a distribution over one state (batch dim 1) -> [n, A]: the distribution broadcast to n rows
    and sampled once, so n = 1 is exactly `dist.sample(key)`. `mode_first`: row 0 is the mode instead."""
    many = broadcast_rows(dist, n)
    samples = many.sample(key)
    return samples.at[0].set(dist.mode()[0]) if mode_first else samples


def best_of_n(q: jax.Array) -> jax.Array:
    """The index of the highest value in [n] (the first of equals)."""
    return jnp.argmax(q)


def best_of_n_action(nets: Networks, cfg: AgentConfig, params: AgentParams, batched: Any, dist: Any,
                     key: jax.Array, deterministic: bool) -> tuple[jax.Array, GateInfo]:
    """Implicit policy extraction (batch_online): N actions from pi_BC, the one with the highest min-head Q runs.
    The record's a_bc / q_bc are the first candidate (what plain sampling would have run) and use_rl says the
    critic chose another. Deterministic (evaluation with modes): the first candidate is pi_BC's mode."""
    n = cfg.batch_online.best_of_n
    candidates = jnp.clip(sample_candidates(dist, n, key, mode_first=deterministic), -1.0, 1.0)
    q = jnp.min(critic_values(nets, params, broadcast_rows(batched, n), candidates), axis=0)
    best = best_of_n(q)
    return candidates[best], GateInfo(candidates[0], candidates[best], q[0].astype(jnp.float32),
                                      q[best].astype(jnp.float32), best != 0)


def select_action(nets: Networks, cfg: AgentConfig, params: AgentParams, obs: Any, key: jax.Array,
                  deterministic: bool = False) -> tuple[jax.Array, GateInfo]:
    """The action to execute at one observation, and the gate's record (un-jitted; see `make_gate`)."""
    # pi_BC's image features, once for every network below (frozen encoder); obs itself otherwise
    batched = observe(nets, params.bc, jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], obs))
    k_bc, k_rl, k_entropy, k_soft = jax.random.split(key, 4)
    if params.bc is not None:
        dist = bc_dist(params, batched)
        use_mode = deterministic or cfg.rules.bc_mode or cfg.bc_action == "mode"
        a_bc_raw = dist.mode() if use_mode else dist.sample(k_bc)
    else:
        a_bc_raw = jnp.zeros((1, nets.action_dim), jnp.float32)
    a_bc = jnp.clip(a_bc_raw, -1.0, 1.0)
    if cfg.rules.gate == "best_of_n":
        return best_of_n_action(nets, cfg, params, batched, dist, k_bc, deterministic)
    if cfg.rules.gate == "always_bc":
        zero = jnp.zeros((), jnp.float32)
        return a_bc[0], GateInfo(a_bc[0], a_bc[0], zero, zero, jnp.asarray(False))
    rl = actor_dist(nets, params, batched)
    a_rl = rl.mode() if (deterministic or cfg.rl_action == "mode") else rl.sample(k_rl)
    target = cfg.rules.scorer == "target_critic"
    q_rl = jnp.min(critic_values(nets, params, batched, a_rl, target=target), axis=0)[0]
    if cfg.rules.gate == "qhat_bc" and cfg.q2rl_gate == "prior_weighted":
        q_bc, q_rl = prior_weighted_scores(nets, cfg, params, batched, dist, a_bc, a_rl, q_rl)
    elif cfg.rules.scorer == "qhat_bc":
        # score the action that runs (clipped to the box), as phase 1 scored its executed actions
        q_bc = qhat_bc(nets, params, batched, a_bc, cfg.q_estimation, k_entropy)[0]
    else:
        q_bc = jnp.min(critic_values(nets, params, batched, a_bc, target=target), axis=0)[0]
    if cfg.rules.gate == "always_rl":
        use_rl = jnp.asarray(True)
    elif cfg.rules.gate == "critic_softmax" and not deterministic:
        p_rl = jax.nn.sigmoid(cfg.ibrl_beta * (q_rl - q_bc))  # softmax over the two candidates
        use_rl = jax.random.uniform(k_soft) < p_rl
    else:
        use_rl = gate_rule(q_bc, q_rl)
    action = jnp.where(use_rl, a_rl[0], a_bc[0])
    return action, GateInfo(a_bc[0], a_rl[0], q_bc.astype(jnp.float32), q_rl.astype(jnp.float32), use_rl)


def make_gate(nets: Networks, cfg: AgentConfig, deterministic: bool = False
              ) -> Callable[[AgentParams, Any, jax.Array], tuple[jax.Array, GateInfo]]:
    """The jitted `(params, obs, key) -> (action, GateInfo)` for one observation."""
    return jax.jit(lambda params, obs, key: select_action(nets, cfg, params, obs, key, deterministic))
