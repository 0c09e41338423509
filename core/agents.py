"""Algorithm selection (docs/design.md#baselines-and-ablations): Q2RL, its ablations and the baselines from one set of functions.

    agent = make_agent(cfg, action_dim=7, camera_names=())
    params = agent.init_params(key, example_obs, bc=bc_policy)
    if agent.spec.q_estimation:
        params, report = agent.q_estimation.fit(params, rollout_episodes, key, init_critic=agent.spec.init_critic)
    state = agent.init_state(params)
    state, metrics = agent.update(state, batches, key)          # learner (batches: [utd, B, ...])
    action, info = agent.gate(params, obs, key)                   # actor, one observation

Per algorithm, what differs is only its row of ALGO_RULES (agent_config.py), read here, by the gate and by the config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from q2rl.config import ConfigError
from q2rl.core.agent_config import AgentConfig, AlgoRules
from q2rl.core.encoders import BC_CARRY
from q2rl.core.gating import GateInfo, make_gate
from q2rl.core.q_estimation import QEstimation
from q2rl.core.replay import Batch, FrameCarry
from q2rl.core.sac import (AgentParams, Networks, Optimizers, SacState, UpdateMetrics, actor_dist, bc_dist,
                           frozen_encoder, init_params, init_state, make_networks, make_optimizers, make_update,
                           observe)


@dataclasses.dataclass(frozen=True)
class Agent:
    """The jitted functions and static pieces of one algorithm; all state lives in AgentParams/SacState."""

    cfg: AgentConfig
    spec: AlgoRules  # cfg's row of ALGO_RULES, with the config's choices (entropy, uses_demos) filled in
    nets: Networks
    opts: Optimizers
    q_estimation: QEstimation
    update: Callable[[SacState, Batch, jax.Array], tuple[SacState, UpdateMetrics]]
    # The same update, consuming the state it is given (its buffers are reused): for an owner that keeps only the
    # newest state, as the learner does.
    update_donating: Callable[[SacState, Batch, jax.Array], tuple[SacState, UpdateMetrics]]
    gate: Callable[[AgentParams, Any, jax.Array], tuple[jax.Array, GateInfo]]
    eval_gate: Callable[[AgentParams, Any, jax.Array], tuple[jax.Array, GateInfo]]
    bc_act: Callable[[AgentParams, Any, jax.Array], jax.Array]
    bc_mode_act: Callable[[AgentParams, Any, jax.Array], jax.Array]
    rl_act: Callable[[AgentParams, Any, jax.Array], jax.Array]  # pi_RL alone (`q2rl deploy --policy rl`)
    rl_mode_act: Callable[[AgentParams, Any, jax.Array], jax.Array]
    random_act: Callable[[jax.Array], jax.Array]  # uniform in the action box (cfg.random_steps)
    # obs -> the view the networks read (core.sac.observe), jitted: replay stores frames in it (None: obs as is)
    frame_view: Callable[[Any, Any], Any] | None
    # (bc, obs holding pi_BC's memory under BC_CARRY) -> its memory after obs, jitted: a recurrent pi_BC's step
    bc_carry_step: Callable[[Any, Any], Any]

    def init_params(self, key: jax.Array, example_obs: Any, bc: Any = None) -> AgentParams:
        """Fresh parameters; `example_obs` is one observation (no batch dim)."""
        if self.spec.needs_bc and bc is None:
            raise ValueError(f"algo {self.cfg.algo!r} needs a BC policy (bc=...)")
        if bc is not None and bc.recurrent:
            if self.spec.policy_objective == "imitation":
                raise ConfigError(f"agent.algo: {self.cfg.algo} retrains pi_BC by imitation of single stored steps, "
                                  "but this pi_BC is recurrent (bc.train.policy.kind: gmm_rnn), which trains on "
                                  "windows of steps; use a gmm or gaussian pi_BC with this algorithm")
            example_obs = {**example_obs, BC_CARRY: bc.initial_carry()}  # the memory every observation carries
        if frozen_encoder(self.nets):
            problem = frozen_encoder_problem(self.cfg, self.nets.encoder.camera_names, bc.camera_names)
            if problem:
                raise ConfigError(problem)
        batched = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], example_obs)
        return init_params(self.nets, self.cfg, key, observe(self.nets, bc, batched), bc=bc)

    def frame_carry(self, bc: Any) -> FrameCarry | None:
        """How replay keeps a recurrent pi_BC's memory with every frame (None for a feed-forward pi_BC)."""
        if bc is None or not bc.recurrent:
            return None
        return FrameCarry(jax.device_get(bc.initial_carry()), lambda obs: self.bc_carry_step(bc, obs))

    def init_state(self, params: AgentParams) -> SacState:
        """The learner state for online RL (fresh optimizers) from phase-1 (or fresh) params."""
        return init_state(params, self.opts, self.cfg)


