"""A character-level LSTM language model trained by truncated BPTT.

The text becomes integer ids over its sorted vocabulary and is cut into
`batch_size` parallel time-major streams. Training runs `tbptt.tbptt_train`
over them in jitted chunks of updates: one Adam update per segment of `tau`
characters, the LSTM state carried across segments with `stop_gradient`
(Williams & Peng 1990, "An efficient gradient-based algorithm for on-line
training of recurrent network trajectories"). `train` is resumable: it
starts from any `(State, Progress)` and hands each chunk boundary worth
keeping to a `save` callback, so the caller chooses the storage. The
chunking does not change the arithmetic. Quality is bits per character on
held-out streams, against the add-one unigram model as a baseline.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from equivlab import checks
from equivlab.rnn.cells import LSTMState, init_lstm, lstm_cell
from equivlab.rnn.scan import unroll
from equivlab.rnn.tbptt import tbptt_train

# Held-out text is read as this many streams side by side.
VALID_STREAMS = 8


def help_topics_text(max_chars: int) -> str:
  """The help topics shipped with CPython (`pydoc_data.topics`), sorted.

  About 460k characters of English and code, no download needed.

  Args:
    max_chars: keep at most this many characters.
  """
  from pydoc_data.topics import topics  # noqa: PLC0415

  return "\n".join(topics[name] for name in sorted(topics))[:max_chars]


class Corpus(NamedTuple):
  """A text as ids, split into training streams and a held-out tail.

  Attributes:
    chars: the vocabulary, sorted; id i is `chars[i]`.
    train_ids: `[N_train]` ids of the training text.
    valid_ids: `[N_valid]` ids of the held-out tail.
    xs: `[T, batch_size]` time-major input streams, T a multiple of tau.
    ys: `[T, batch_size]` the next characters.
    valid: `[L, VALID_STREAMS]` held-out streams.
  """

  chars: list[str]
  train_ids: np.ndarray
  valid_ids: np.ndarray
  xs: jax.Array
  ys: jax.Array
  valid: np.ndarray


def streams(ids: np.ndarray, batch: int, tau: int) -> np.ndarray:
  """`[N]` ids -> `[L, batch]` time-major streams, L a multiple of tau."""
  length = (len(ids) // batch // tau) * tau
  return ids[: batch * length].reshape(batch, length).T


def check_corpus(
  text: str,
  *,
  valid_fraction: float,
  batch_size: int,
  tau: int,
  prompts: Sequence[str] = (),
) -> None:
  """Checks that `text` can feed these streams and prompts.

  Raises:
    ValueError: if the text is too short (each stream needs two segments:
      inputs are shifted by one character) or a prompt is empty or has a
      character the text never has.
    TypeError: if `prompts` is not a sequence of texts.
  """
  split = int(len(text) * (1 - valid_fraction))
  need = batch_size * 2 * tau
  if split < need or len(text) - split < 2 * VALID_STREAMS:
    raise ValueError(
      f"the text is too short for these settings: {len(text)} characters "
      f"and valid_fraction={valid_fraction} leave {split} training and "
      f"{len(text) - split} held-out characters; batch_size={batch_size} "
      f"streams of two segments of tau={tau} need {need} training "
      f"characters, and the held-out tail {2 * VALID_STREAMS}. Lower "
      f"batch_size or tau, or raise max_chars."
    )
  if isinstance(prompts, str) or not isinstance(prompts, tuple | list):
    raise TypeError(f"prompts must be a sequence of texts, got {prompts!r}.")
  vocab = set(text)
  for i, prompt in enumerate(prompts):
    if not isinstance(prompt, str) or not prompt:
      raise ValueError(
        f"prompts[{i}] must be a non-empty text, got {prompt!r}."
      )
    unknown = sorted(set(prompt) - vocab)
    if unknown:
      raise ValueError(
        f"prompts[{i}] = {prompt!r} has characters that never occur in the "
        f"text, so the model has no input for them: {unknown}."
      )


def make_corpus(
  text: str, *, valid_fraction: float, batch_size: int, tau: int
) -> Corpus:
  """`text` as ids: training streams of `batch_size` and a held-out tail."""
  chars = sorted(set(text))
  index = {c: i for i, c in enumerate(chars)}
  ids = np.array([index[c] for c in text], np.int32)
  split = int(len(ids) * (1 - valid_fraction))
  stream = streams(ids[:split], batch_size, tau)
  usable = ((len(stream) - 1) // tau) * tau  # A multiple of tau after shift.
  return Corpus(
    chars=chars,
    train_ids=ids[:split],
    valid_ids=ids[split:],
    xs=jnp.asarray(stream[:-1][:usable]),
    ys=jnp.asarray(stream[1:][:usable]),
    valid=streams(ids[split:], VALID_STREAMS, 1),
  )


def init_params(key: jax.Array, vocab: int, hidden: int) -> dict[str, Any]:
  """An LSTM over one-hot characters and a linear readout to the logits."""
  k_cell, k_out = jax.random.split(key)
  return {
    "cell": init_lstm(k_cell, vocab, hidden),
    "W_out": jax.random.normal(k_out, (vocab, hidden)) / np.sqrt(hidden),
    "b_out": jnp.zeros((vocab,)),
  }


def zero_carry(batch: int, hidden: int) -> LSTMState:
  """The LSTM state of `batch` streams at the start of the text."""
  zeros = jnp.zeros((batch, hidden))
  return LSTMState(zeros, zeros)


def logits(params, carry: LSTMState, tokens: jax.Array):
  """Time-major tokens `[T, B]` -> (final carry, logits `[T, B, V]`)."""
  xs = jax.nn.one_hot(tokens, params["b_out"].shape[0])
  carry, hs = unroll(lstm_cell, params["cell"], xs, carry)
  return carry, hs @ params["W_out"].T + params["b_out"][None, None, :]


def segment_loss(params, tokens, targets, carry):
  """Mean next-character cross-entropy (nats) on a `[tau, B]` segment.

  Returns:
    `(loss, final carry)`, the loss function `tbptt_train` takes.
  """
  carry, out = logits(params, carry, tokens)
  loss = optax.softmax_cross_entropy_with_integer_labels(out, targets)
  return jnp.mean(loss), carry


def sample(
  key: jax.Array, params, prompt_ids: jax.Array, length: int, temperature
) -> jax.Array:
  """`[length]` ids sampled after warming the state up on `prompt_ids`."""
  hidden = params["W_out"].shape[1]
  carry, out = logits(params, zero_carry(1, hidden), prompt_ids[:, None])

  def step(state, k):
    carry, last = state
    token = jax.random.categorical(k, last / temperature)
    carry, out = logits(params, carry, token[None, :])
    return (carry, out[0]), token[0]

  _, ids = jax.lax.scan(step, (carry, out[-1]), jax.random.split(key, length))
  return ids


def sample_texts(
  key: jax.Array,
  params,
  chars: Sequence[str],
  prompts: Sequence[str],
  length: int,
  temperature: float,
) -> list[str]:
  """Each prompt followed by `length` sampled characters (key folded by i)."""
  index = {c: i for i, c in enumerate(chars)}
  texts = []
  for i, prompt in enumerate(prompts):
    ids = jnp.asarray([index[c] for c in prompt], jnp.int32)
    out = sample(jax.random.fold_in(key, i), params, ids, length, temperature)
    texts.append(prompt + "".join(chars[int(j)] for j in out))
  return texts


def unigram_bpc(corpus: Corpus) -> float:
  """Bits per held-out character of add-one unigram training frequencies."""
  counts = np.bincount(corpus.train_ids, minlength=len(corpus.chars)) + 1.0
  probs = counts / counts.sum()
  return float(-np.mean(np.log2(probs[corpus.valid_ids])))


def valid_bpc_fn(corpus: Corpus) -> Callable[[Any], jax.Array]:
  """`params -> bits per character` on the held-out streams, jitted."""
  valid = jnp.asarray(corpus.valid)

  @jax.jit
  def valid_bpc(params):
    carry = zero_carry(valid.shape[1], params["W_out"].shape[1])
    _, out = logits(params, carry, valid[:-1])
    nats = optax.softmax_cross_entropy_with_integer_labels(out, valid[1:])
    return jnp.mean(nats) / math.log(2)

  return valid_bpc


class State(NamedTuple):
  """What training carries from one chunk to the next (all arrays).

  Attributes:
    params: the model's parameters.
    opt_state: the optimizer's state.
    carry: the LSTM state of the streams, crossing chunk boundaries.
  """

  params: Any
  opt_state: Any
  carry: LSTMState


@dataclasses.dataclass
class Progress:
  """Where training stands (JSON values).

  Attributes:
    epoch: finished epochs.
    update: updates done in the current epoch.
    losses: their segment losses (nats).
    history: one record per finished epoch: "epoch", "updates",
      "train_bpc", "valid_bpc".
  """

  epoch: int = 0
  update: int = 0
  losses: list[float] = dataclasses.field(default_factory=list)
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def optimizer(learning_rate: float, clip_norm: float):
  """Adam on gradients clipped to global norm `clip_norm`."""
  return optax.chain(
    optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate)
  )


def init_state(key, corpus: Corpus, hidden: int, tx) -> State:
  """Fresh parameters, `tx`'s state and zero carries of the streams."""
  params = init_params(key, len(corpus.chars), hidden)
  return State(params, tx.init(params), zero_carry(corpus.xs.shape[1], hidden))


