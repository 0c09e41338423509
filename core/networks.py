"""Building blocks shared by policies, critics and value networks."""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "tanh": nn.tanh,
    "elu": nn.elu,
}


def activation_fn(activation: str | Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """An activation function by name ('relu', 'gelu', 'silu', 'tanh', 'elu') or passed through."""
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[activation]


class MLP(nn.Module):
    """Dense -> [LayerNorm] -> activation -> [Dropout] per hidden layer.

    The last layer is activated only when `activate_final` (use it as a trunk; put your own head on top).
    """

    hidden_dims: Sequence[int]
    activation: str | Callable[[jax.Array], jax.Array] = "relu"
    layer_norm: bool = False
    dropout_rate: float | None = None
    activate_final: bool = False
    kernel_init: Callable = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x: jax.Array, training: bool = False) -> jax.Array:
        act = activation_fn(self.activation)
        for i, width in enumerate(self.hidden_dims):
            x = nn.Dense(width, kernel_init=self.kernel_init)(x)
            if i + 1 < len(self.hidden_dims) or self.activate_final:
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
                x = act(x)
                if self.dropout_rate:
                    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not training)
        return x