def frozen_encoder_problem(cfg: AgentConfig, cameras: Sequence[str], bc_cameras: Sequence[str]) -> str | None:
    """Why the frozen image encoder cannot serve a run with `cameras` from a pi_BC that reads `bc_cameras` (None:
    it can, or the agent does not use it)."""
    missing = sorted(set(cameras) - set(bc_cameras))
    if cfg.image_encoder != "frozen_bc" or not missing:
        return None
    return (f"agent.image_encoder: frozen_bc reads pi_BC's features of each camera image, but pi_BC reads cameras "
            f"{list(bc_cameras)} and not {missing}: train pi_BC on the run's cameras (bc.train.cameras), or set "
            "agent.image_encoder: learned")


def _bc_action(params: AgentParams, obs: Any, key: jax.Array, deterministic: bool = False) -> jax.Array:
    """A sampled (phase-1 rollouts) or modal (evaluation) BC action, clipped to the action box."""
    batched = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], obs)
    dist = bc_dist(params, batched)  # pi_BC reads the images or their frozen view alike
    return jnp.clip((dist.mode() if deterministic else dist.sample(key))[0], -1.0, 1.0)


def _rl_action(nets: Networks, params: AgentParams, obs: Any, key: jax.Array, deterministic: bool = False
               ) -> jax.Array:
    """pi_RL's own action, sampled or its mode (tanh of the mean), with no gate."""
    batched = observe(nets, params.bc, jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], obs))
    dist = actor_dist(nets, params, batched)
    return (dist.mode() if deterministic else dist.sample(key))[0]


def make_agent(cfg: AgentConfig, action_dim: int = 7, camera_names: Sequence[str] = ()) -> Agent:
    """Everything one algorithm needs, built (and jitted) once."""
    nets = make_networks(cfg, action_dim, camera_names)
    opts = make_optimizers(cfg)
    spec = dataclasses.replace(cfg.rules, entropy=cfg.entropy, uses_demos=cfg.use_demos)
    return Agent(
        cfg=cfg, spec=spec, nets=nets, opts=opts, q_estimation=QEstimation(nets, cfg),
        update=make_update(nets, cfg, opts), update_donating=make_update(nets, cfg, opts, donate=True), gate=make_gate(nets, cfg), eval_gate=make_gate(nets, cfg, True),
        bc_act=jax.jit(_bc_action), bc_mode_act=jax.jit(lambda p, o, k: _bc_action(p, o, k, True)),
        rl_act=jax.jit(lambda p, o, k: _rl_action(nets, p, o, k)),
        rl_mode_act=jax.jit(lambda p, o, k: _rl_action(nets, p, o, k, True)),
        random_act=jax.jit(lambda k: jax.random.uniform(k, (action_dim,), jnp.float32, -1.0, 1.0)),
        frame_view=jax.jit(lambda bc, obs: observe(nets, bc, obs)) if frozen_encoder(nets) else None,
        bc_carry_step=jax.jit(lambda bc, obs: bc.next_carry(obs)),
    )
