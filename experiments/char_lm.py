r"""A character-level LSTM language model trained with truncated BPTT.

The text ships with Python: the help topics of `pydoc_data.topics` (the pages
`help("assert")` etc. print, ~460k characters of English and code), so no
download is needed. The text is cut into `batch_size` parallel streams; each
epoch runs `rnn.tbptt_train` over them: one Adam update per segment of `tau`
characters, the LSTM state carried across segments with `stop_gradient`
(truncated BPTT, Williams & Peng 1990). Reports bits per character on a
held-out tail of the text (against the unigram entropy as a baseline) and
samples a few lines.

    python -m experiments.char_lm

The updates of an epoch run in jitted chunks (`checkpoint_every_steps`
updates, or 16); the parameters, Adam's state, the LSTM state and the
history go to `<workdir>/checkpoint.npz` at every epoch end, every
`checkpoint_every_steps` updates and whenever `checkpoint_every_secs` have
passed. The same command again resumes from there and ends with the same
results.json as an uninterrupted run (the chunking does not change the
arithmetic). An unreadable checkpoint is reported in one line and training
starts over; one of other settings is refused, naming them, and so is a
workdir in use by a live run.

Writes into --workdir (default runs/char_lm): results.json, results.md
(the table), timings.json, samples.txt, bpc.png and checkpoint.npz.
"""

import dataclasses
import functools
import math
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from equivlab import checks, rnn
from equivlab.analysis import tables, viz
from equivlab.training import checkpoint, npz, sweeps
from experiments import _common

