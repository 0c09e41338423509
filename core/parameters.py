"""An agent's parameters outside the update: initialised once, published as named subsets, applied on the actor,
read back from a learner checkpoint for evaluation, and checked for finiteness before they leave the learner.

    params = init_agent_params(agent, key, example_obs(state_dim, images), bc)
    subsets = publishable(params)                          # learner: {"policy", "critic", "value"} (+ "bc")
    params = apply_parameter_set(template, subsets)        # actor: the received subsets on its template
    params, meta = load_checkpoint_params(path, template)  # evaluation: no Learner, no optimizer state
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from q2rl.core.sac import AgentParams

LEARNER_CHECKPOINT_KIND = "learner_state"
# What the learner publishes, by subset name (docs/design.md#parameter-sets); pi_BC is loaded on both sides.
SUBSETS: dict[str, tuple[str, ...]] = {
    "policy": ("encoder", "actor"),
    "critic": ("critic", "critic_target", "encoder_target"),
    "value": ("value", "value_stats", "normalizer"),
    "bc": ("bc",),  # only an algorithm that trains pi_BC publishes it (batch_online); loaded on both sides else
}


def init_agent_params(agent, key: jax.Array, example: dict, bc) -> AgentParams:
    """The agent's fresh parameters, initialised in one compiled call (eagerly, every op compiles on its own:
    several times slower at process start)."""
    return jax.jit(lambda k: agent.init_params(k, example, bc=bc))(key)


def publishable(params: AgentParams, with_bc: bool = False) -> dict[str, dict[str, Any]]:
    """The named parameter subsets {policy, critic, value} the learner publishes, and pi_BC (`with_bc`) when the
    learner trains it."""
    return {name: {field: getattr(params, field) for field in fields} for name, fields in SUBSETS.items()
            if with_bc or name != "bc"}


def apply_parameter_set(template: AgentParams, subsets: Mapping[str, Any]) -> AgentParams:
    """The actor's params: `template` with a received set of named subsets (nested dicts of arrays off the wire, or
    the learner's own typed trees in one process) swapped in, typed like it; unknown names are an error."""
    from flax.serialization import from_state_dict, to_state_dict

    fields: dict[str, Any] = {}
    for name, values in subsets.items():
        if name not in SUBSETS:
            raise ValueError(f"unknown parameter subset {name!r}; known: {', '.join(SUBSETS)}")
        if set(values) != set(SUBSETS[name]):
            raise ValueError(f"parameter subset {name!r} has fields {sorted(values)}, expected {sorted(SUBSETS[name])}")
        fields.update({f: from_state_dict(getattr(template, f), to_state_dict(tree)) for f, tree in values.items()})
    return template.replace(**fields)


def load_learner_checkpoint(path: str | Path, target: Any = None):
    """A learner checkpoint (core.checkpoint.Checkpoint), checked to be one; `target` as load_checkpoint's."""
    from q2rl.core.checkpoint import CheckpointError, load_checkpoint

    ckpt = load_checkpoint(path, target=target)
    kind = ckpt.metadata.get("kind")
    state = ckpt.state if isinstance(ckpt.state, dict) else {"params": getattr(ckpt.state, "params", None)}
    if kind != LEARNER_CHECKPOINT_KIND or state.get("params") is None:
        raise CheckpointError(f"{path}: not a learner checkpoint (kind {kind!r})")
    return ckpt


def load_checkpoint_params(path: str | Path, template: AgentParams) -> tuple[AgentParams, dict]:
    """The parameters saved in a learner checkpoint, typed like `template`, and the checkpoint's metadata.
    Only what acting needs is read; the optimizer state stays in the file."""
    from flax.serialization import from_state_dict

    from q2rl.core.checkpoint import CheckpointError

    ckpt = load_learner_checkpoint(path)
    try:
        return from_state_dict(template, ckpt.state["params"]), ckpt.metadata
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: its parameters do not match this run's networks ({e})") from None


def non_finite_leaves(tree: Any) -> list[str]:
    """Paths of the floating-point leaves of a host pytree that hold a NaN or an infinity."""
    return [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.all(np.isfinite(leaf))]
