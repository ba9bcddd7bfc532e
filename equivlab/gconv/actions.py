"""The p4 and p4m actions on images and group feature maps."""

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import groups
from equivlab.gconv.padding import check_rank, check_rotation


def rotate_z2(x: jax.Array, k: int) -> jax.Array:
  """Rotates images `[N, H, W, C]` by `k * 90` degrees: `rot90` on (1, 2)."""
  k = check_rotation(k)
  check_rank(x, 4, "an image batch [N, H, W, C]", "x")
  return jnp.rot90(jnp.asarray(x), k, axes=(1, 2))


def rotate_p4(f: jax.Array, k: int) -> jax.Array:
  """Rotates p4 maps `[N, H, W, C, 4]`: `roll(rot90(f, k), k, axis=-1)`."""
  k = check_rotation(k)
  check_group_map(f, 4, "f")
  return jnp.roll(jnp.rot90(jnp.asarray(f), k, axes=(1, 2)), k, axis=-1)


def mirror_z2(x: jax.Array) -> jax.Array:
  """Mirrors images `[N, H, W, C]` left-right (flips the W axis)."""
  check_rank(x, 4, "an image batch [N, H, W, C]", "x")
  return jnp.flip(jnp.asarray(x), axis=2)


def rotate_p4m(f: jax.Array, k: int) -> jax.Array:
  """Rotates p4m maps `[N, H, W, C, 8]` by `k * 90` degrees.

  Each mirror half `m` of the group axis rolls by k: `(m, r) -> (m, r + k)`.
  """
  k = check_rotation(k)
  check_group_map(f, 8, "f")
  return groups.act_on_map(groups.Element(k, 0), jnp.asarray(f))


def mirror_p4m(f: jax.Array) -> jax.Array:
  """Mirrors p4m maps `[N, H, W, C, 8]`: flips W, `(m, r) -> (1 - m, -r)`."""
  check_group_map(f, 8, "f")
  return groups.act_on_map(groups.Element(0, 1), jnp.asarray(f))


def check_group_map(f, order: int, name: str) -> None:
  check_rank(f, 5, f"a group feature map [N, H, W, C, {order}]", name)
  shape = np.shape(f)
  if shape[-1] != order:
    raise ValueError(
      f"{name} must have a group axis (last) of size {order}, got shape "
      f"{shape} with group axis {shape[-1]}."
    )
