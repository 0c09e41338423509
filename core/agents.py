"""Algorithm selection (SPEC §1.4): Q2RL, its ablations and the baselines from one set of functions.

    agent = make_agent(cfg, action_dim=7, camera_names=())
    params = agent.init_params(key, example_obs, bc=bc_policy)
    if agent.spec.q_estimation:
        params, report = agent.q_estimation.fit(params, rollout_episodes, key, init_critic=agent.spec.init_critic)
    state = agent.init_state(params)
    state, metrics = agent.update(state, batches, key)          # learner (batches: [utd, B, ...])
    action, info = agent.gate(params, obs, key)                   # actor, one observation
    subsets = publishable(state.params)                           # {"policy", "critic", "value"} for the wire

Per algorithm, what differs is only: whether phase 1 runs, whether Q_RL is initialised from Qhat_BC,
which rule the gate applies, what the bootstrap maximises over, and a few loss settings (`effective_config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from q2rl.core.agent_config import IBRL_FAMILY, Q2RL_FAMILY, AgentConfig
from q2rl.core.gating import GateInfo, make_gate
from q2rl.core.q_estimation import QEstimation
from q2rl.core.replay import Batch
from q2rl.core.sac import (AgentParams, Networks, Optimizers, SacState, UpdateMetrics, bc_dist, init_params,
                           init_state, make_networks, make_optimizers, make_update)


class AlgoSpec(NamedTuple):
    """What an algorithm does, beyond the shared update and gate."""

    needs_bc: bool  # a BC policy must be loaded (gate and/or bootstrap use it)
    q_estimation: bool  # phase 1: BC rollouts, V_phi, pi_RL init
    init_critic: bool  # phase 1 regresses Q_RL onto Qhat_BC
    trains: bool  # online SAC updates at all
    uses_demos: bool  # symmetric sampling from a demo buffer


def algo_spec(cfg: AgentConfig) -> AlgoSpec:
    """The AlgoSpec of `cfg.algo`."""
    algo = cfg.algo
    q2rl = algo in Q2RL_FAMILY
    return AlgoSpec(
        needs_bc=algo != "rlpd",
        q_estimation=q2rl,
        init_critic=algo in ("q2rl", "q2rl_no_gate"),
        trains=algo != "bc",
        uses_demos=cfg.use_demos or algo == "rlpd",
    )


def effective_config(cfg: AgentConfig) -> AgentConfig:
    """Settings an algorithm implies: rlpd is plain SAC (entropy on, no BC term, demos 50/50); the ibrl family
    bootstraps with IBRL's rule (max_rl_bc) and, as published, trains pi_RL on Q alone (bc_weight 0); the rest
    bootstrap with SPEC §1.3's rule (rl) and keep the auxiliary BC loss. Explicit values win, except for rlpd."""
    if cfg.bootstrap == "auto":
        cfg = dataclasses.replace(cfg, bootstrap="max_rl_bc" if cfg.algo in IBRL_FAMILY else "rl")
    if cfg.algo == "rlpd":
        return dataclasses.replace(cfg, entropy=True, use_demos=True)
    return cfg


# Parameter subsets sent from the learner to the actors (SPEC §2), by name.
SUBSETS: dict[str, tuple[str, ...]] = {
    "policy": ("encoder", "actor"),
    "critic": ("critic", "critic_target", "encoder_target"),
    "value": ("value", "value_stats", "normalizer"),
}


def publishable(params: AgentParams, names: Sequence[str] = tuple(SUBSETS)) -> dict[str, dict[str, Any]]:
    """The named parameter subsets {policy, critic, value} the learner publishes (BC is loaded actor-side)."""
    return {name: {field: getattr(params, field) for field in SUBSETS[name]} for name in names}


def with_subsets(params: AgentParams, subsets: dict[str, dict[str, Any]]) -> AgentParams:
    """`params` with the received subsets swapped in (unknown names are an error)."""
    fields: dict[str, Any] = {}
    for name, values in subsets.items():
        if name not in SUBSETS:
            raise ValueError(f"unknown parameter subset {name!r}; known: {', '.join(SUBSETS)}")
        if set(values) != set(SUBSETS[name]):
            raise ValueError(f"parameter subset {name!r} has fields {sorted(values)}, expected {sorted(SUBSETS[name])}")
        fields.update(values)
    return params.replace(**fields)


@dataclasses.dataclass(frozen=True)
class Agent:
    """The jitted functions and static pieces of one algorithm; all state lives in AgentParams/SacState."""

    cfg: AgentConfig
    spec: AlgoSpec
    nets: Networks
    opts: Optimizers
    q_estimation: QEstimation
    update: Callable[[SacState, Batch, jax.Array], tuple[SacState, UpdateMetrics]]
    gate: Callable[[AgentParams, Any, jax.Array], tuple[jax.Array, GateInfo]]
    eval_gate: Callable[[AgentParams, Any, jax.Array], tuple[jax.Array, GateInfo]]
    bc_act: Callable[[AgentParams, Any, jax.Array], jax.Array]
    bc_mode_act: Callable[[AgentParams, Any, jax.Array], jax.Array]
    random_act: Callable[[jax.Array], jax.Array]  # uniform in the action box (cfg.random_steps)

    def init_params(self, key: jax.Array, example_obs: Any, bc: Any = None) -> AgentParams:
        """Fresh parameters; `example_obs` is one observation (no batch dim)."""
        if self.spec.needs_bc and bc is None:
            raise ValueError(f"algo {self.cfg.algo!r} needs a BC policy (bc=...)")
        batched = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], example_obs)
        return init_params(self.nets, self.cfg, key, batched, bc=bc)

    def init_state(self, params: AgentParams) -> SacState:
        """The learner state for online RL (fresh optimizers) from phase-1 (or fresh) params."""
        return init_state(params, self.opts)


def _bc_action(params: AgentParams, obs: Any, key: jax.Array, deterministic: bool = False) -> jax.Array:
    """A sampled (phase-1 rollouts) or modal (evaluation) BC action, clipped to the action box."""
    batched = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], obs)
    dist = bc_dist(params, batched)
    return jnp.clip((dist.mode() if deterministic else dist.sample(key))[0], -1.0, 1.0)


def make_agent(cfg: AgentConfig, action_dim: int = 7, camera_names: Sequence[str] = ()) -> Agent:
    """Everything one algorithm needs, built (and jitted) once."""
    cfg = effective_config(cfg)
    nets = make_networks(cfg, action_dim, camera_names)
    opts = make_optimizers(cfg)
    return Agent(
        cfg=cfg, spec=algo_spec(cfg), nets=nets, opts=opts, q_estimation=QEstimation(nets, cfg),
        update=make_update(nets, cfg, opts), gate=make_gate(nets, cfg), eval_gate=make_gate(nets, cfg, True),
        bc_act=jax.jit(_bc_action), bc_mode_act=jax.jit(lambda p, o, k: _bc_action(p, o, k, True)),
        random_act=jax.jit(lambda k: jax.random.uniform(k, (action_dim,), jnp.float32, -1.0, 1.0)),
    )