def chunk_fn(corpus: Corpus, tx, tau: int):
  """`(state, first_update, num_updates) -> (state, losses)`, jitted."""

  @functools.partial(jax.jit, static_argnums=2)
  def chunk(state: State, first: jax.Array, count: int):
    xs = jax.lax.dynamic_slice_in_dim(corpus.xs, first * tau, count * tau)
    ys = jax.lax.dynamic_slice_in_dim(corpus.ys, first * tau, count * tau)
    params, opt_state, losses, carry = tbptt_train(
      segment_loss, tx, state.params, state.opt_state, xs, ys, state.carry,
      tau,
    )  # fmt: skip
    return State(params, opt_state, carry), losses

  return chunk


def train(
  state: State,
  progress: Progress,
  corpus: Corpus,
  *,
  tx,
  tau: int,
  num_epochs: int,
  chunk_updates: int,
  save: Callable[[State, Progress], None],
  every_chunk: bool = False,
  every_secs: float | None = None,
) -> State:
  """Trains from `(state, progress)` until `num_epochs` epochs are done.

  Each epoch restarts the streams from a zero carry. `save(state,
  progress)` runs at every epoch end, after every chunk if `every_chunk`,
  and after a chunk that ends `every_secs` seconds after the last save.
  `progress` is updated in place.

  Args:
    state: where training starts.
    progress: the epochs and updates `state` has done.
    corpus: the text.
    tx: the optax optimizer `state.opt_state` belongs to.
    tau: the truncated-BPTT segment length.
    num_epochs: the epochs to reach.
    chunk_updates: updates per jitted chunk (at most an epoch).
    save: called with the state and progress worth keeping.
    every_chunk: also save after every chunk.
    every_secs: also save when this many seconds have passed.

  Returns:
    The trained state.

  Raises:
    ValueError: if `tau`, `num_epochs` or `chunk_updates` is not an int
      >= 1, or the corpus has no update of `tau` characters.
  """
  for name, value in (
    ("tau", tau), ("num_epochs", num_epochs), ("chunk_updates", chunk_updates),
  ):  # fmt: skip
    checks.check_int(name, value, minimum=1)
  if corpus.xs.shape[0] < tau:
    raise ValueError(
      f"tau must be at most the {corpus.xs.shape[0]} characters of each "
      f"training stream, got {tau}."
    )
  chunk, valid_bpc = chunk_fn(corpus, tx, tau), valid_bpc_fn(corpus)
  per_epoch = corpus.xs.shape[0] // tau
  size = min(chunk_updates, per_epoch)
  saved_at = time.monotonic()
  while progress.epoch < num_epochs:
    if progress.update == 0:
      state = state._replace(carry=zero_carry(*state.carry.h.shape))
    count = min(size, per_epoch - progress.update)
    state, losses = chunk(state, jnp.int32(progress.update), count)
    progress.losses += np.asarray(losses).tolist()
    progress.update += count
    if progress.update == per_epoch:
      _end_epoch(progress, per_epoch, float(valid_bpc(state.params)))
    elif not (
      every_chunk or time.monotonic() - saved_at >= (every_secs or math.inf)
    ):
      continue
    save(state, progress)
    saved_at = time.monotonic()
  return state


def _end_epoch(progress: Progress, per_epoch: int, valid_bpc: float) -> None:
  train_nats = float(jnp.mean(jnp.asarray(progress.losses, jnp.float32)))
  progress.epoch += 1
  progress.history.append(
    {
      "epoch": progress.epoch,
      "updates": progress.epoch * per_epoch,
      "train_bpc": train_nats / math.log(2),
      "valid_bpc": valid_bpc,
    }
  )
  progress.update, progress.losses = 0, []
  logging.info("language model epoch %s", progress.history[-1])
