"""Random numbers for a whole stretch of a training loop, drawn in bulk.

On CPU, every call of JAX's default threefry generator lowers to a small
loop of five trips (XLA:CPU emits threefry "rolled" to keep compile times
down), and one DQN iteration used to make about ten such calls (fold in the
step, split for acting, for every environment, exploration draw, random
action, replay rows, ...). Drawing everything an evaluation period needs in
two calls at its start (`draw_noise`) and slicing one `IterationNoise` per
iteration out of it keeps the same distributions at a fraction of the cost
(`benchmarks/dqn.py` measures it), with any key implementation and under
sharding.

`uniform_from_bits` and `randint_from_bits` turn raw uint32 words into the
numbers `jax.random.uniform` and `jax.random.randint` would make of them:
`randint_from_bits(bits(k1), bits(k2), n)` equals `jax.random.randint(key,
shape, 0, n)` for `k1, k2 = jax.random.split(key)`, bit for bit.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from equivlab import checks
from equivlab.rl import keys as keys_lib


def _check_words(name: str, bits) -> None:
  dtype = getattr(bits, "dtype", None)
  if dtype != jnp.uint32:
    raise TypeError(
      f"{name} must be uint32 words (jax.random.bits), got dtype {dtype}."
    )


def uniform_from_bits(bits: jax.Array) -> jax.Array:
  """Floats uniform in `[0, 1)` from uint32 words, as `jax.random.uniform`.

  The top 23 bits fill the mantissa of a float in `[1, 2)`, minus 1.

  Args:
    bits: uint32 words, any shape.

  Returns:
    float32 of the same shape.

  Raises:
    TypeError: for words that are not uint32.
  """
  _check_words("bits", bits)
  mantissa = jnp.right_shift(bits.astype(jnp.uint32), jnp.uint32(9))
  one = jnp.uint32(0x3F800000)
  floats = jax.lax.bitcast_convert_type(mantissa | one, jnp.float32)
  return floats - 1.0


def randint_from_bits(
  higher: jax.Array, lower: jax.Array, span: chex.Numeric
) -> jax.Array:
  """Integers in `[0, span)` from two uint32 words each, as `randint`.

  JAX's `randint` recipe: 64 random bits per value reduced modulo `span`,
  whose bias is of order `span**2 / 2**64` (nil for the sizes used here).

  Args:
    higher: uint32 words, `[...]`.
    lower: uint32 words, same shape.
    span: the number of values, >= 1; may be traced (e.g. a buffer size).

  Returns:
    int32 values in `[0, span)`, same shape.

  Raises:
    TypeError: for words that are not uint32.
    ValueError: for words of different shapes, or a concrete span < 1.
  """
  _check_words("higher", higher)
  _check_words("lower", lower)
  if jnp.shape(higher) != jnp.shape(lower):
    raise ValueError(
      f"higher and lower must have one shape, got {jnp.shape(higher)} and "
      f"{jnp.shape(lower)}."
    )
  if checks.is_concrete(span) and not (jnp.ndim(span) == 0 and span >= 1):
    raise ValueError(f"span must be a number of values >= 1, got {span!r}.")
  span = jnp.maximum(jnp.asarray(span), 1).astype(jnp.uint32)
  # 2**32 mod span, computed as (2**16 mod span)**2 mod span.
  multiplier = jnp.uint32(2**16) % span
  multiplier = (multiplier * multiplier) % span
  offset = (higher % span) * multiplier + lower % span
  return (offset % span).astype(jnp.int32)


class IterationNoise(NamedTuple):
  """The random numbers one loop iteration uses.

  Attributes:
    step_keys: PRNG keys of the environments' transitions, `[num_envs]`.
    reset_keys: PRNG keys of their automatic resets, `[num_envs]`.
    explore: uniforms in `[0, 1)` that decide exploration, `[num_envs]`.
    action_bits: uint32 words for the random actions, `[2, num_envs]`.
    sample_bits: uint32 words for the replay rows, `[2, batch_size]`.
  """

  step_keys: jax.Array
  reset_keys: jax.Array
  explore: jax.Array
  action_bits: jax.Array
  sample_bits: jax.Array


def draw_noise(
  key: chex.PRNGKey, num_iterations: int, num_envs: int, batch_size: int
) -> IterationNoise:
  """Every random number of `num_iterations` iterations, in two draws.

  Args:
    key: a PRNG key (any implementation); not consumed.
    num_iterations: how many iterations, >= 1.
    num_envs: environments per iteration, >= 1.
    batch_size: replay rows sampled per iteration, >= 1.

  Returns:
    An `IterationNoise` whose leaves have a leading `[num_iterations]`
    axis: slice it with `lax.scan`.

  Raises:
    TypeError, ValueError: for counts that are not positive ints, or a key
      that is not one PRNG key.
  """
  keys_lib.check_key(key)
  checks.check_int("num_iterations", num_iterations, minimum=1)
  checks.check_int("num_envs", num_envs, minimum=1)
  checks.check_int("batch_size", batch_size, minimum=1)
  keys_key, bits_key = jax.random.split(key)
  env_keys = jax.random.split(keys_key, (num_iterations, 2, num_envs))
  width = 3 * num_envs + 2 * batch_size
  bits = jax.random.bits(bits_key, (num_iterations, width), jnp.uint32)
  n = num_envs
  return IterationNoise(
    step_keys=env_keys[:, 0],
    reset_keys=env_keys[:, 1],
    explore=uniform_from_bits(bits[:, :n]),
    action_bits=bits[:, n : 3 * n].reshape((num_iterations, 2, n)),
    sample_bits=bits[:, 3 * n :].reshape((num_iterations, 2, batch_size)),
  )
