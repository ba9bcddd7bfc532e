"""The delayed-recall memory task, its scanned trainer and gradient probe.

Each sequence opens with one of `num_symbols` signal symbols, followed by
`lag` random distractor symbols; after the last step the network must name
the opening symbol (chance = 1 / num_symbols). A recurrent classifier reads
the hidden state after the last step through a linear layer. Recurrent nets
are trained end to end by BPTT in one jitted `lax.scan` of Adam steps; an
echo-state net (Jaeger 2001) keeps its random reservoir and fits only the
readout. `gradient_profile` measures ||dL_T/dh_t|| against T - t, which
decays geometrically in an Elman net (Bengio, Simard & Frasconi 1994,
"Learning long-term dependencies with gradient descent is difficult").
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from equivlab import checks
from equivlab.rnn import esn
from equivlab.rnn.cells import LSTMState, get_cell
from equivlab.rnn.gradient_flow import carry_gradient_norms
from equivlab.rnn.scan import unroll


@dataclasses.dataclass(frozen=True)
class RecallTask:
  """The delayed-recall task: name the first symbol after `lag` distractors.

  Attributes:
    num_symbols: signal symbols, the classes.
    num_distractors: distractor symbols.
  """

  num_symbols: int = 4
  num_distractors: int = 4

  def __post_init__(self):
    checks.check_int("num_symbols", self.num_symbols, minimum=2)
    checks.check_int("num_distractors", self.num_distractors, minimum=1)

  @property
  def dim(self) -> int:
    """The one-hot input size, signal and distractor symbols together."""
    return self.num_symbols + self.num_distractors

  def batch(self, key: jax.Array, size: int, lag: int):
    """`(xs [size, lag + 1, dim] one-hot float32, labels [size])`.

    Raises:
      ValueError: if `size` < 1 or `lag` < 0.
    """
    checks.check_int("size", size, minimum=1)
    checks.check_int("lag", lag, minimum=0)
    return _batch(key, size, lag, self.num_symbols, self.num_distractors)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _batch(key, size: int, lag: int, num_symbols: int, n_dist: int):
  k_sig, k_dist = jax.random.split(key)
  labels = jax.random.randint(k_sig, (size,), 0, num_symbols)
  dist = jax.random.randint(
    k_dist, (size, lag), num_symbols, num_symbols + n_dist
  )
  tokens = jnp.concatenate([labels[:, None], dist], axis=1)
  return jax.nn.one_hot(tokens, num_symbols + n_dist), labels


def init_classifier(key, cell: str, dim: int, hidden: int, classes: int):
  """Parameters of `cell` ("elman", "lstm", "gru") and a linear readout."""
  k_cell, k_out = jax.random.split(key)
  return {
    "cell": get_cell(cell).init(k_cell, dim, hidden),
    "W_out": jax.random.normal(k_out, (classes, hidden)) / np.sqrt(hidden),
    "b_out": jnp.zeros((classes,)),
  }


@functools.partial(jax.jit, static_argnums=0)
def final_logits(cell: str, params, xs: jax.Array) -> jax.Array:
  """Logits from the hidden state after the last step: `[B, T, D] -> [B, K]`."""
  spec = get_cell(cell)
  carry0 = spec.zero_carry(params["W_out"].shape[1], (xs.shape[0],))
  carry, _ = unroll(spec.apply, params["cell"], xs, carry0, time_major=False)
  h = carry.h if isinstance(carry, LSTMState) else carry
  return h @ params["W_out"].T + params["b_out"][None, :]


def accuracy(cell: str, params, xs: jax.Array, labels: jax.Array) -> float:
  """The fraction of sequences whose last-step argmax is the label."""
  return _fraction_right(final_logits(cell, params, xs), labels)


def _fraction_right(logits: jax.Array, labels: jax.Array) -> float:
  """(rows whose argmax is the label) / rows, counted exactly."""
  right = np.asarray(jnp.argmax(logits, axis=-1) == labels)
  return int(right.sum()) / right.size


def train_classifier(
  key: jax.Array,
  cell: str,
  task: RecallTask,
  lag: int,
  *,
  hidden_size: int,
  batch_size: int,
  num_steps: int,
  learning_rate: float,
  clip_norm: float,
):
  """Trains one recurrent classifier at one lag (one jitted scan).

  Step i runs Adam, on gradients clipped to global norm `clip_norm`, on the
  batch of `fold_in(data_key, i)`.

  Returns:
    `(params_at_init, trained_params, losses [num_steps])`.

  Raises:
    ValueError: for an unknown cell, or a count or rate out of range.
  """
  checks.check_int("lag", lag, minimum=0)
  for name, value in (
    ("hidden_size", hidden_size), ("batch_size", batch_size),
    ("num_steps", num_steps),
  ):  # fmt: skip
    checks.check_int(name, value, minimum=1)
  for name, value in (
    ("learning_rate", learning_rate),
    ("clip_norm", clip_norm),
  ):
    checks.check_number(name, value, minimum=0, strict_minimum=True)
  get_cell(cell)
  k_init, k_data = jax.random.split(key)
  params0 = init_classifier(
    k_init, cell, task.dim, hidden_size, task.num_symbols
  )
  tx = optax.chain(
    optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate)
  )
  settings = (cell, task, lag, batch_size, num_steps, tx)
  params, losses = _train_scan(params0, k_data, *settings)
  return params0, params, losses


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _train_scan(params, key, cell, task, lag, batch_size, num_steps, tx):
  def loss_fn(params, xs, labels):
    logits = final_logits(cell, params, xs)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.mean(loss)

  def step(state, i):
    params, opt_state = state
    xs, labels = task.batch(jax.random.fold_in(key, i), batch_size, lag)
    loss, grads = jax.value_and_grad(loss_fn)(params, xs, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, _), losses = jax.lax.scan(
    step, (params, tx.init(params)), jnp.arange(num_steps)
  )
  return params, losses


def measure(
  key: jax.Array,
  cell: str,
  task: RecallTask,
  lag: int,
  eval_batch: tuple[jax.Array, jax.Array],
  probe: tuple[jax.Array, jax.Array],
  **training: Any,
) -> dict[str, Any]:
  """Trains one classifier at one lag (`train_classifier`) and measures it.

  Args:
    key: the run's key.
    cell: the recurrent cell's name.
    task: the task.
    lag: the distractor steps.
    eval_batch: `(xs, labels)` the accuracy is measured on.
    probe: `(xs, labels)` the gradient profiles are averaged over.
    **training: `train_classifier`'s keyword arguments.

  Returns:
    "accuracy" on `eval_batch`, "final_train_loss" (the mean of the last
    20 steps' losses) and "grad_norms" ("init" / "trained" ->
    `gradient_profile` as a list).
  """
  params0, params, losses = train_classifier(key, cell, task, lag, **training)
  return {
    "accuracy": accuracy(cell, params, *eval_batch),
    "final_train_loss": float(jnp.mean(losses[-20:])),
    "grad_norms": {
      stage: gradient_profile(cell, p, *probe).tolist()
      for stage, p in (("init", params0), ("trained", params))
    },
  }


def gradient_profile(cell: str, params, xs, labels) -> np.ndarray:
  """Mean ||dL_T/dh_t|| over a batch, indexed by distance T - t.

  Args:
    cell: the recurrent cell's name.
    params: the classifier's parameters.
    xs: `[B, T, D]` sequences.
    labels: `[B]` their classes.

  Returns:
    `[T]` mean norms; entry d is at t = T - d.
  """
  norms = _carry_gradient_norms(cell, params, xs, labels)  # [B, T]
  return np.asarray(jnp.mean(norms, axis=0)[::-1])


@functools.partial(jax.jit, static_argnums=0)
def _carry_gradient_norms(cell: str, params, xs, labels) -> jax.Array:
  spec = get_cell(cell)
  hidden = params["W_out"].shape[1]

  def one(x, y):
    def final_loss(h):
      logits = params["W_out"] @ h + params["b_out"]
      return jax.nn.logsumexp(logits) - logits[y]

    return carry_gradient_norms(
      spec.apply, params["cell"], x, spec.zero_carry(hidden), final_loss
    )

  return jax.vmap(one)(xs, labels)


def esn_recall(
  key: jax.Array,
  task: RecallTask,
  lag: int,
  eval_batch: tuple[jax.Array, jax.Array],
  *,
  size: int,
  spectral_radius: float,
  input_scale: float,
  train_size: int,
  readout_steps: int,
  ridge_l2: float,
) -> dict[str, Any]:
  """An echo-state net on the task: ridge and gradient-descent readouts.

  Returns:
    `{"esn_ridge": accuracy, "esn_gradient": accuracy}` on `eval_batch`.
  """
  k_res, k_data, k_read = jax.random.split(key, 3)
  params = esn.init_esn(
    k_res, task.dim, size, spectral_radius=spectral_radius,
    input_scale=input_scale,
  )  # fmt: skip
  xs, labels = task.batch(k_data, train_size, lag)
  states = jax.jit(lambda x: esn.esn_states(params, x)[0])
  train_feats, eval_feats = states(xs), states(eval_batch[0])
  targets = jax.nn.one_hot(labels, task.num_symbols)
  ridge = esn.ridge_readout(train_feats, targets, ridge_l2)
  gradient, _ = esn.gradient_readout(
    k_read, train_feats, labels, task.num_symbols, num_steps=readout_steps
  )
  return {
    name: _fraction_right(esn.readout_apply(v, eval_feats), eval_batch[1])
    for name, v in (("esn_ridge", ridge), ("esn_gradient", gradient))
  }