# Updates per jitted chunk when --checkpoint_every_steps is unset: how often
# the wall-time checkpoint is considered.
TIME_CHECK_UPDATES = 16
# Fields that do not change the trained parameters: a checkpoint made with
# other values of these is resumed.
_RESUMABLE_FIELDS = (
  "sample_length",
  "temperature",
  "prompts",
  "checkpoint_every_steps",
  "checkpoint_every_secs",
)
_VALID_STREAMS = 8


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of the character-level language model.

  Attributes:
    max_chars: characters of the help text to use (at most all of it).
    valid_fraction: the held-out tail of the text, in (0, 1).
    hidden_size: LSTM units.
    batch_size: parallel streams the training text is cut into.
    tau: the truncated-BPTT segment length (characters per update).
    num_epochs: passes over the training text.
    learning_rate: Adam's step size.
    clip_norm: gradients are clipped to this global norm.
    sample_length: characters sampled after each prompt.
    temperature: the sampling temperature (> 0; lower is greedier).
    prompts: texts the samples start from, comma-separated (the flag
      parser strips spaces around each); their characters must occur in
      the text.
    seed: seed of the weights and the samples.
    checkpoint_every_steps: also checkpoint every this many updates within
      an epoch (runs always checkpoint at every epoch end).
    checkpoint_every_secs: also checkpoint when this many seconds have
      passed since the last checkpoint (checked every
      checkpoint_every_steps updates, or every 16).
  """

  max_chars: int = 200_000
  valid_fraction: float = 0.1
  hidden_size: int = 256
  batch_size: int = 32
  tau: int = 50
  num_epochs: int = 10
  learning_rate: float = 3e-3
  clip_norm: float = 1.0
  sample_length: int = 200
  temperature: float = 0.7
  prompts: tuple[str, ...] = ("The ", "A list ", "If the ")
  seed: int = 0
  checkpoint_every_steps: int | None = None
  checkpoint_every_secs: float | None = 300.0

  def __post_init__(self):
    _common.check_config(self)
    for name in ("max_chars", "hidden_size", "tau", "sample_length"):
      checks.check_int(name, getattr(self, name), minimum=1)
    checks.check_number(
      "valid_fraction",
      self.valid_fraction,
      minimum=0,
      maximum=1,
      strict_minimum=True,
      strict_maximum=True,
    )
    for name in ("clip_norm", "temperature"):
      value = getattr(self, name)
      checks.check_number(name, value, minimum=0, strict_minimum=True)
    _check_text(self)


def load_text(max_chars: int) -> str:
  """The help topics shipped with CPython, in a fixed (sorted) order."""
  from pydoc_data.topics import topics  # noqa: PLC0415

  text = "\n".join(topics[name] for name in sorted(topics))
  return text[:max_chars]


def _check_text(config: Config) -> None:
  """Raises ValueError if the text is too short or a prompt is unknown."""
  text = load_text(config.max_chars)
  split = int(len(text) * (1 - config.valid_fraction))
  # Each stream needs two segments: inputs are shifted by one character.
  need = config.batch_size * 2 * config.tau
  if split < need or len(text) - split < 2 * _VALID_STREAMS:
    raise ValueError(
      f"the text is too short for these settings: max_chars="
      f"{config.max_chars} and valid_fraction={config.valid_fraction} "
      f"leave {split} training and {len(text) - split} held-out "
      f"characters; batch_size={config.batch_size} streams of two "
      f"segments of tau={config.tau} need {need} training characters, and "
      f"the held-out tail {2 * _VALID_STREAMS}. Lower batch_size or tau, "
      f"or raise max_chars."
    )
  if isinstance(config.prompts, str) or not isinstance(
    config.prompts, tuple | list
  ):
    raise TypeError(
      f"prompts must be a sequence of texts, got {config.prompts!r}."
    )
  vocab = set(text)
  for i, prompt in enumerate(config.prompts):
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


class Data(NamedTuple):
  """The text as ids.

  Attributes:
    chars: the vocabulary, sorted; id i is `chars[i]`.
    train_ids: `[N_train]` ids of the training text.
    valid_ids: `[N_valid]` ids of the held-out tail.
    xs: `[T, batch_size]` time-major input streams, T a multiple of tau.
    ys: `[T, batch_size]` the next characters.
    valid: `[L, 8]` held-out streams.
  """

  chars: list[str]
  train_ids: np.ndarray
  valid_ids: np.ndarray
  xs: jax.Array
  ys: jax.Array
  valid: np.ndarray


def _streams(ids: np.ndarray, batch: int, tau: int) -> np.ndarray:
  """[N] ids -> [L, B] time-major parallel streams, L a multiple of tau."""
  length = (len(ids) // batch // tau) * tau
  return ids[: batch * length].reshape(batch, length).T


def load_data(config: Config) -> Data:
  """The text of `config`, split, as ids and training streams."""
  text = load_text(config.max_chars)
  chars = sorted(set(text))
  index = {c: i for i, c in enumerate(chars)}
  ids = np.array([index[c] for c in text], np.int32)
  split = int(len(ids) * (1 - config.valid_fraction))
  stream = _streams(ids[:split], config.batch_size, config.tau)
  xs, ys = stream[:-1], stream[1:]
  # Keep T a multiple of tau after the one-step shift.
  usable = (len(xs) // config.tau) * config.tau
  return Data(
    chars=chars,
    train_ids=ids[:split],
    valid_ids=ids[split:],
    xs=jnp.asarray(xs[:usable]),
    ys=jnp.asarray(ys[:usable]),
    valid=_streams(ids[split:], _VALID_STREAMS, 1),
  )


def _init(key, vocab: int, hidden: int):
  k_cell, k_out = jax.random.split(key)
  return {
    "cell": rnn.init_lstm(k_cell, vocab, hidden),
    "W_out": jax.random.normal(k_out, (vocab, hidden)) / np.sqrt(hidden),
    "b_out": jnp.zeros((vocab,)),
  }


def _logits(params, carry, tokens):
  """Time-major tokens [T, B] -> (final carry, logits [T, B, V])."""
  vocab = params["b_out"].shape[0]
  xs = jax.nn.one_hot(tokens, vocab)
  carry, hs = rnn.unroll(rnn.lstm_cell, params["cell"], xs, carry)
  return carry, hs @ params["W_out"].T + params["b_out"][None, None, :]


def segment_loss(params, tokens, targets, carry):
  """Mean next-character cross-entropy (nats) on a [tau, B] segment."""
  carry, logits = _logits(params, carry, tokens)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.mean(loss), carry


def _zero_carry(batch: int, hidden: int) -> rnn.LSTMState:
  zeros = jnp.zeros((batch, hidden))
  return rnn.LSTMState(zeros, zeros)


def sample(key, params, prompt_ids, length: int, temperature: float):
  """Samples `length` ids after warming the state up on `prompt_ids`."""
  hidden = params["W_out"].shape[1]
  carry, logits = _logits(params, _zero_carry(1, hidden), prompt_ids[:, None])

  def step(state, k):
    carry, last = state
    token = jax.random.categorical(k, last / temperature)
    carry, logits = _logits(params, carry, token[None, :])
    return (carry, logits[0]), token[0]

  keys = jax.random.split(key, length)
  _, ids = jax.lax.scan(step, (carry, logits[-1]), keys)
  return ids


# ---------------------------------------------------------------------------
# Training in chunks of updates, with checkpoints between them.
# ---------------------------------------------------------------------------


class State(NamedTuple):
  """What training carries from one chunk to the next (all arrays).

  Attributes:
    params: the model's parameters.
    opt_state: Adam's state.
    carry: the LSTM state of the streams, crossing chunk boundaries.
  """

  params: Any
  opt_state: Any
  carry: rnn.LSTMState


@dataclasses.dataclass
class Progress:
  """Where training stands (JSON, saved beside the arrays).

  Attributes:
    epoch: finished epochs.
    update: updates done in the current epoch.
    losses: their segment losses (nats, float32 values).
    history: one record per finished epoch.
  """

  epoch: int = 0
  update: int = 0
  losses: list[float] = dataclasses.field(default_factory=list)
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _optimizer(config: Config) -> optax.GradientTransformation:
  return optax.chain(
    optax.clip_by_global_norm(config.clip_norm),
    optax.adam(config.learning_rate),
  )


def _fresh_state(config: Config, data: Data) -> State:
  params = _init(
    jax.random.split(jax.random.key(config.seed))[0],
    len(data.chars),
    config.hidden_size,
  )
  return State(
    params,
    _optimizer(config).init(params),
    _zero_carry(config.batch_size, config.hidden_size),
  )


def _chunk_fn(config: Config, data: Data):
  """`(state, first_update, num_updates) -> (state, losses)`, jitted."""
  optimizer, tau = _optimizer(config), config.tau

  @functools.partial(jax.jit, static_argnums=2)
  def chunk(state: State, first: jax.Array, count: int):
    xs = jax.lax.dynamic_slice_in_dim(data.xs, first * tau, count * tau)
    ys = jax.lax.dynamic_slice_in_dim(data.ys, first * tau, count * tau)
    params, opt_state, losses, carry = rnn.tbptt_train(
      segment_loss, optimizer, state.params, state.opt_state, xs, ys,
      state.carry, tau,
    )  # fmt: skip
    return State(params, opt_state, carry), losses

  return chunk


def _valid_bpc_fn(data: Data):
  valid = jnp.asarray(data.valid)

  @jax.jit
  def valid_bpc(params):
    hidden = params["W_out"].shape[1]
    carry = _zero_carry(valid.shape[1], hidden)
    _, logits = _logits(params, carry, valid[:-1])
    nats = optax.softmax_cross_entropy_with_integer_labels(logits, valid[1:])
    return jnp.mean(nats) / math.log(2)

  return valid_bpc


def _settings(config: Config) -> dict[str, Any]:
  """The fields the trained parameters depend on, as JSON values."""
  fields = dataclasses.asdict(config)
  return sweeps.to_json(
    {k: v for k, v in fields.items() if k not in _RESUMABLE_FIELDS}
  )


def save_checkpoint(
  path: pathlib.Path, config: Config, state: State, progress: Progress
) -> None:
  """Writes the state and progress to `path` atomically (one .npz file)."""
  meta = {"settings": _settings(config), **dataclasses.asdict(progress)}
  npz.save_tree(path, state, meta)


def load_checkpoint(
  path: pathlib.Path, config: Config, template: State
) -> tuple[State, Progress] | None:
  """The state and progress saved at `path`; None if there is none.

  A checkpoint that cannot be read is reported in one line and training
  starts over.

  Raises:
    ValueError: if the checkpoint was made with other settings.
  """
  restored = npz.load_tree(path, template, _settings(config))
  if restored is None:
    return None
  state, meta, _ = restored
  progress = Progress(**{k: v for k, v in meta.items() if k != "settings"})
  return state, progress


def _end_epoch(progress: Progress, num_updates: int, valid_bpc: float) -> None:
  train_nats = float(jnp.mean(jnp.asarray(progress.losses, jnp.float32)))
  progress.epoch += 1
  progress.history.append(
    {
      "epoch": progress.epoch,
      "updates": progress.epoch * num_updates,
      "train_bpc": train_nats / math.log(2),
      "valid_bpc": valid_bpc,
    }
  )
  progress.update, progress.losses = 0, []
  logging.info("char_lm %s", progress.history[-1])


def train(config: Config, data: Data, workdir: pathlib.Path):
  """Trains (resuming from `workdir`'s checkpoint); the params and history.

  Returns:
    `(params, history, resumed_at)`: the trained parameters, one record
    per epoch, and the (epoch, update) training resumed at.
  """
  path = workdir / "checkpoint.npz"
  state = _fresh_state(config, data)
  restored = load_checkpoint(path, config, state)
  state, progress = restored or (state, Progress())
  resumed_at = (progress.epoch, progress.update)
  chunk_fn, valid_bpc = _chunk_fn(config, data), _valid_bpc_fn(data)
  per_epoch = data.xs.shape[0] // config.tau
  size = min(config.checkpoint_every_steps or TIME_CHECK_UPDATES, per_epoch)
  saved_at = time.monotonic()
  while progress.epoch < config.num_epochs:
    if progress.update == 0:
      zeros = _zero_carry(config.batch_size, config.hidden_size)
      state = state._replace(carry=zeros)
    count = min(size, per_epoch - progress.update)
    state, losses = chunk_fn(state, jnp.int32(progress.update), count)
    progress.losses += np.asarray(losses).tolist()
    progress.update += count
    if progress.update == per_epoch:
      _end_epoch(progress, per_epoch, float(valid_bpc(state.params)))
    elif not (
      config.checkpoint_every_steps
      or time.monotonic() - saved_at
      >= (config.checkpoint_every_secs or math.inf)
    ):
      continue
    save_checkpoint(path, config, state, progress)
    saved_at = time.monotonic()
  return state.params, progress.history, resumed_at


# ---------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------


def _samples(config: Config, data: Data, params) -> list[str]:
  index = {c: i for i, c in enumerate(data.chars)}
  key = jax.random.split(jax.random.key(config.seed))[1]
  samples = []
  for i, prompt in enumerate(config.prompts):
    prompt_ids = jnp.asarray([index[c] for c in prompt], jnp.int32)
    out = sample(
      jax.random.fold_in(key, i),
      params,
      prompt_ids,
      config.sample_length,
      config.temperature,
    )
    samples.append(prompt + "".join(data.chars[int(j)] for j in out))
  return samples


def unigram_bpc(data: Data) -> float:
  """Bits per held-out character of add-one unigram frequencies of training."""
  counts = np.bincount(data.train_ids, minlength=len(data.chars)) + 1.0
  probs = counts / counts.sum()
  return float(-np.mean(np.log2(probs[data.valid_ids])))


def _table(results: dict[str, Any]) -> str:
  rows = [
    {
      "epoch": r["epoch"],
      "updates": r["updates"],
      "train bits/char": f"{r['train_bpc']:.3f}",
      "valid bits/char": f"{r['valid_bpc']:.3f}",
    }
    for r in results["history"]
  ]
  return tables.format_table(rows) + (
    f"\nHeld-out bits per character {results['valid_bpc']:.3f} against "
    f"{results['unigram_bpc']:.3f} for a unigram model "
    f"({results['num_chars']:,} characters, vocabulary "
    f"{results['vocab_size']}; one seed)."
  )


def _figure(workdir: pathlib.Path, results: dict[str, Any]) -> None:
  history = results["history"]
  viz.plot_learning_curves(
    {
      "train": [r["train_bpc"] for r in history],
      "valid": [r["valid_bpc"] for r in history],
      "unigram": [results["unigram_bpc"]] * len(history),
    },
    workdir / "bpc.png",
    ylabel="bits per character",
    title="Character-level LSTM, truncated BPTT",
  )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains (or resumes), evaluates bits per character and samples.

  Args:
    config: the settings.
    workdir: where results.json, results.md, timings.json, samples.txt,
      bpc.png and checkpoint.npz go.

  Returns:
    The contents of results.json: "config", "text", "num_chars",
    "vocab_size", "unigram_bpc", "valid_bpc" (after the last epoch),
    "history" (per epoch: updates so far, train and valid bits per
    character), "samples" and "table".

  Raises:
    ValueError: if the workdir holds a checkpoint of other settings.
    equivlab.training.WorkdirInUseError: if another live run uses it.
    OSError: if the workdir or the checkpoint cannot be written.
  """
  workdir = pathlib.Path(workdir)
  with checkpoint.WorkdirLock(workdir):
    return _run(config, workdir)


def _run(config: Config, workdir: pathlib.Path) -> dict[str, Any]:
  start = time.perf_counter()
  data = load_data(config)
  params, history, resumed_at = train(config, data, workdir)
  results = {
    "config": dataclasses.asdict(config),
    "text": "pydoc_data.topics (CPython help topics)",
    "num_chars": len(data.train_ids) + len(data.valid_ids),
    "vocab_size": len(data.chars),
    "unigram_bpc": unigram_bpc(data),
    "valid_bpc": history[-1]["valid_bpc"],
    "history": history,
    "samples": _samples(config, data, params),
  }
  results["table"] = _table(results)
  (workdir / "samples.txt").write_text(
    "\n\n----\n\n".join(results["samples"]) + "\n"
  )
  _figure(workdir, results)
  sweeps.write_results(
    workdir,
    results,
    table=results["table"],
    timings={
      "seconds": time.perf_counter() - start,
      "resumed_at": {"epoch": resumed_at[0], "update": resumed_at[1]},
    },
  )
  return results


define_flags, main = _common.entry_points(Config, run, "char_lm")

if __name__ == "__main__":
  _common.launch(main, define_flags)
