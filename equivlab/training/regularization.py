"""Regularisation and normalisation, as pure functions.

- Inverted dropout (Srivastava et al. 2014): keep a unit with probability
  `1 - rate` and divide by `1 - rate`, so the expected activation is
  unchanged and evaluation needs no rescaling.
- The L2 penalty `l2 / 2 * sum w^2` over the weights (Goodfellow, Bengio
  & Courville, "Deep Learning", 2016, section 7.1.1) against decoupled
  weight decay (Loshchilov & Hutter 2019): the same under SGD with
  `weight_decay = l2`, different under Adam, whose preconditioner also
  rescales the penalty's gradient.
- Ensembles average predictions, not parameters (Lakshminarayanan et al.,
  "Simple and Scalable Predictive Uncertainty Estimation using Deep
  Ensembles", NeurIPS 2017).
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def dropout(
  key: jax.Array, x: jax.Array, rate: float, *, deterministic: bool = False
) -> jax.Array:
  """Inverted dropout: `x * mask / (1 - rate)`, `mask ~ Bernoulli(1 - rate)`.

  Args:
    key: a PRNG key (unused when `deterministic`).
    x: any array.
    rate: the probability of dropping a unit, in [0, 1).
    deterministic: evaluation mode: return `x` unchanged.

  Returns:
    An array shaped like `x`.

  Raises:
    ValueError: if `rate` is outside [0, 1).
  """
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"rate must be in [0, 1), got {rate}.")
  if deterministic or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def weight_mask(params: PyTree) -> PyTree:
  """True for weight matrices and kernels (ndim >= 2), False elsewhere.

  equivlab's one convention for what the L2 penalty and weight decay act
  on (here, in `equivlab.training` and in the experiments): weights, not
  biases or normalisation scales and shifts.
  """
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def l2_penalty(params: PyTree, l2: float) -> jax.Array:
  """`l2 / 2 * sum w^2` over the weights (`weight_mask`) of `params`.

  The penalty written `lambda ||theta||^2` is this with `l2 = 2 lambda`;
  the factor 1/2 makes the penalty's gradient `l2 * w`, so under SGD the
  penalty and decoupled weight decay with `weight_decay = l2` are the same
  update.
  """
  mask = jax.tree.leaves(weight_mask(params))
  leaves = [p for p, m in zip(jax.tree.leaves(params), mask, strict=True) if m]
  return 0.5 * l2 * sum(jnp.sum(jnp.square(p)) for p in leaves)


def with_l2_penalty(
  loss_fn: Callable[..., jax.Array], l2: float
) -> Callable[..., jax.Array]:
  """`loss_fn(params, *args) + l2_penalty(params, l2)`.

  Args:
    loss_fn: a scalar loss of `(params, *args)`.
    l2: the penalty coefficient, `>= 0`.

  Returns:
    The penalised loss, with the same signature.

  Raises:
    ValueError: if `l2` is negative.
  """
  if l2 < 0:
    raise ValueError(f"l2 must be >= 0, got {l2}.")

  def penalised(params, *args):
    return loss_fn(params, *args) + l2_penalty(params, l2)

  return penalised


def decoupled_weight_decay(
  optimizer: optax.GradientTransformation,
  learning_rate: float,
  weight_decay: float,
) -> optax.GradientTransformation:
  """Adds `-learning_rate * weight_decay * w` to another optimizer's step.

  The decay bypasses the optimizer's preconditioning (Loshchilov & Hutter
  2019) and acts on the weights of `weight_mask`: with `optax.adam(lr)`
  this is `optax.adamw(lr, weight_decay, mask=weight_mask)`.

  Args:
    optimizer: a complete optimizer (its updates already carry `-lr`).
    learning_rate: the step size the decay is scaled by.
    weight_decay: the decay per unit step, `>= 0`.

  Returns:
    An optax `GradientTransformation` (it needs `params` in `update`).

  Raises:
    ValueError: if `weight_decay` is negative.
  """
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
  return optax.chain(
    optimizer,
    optax.add_decayed_weights(-learning_rate * weight_decay, weight_mask),
  )


# ---------------------------------------------------------------------------
# Ensembles.
# ---------------------------------------------------------------------------


def _check_members(params_list: Sequence[PyTree]) -> None:
  """Raises ValueError unless there are members, all of one structure."""
  if not params_list:
    raise ValueError("params_list must hold at least one member, got none.")
  first = jax.tree.structure(params_list[0])
  shapes = [jnp.shape(x) for x in jax.tree.leaves(params_list[0])]
  for m, params in enumerate(params_list[1:], start=1):
    if jax.tree.structure(params) != first or shapes != [
      jnp.shape(x) for x in jax.tree.leaves(params)
    ]:
      raise ValueError(
        f"params_list members must share one structure and shapes; member "
        f"{m} differs from member 0 ({jax.tree.structure(params)} vs "
        f"{first})."
      )


def ensemble_predict(
  apply_fn: Callable[[PyTree, jax.Array], jax.Array],
  params_list: Sequence[PyTree],
  x: jax.Array,
) -> jax.Array:
  """`g(x) = 1/M sum_m f(x; theta_m)`: the average of the members' outputs.

  For classifiers, let `f` return probabilities (a softmax), so that `g`
  is the mixture of the members' predictive distributions; averaging
  logits instead gives a (normalised) geometric mean, another model.

  Args:
    apply_fn: `f(params, x)`.
    params_list: the members' parameters (same structure).
    x: the inputs.

  Returns:
    The averaged predictions.

  Raises:
    ValueError: if `params_list` is empty, its members differ in
      structure, or their predictions differ in shape.
  """
  _check_members(params_list)
  preds = [apply_fn(p, x) for p in params_list]
  shapes = {jnp.shape(p) for p in preds}
  if len(shapes) != 1:
    raise ValueError(
      f"the members' predictions must share one shape, got {sorted(shapes)}."
    )
  return sum(preds) / len(preds)


def average_parameters(params_list: Sequence[PyTree]) -> PyTree:
  """`1/M sum_m theta_m`: parameter averaging, NOT an ensemble.

  Networks trained from different initialisations compute similar
  functions with differently ordered hidden units (any permutation of a
  layer's units, with the next layer's inputs permuted alike, computes
  the same function), so their average mixes unrelated units. Given
  variables with "batch_stats", the running means and variances are
  averaged element-wise too; they are then not the statistics of the
  averaged network's activations.

  Args:
    params_list: parameters of the same structure.

  Returns:
    Their element-wise mean.

  Raises:
    ValueError: if `params_list` is empty or its members differ in
      structure or shapes.
  """
  _check_members(params_list)
  return jax.tree.map(lambda *ps: sum(ps) / len(ps), *params_list)
