"""Observation encoders: the state vector as is, plus a small conv net per camera (features concatenated).

Observations follow q2rl.interfaces: {"state": f32[..., D], "images": {name: u8[..., H, W, 3]}}; any number
of leading batch dimensions. A policy with `camera_names=()` reads only the state.

The frozen-encoder view of an observation (docs/design.md#pixels-and-the-frozen-encoder) replaces the images by
pi_BC's conv features of them, computed once per frame: {"state": f32[..., D], "bc_features": {name: f32[..., F]}}.
An ObsEncoder with `image_input="bc_features"` reads those and has no conv of its own.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvEncoder(nn.Module):
    """uint8 HxWx3 image -> feature vector: strided 3x3 convs, then Dense + LayerNorm + tanh (DrQ style)."""

    channels: Sequence[int] = (32, 32, 32, 32)
    strides: Sequence[int] = (2, 2, 2, 1)
    feature_dim: int = 64

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        x = image.astype(jnp.float32) / 255.0 - 0.5
        for width, stride in zip(self.channels, self.strides):
            x = nn.relu(nn.Conv(width, (3, 3), strides=(stride, stride), padding="SAME")(x))
        x = x.reshape(*x.shape[:-3], -1)
        x = nn.Dense(self.feature_dim)(x)
        return jnp.tanh(nn.LayerNorm()(x))


BC_FEATURES = "bc_features"  # the observation key of the frozen-encoder view
# The observation key of a recurrent pi_BC's memory ({"h", "c", "t"}), carried with the observation it is about to
# read: the actor adds it before its gate, replay stores it with every frame (docs/design.md#recurrent-bc).
BC_CARRY = "bc_carry"


def conv_name(camera: str) -> str:
    """The parameter name of a camera's ConvEncoder inside an ObsEncoder."""
    return f"conv_{camera}"


class ObsEncoder(nn.Module):
    """Concatenates the state with one feature vector per camera in `camera_names`: a ConvEncoder of its own over
    obs["images"][name] (`image_input="pixels"`), or pi_BC's frozen features obs["bc_features"][name]; with
    `read_bc_memory`, also a recurrent pi_BC's memory (h, c) when the observation carries one."""

    camera_names: Sequence[str] = ()
    channels: Sequence[int] = (32, 32, 32, 32)
    strides: Sequence[int] = (2, 2, 2, 1)
    feature_dim: int = 64
    image_input: str = "pixels"
    read_bc_memory: bool = False

    @nn.compact
    def __call__(self, obs: Mapping[str, Any]) -> jax.Array:
        parts = [obs["state"].astype(jnp.float32)]
        for name in self.camera_names:
            if self.image_input == BC_FEATURES:
                parts.append(obs[BC_FEATURES][name].astype(jnp.float32))
            else:
                encoder = ConvEncoder(self.channels, self.strides, self.feature_dim, name=conv_name(name))
                parts.append(encoder(obs["images"][name]))
        if self.read_bc_memory and BC_CARRY in obs:
            parts += [obs[BC_CARRY]["h"].astype(jnp.float32), obs[BC_CARRY]["c"].astype(jnp.float32)]
        return jnp.concatenate(parts, axis=-1)


def random_shift(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """DrQ augmentation: pad [B, H, W, C] images by edge replication, crop back at a random offset per image."""
    if pad <= 0:
        return images
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * pad + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def augment_observation(key: jax.Array, obs: Mapping[str, Any], pad: int = 4) -> dict[str, Any]:
    """Random-shift every camera image of a batched observation (independent offsets per camera)."""
    images = obs.get("images") or {}
    if not images or pad <= 0:
        return dict(obs)
    keys = jax.random.split(key, len(images))
    shifted = {name: random_shift(k, images[name], pad) for k, name in zip(keys, sorted(images))}
    return {**obs, "images": shifted}
