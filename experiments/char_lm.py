r"""A character-level LSTM language model trained with truncated BPTT.

The text ships with Python: the help topics of `pydoc_data.topics` (the pages
`help("assert")` etc. print, ~460k characters of English and code), so no
download is needed. The text is cut into `batch_size` parallel streams; each
epoch runs `rnn.tbptt_train` over them: one Adam update per segment of `tau`
characters, the LSTM state carried across segments with `stop_gradient`
(seed 004 6(i)). Reports bits per character on a held-out tail of the text
(against the unigram entropy as a baseline) and samples a few lines.

  python -m experiments.char_lm --workdir=/tmp/char_lm
"""

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from absl import flags, logging

from equivlab import rnn
from experiments import _launch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclasses.dataclass(frozen=True)
class CharLMConfig:
  """Settings (defaults: a few minutes on 2 CPU cores)."""

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


def load_text(max_chars: int) -> str:
  """The help topics shipped with CPython, in a fixed (sorted) order."""
  from pydoc_data.topics import topics  # noqa: PLC0415

  text = "\n".join(topics[name] for name in sorted(topics))
  return text[:max_chars]


def _streams(ids: np.ndarray, batch: int, tau: int) -> np.ndarray:
  """[N] ids -> [L, B] time-major parallel streams, L a multiple of tau."""
  length = (len(ids) // batch // tau) * tau
  if length == 0:
    raise ValueError(
      f"text of {len(ids)} characters is too short for batch {batch} and "
      f"tau {tau}."
    )
  return ids[: batch * length].reshape(batch, length).T


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


def sample(key, params, prompt_ids, length: int, temperature: float):
  """Samples `length` ids after warming the state up on `prompt_ids`."""
  hidden = params["W_out"].shape[1]
  carry = rnn.LSTMState(jnp.zeros((1, hidden)), jnp.zeros((1, hidden)))
  carry, logits = _logits(params, carry, prompt_ids[:, None])

  def step(state, k):
    carry, last = state
    token = jax.random.categorical(k, last / temperature)
    carry, logits = _logits(params, carry, token[None, :])
    return (carry, logits[0]), token[0]

  keys = jax.random.split(key, length)
  _, ids = jax.lax.scan(step, (carry, logits[-1]), keys)
  return ids


def run(config: CharLMConfig, workdir: str) -> dict:
  """Trains, evaluates bits per character and samples; writes workdir files.

  Returns:
    The results dict written to results.json.
  """
  os.makedirs(workdir, exist_ok=True)
  text = load_text(config.max_chars)
  chars = sorted(set(text))
  index = {c: i for i, c in enumerate(chars)}
  ids = np.array([index[c] for c in text], np.int32)
  split = int(len(ids) * (1 - config.valid_fraction))
  train_ids, valid_ids = ids[:split], ids[split:]
  vocab = len(chars)
  stream = _streams(train_ids, config.batch_size, config.tau)
  xs, ys = stream[:-1], stream[1:]
  # Keep T a multiple of tau after the one-step shift.
  usable = (len(xs) // config.tau) * config.tau
  xs, ys = jnp.asarray(xs[:usable]), jnp.asarray(ys[:usable])
  valid = _streams(valid_ids, 8, 1)

  key = jax.random.key(config.seed)
  k_init, k_sample = jax.random.split(key)
  params = _init(k_init, vocab, config.hidden_size)
  optimizer = optax.chain(
    optax.clip_by_global_norm(config.clip_norm),
    optax.adam(config.learning_rate),
  )
  opt_state = optimizer.init(params)
  epoch_fn = jax.jit(
    lambda p, s, c: rnn.tbptt_train(
      segment_loss, optimizer, p, s, xs, ys, c, config.tau
    )
  )

  @jax.jit
  def valid_bpc(params):
    hidden = params["W_out"].shape[1]
    zeros = jnp.zeros((valid.shape[1], hidden))
    _, logits = _logits(params, rnn.LSTMState(zeros, zeros), valid[:-1])
    nats = optax.softmax_cross_entropy_with_integer_labels(logits, valid[1:])
    return jnp.mean(nats) / math.log(2)

  counts = np.bincount(train_ids, minlength=vocab) + 1.0
  probs = counts / counts.sum()
  unigram_bpc = float(-np.mean(np.log2(probs[valid_ids])))
  hidden = config.hidden_size
  history = []
  for epoch in range(config.num_epochs):
    zeros = jnp.zeros((config.batch_size, hidden))
    params, opt_state, losses, _ = epoch_fn(
      params, opt_state, rnn.LSTMState(zeros, zeros)
    )
    record = {
      "epoch": epoch + 1,
      "updates": (epoch + 1) * int(losses.shape[0]),
      "train_bpc": float(jnp.mean(losses)) / math.log(2),
      "valid_bpc": float(valid_bpc(params)),
    }
    history.append(record)
    logging.info("char_lm %s", record)

  samples = []
  for i, prompt in enumerate(config.prompts):
    prompt_ids = jnp.asarray([index.get(c, 0) for c in prompt], jnp.int32)
    out = sample(
      jax.random.fold_in(k_sample, i),
      params,
      prompt_ids,
      config.sample_length,
      config.temperature,
    )
    samples.append(prompt + "".join(chars[int(j)] for j in out))
  results = {
    "config": dataclasses.asdict(config),
    "text": "pydoc_data.topics (CPython help topics)",
    "num_chars": len(text),
    "vocab_size": vocab,
    "unigram_bpc": unigram_bpc,
    "valid_bpc": history[-1]["valid_bpc"],
    "history": history,
    "samples": samples,
  }
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "samples.txt"), "w") as f:
    f.write("\n\n----\n\n".join(samples) + "\n")
  fig, ax = plt.subplots(figsize=(5, 3.5))
  epochs = [r["epoch"] for r in history]
  ax.plot(epochs, [r["train_bpc"] for r in history], marker="o", label="train")
  ax.plot(epochs, [r["valid_bpc"] for r in history], marker="o", label="valid")
  ax.axhline(unigram_bpc, color="gray", ls="--", label="unigram")
  ax.set_xlabel("epoch")
  ax.set_ylabel("bits per character")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "bpc.png"), dpi=120)
  plt.close(fig)
  return results


def define_flags(flag_values=flags.FLAGS) -> dict:
  """Registers this experiment's flags; returns their holders by name.

  Called only when the module runs as a script, so importing it (as the
  tests do, next to other experiments with flags of the same names) never
  defines a flag twice.
  """
  return {
    "workdir": flags.DEFINE_string(
      "workdir",
      "/tmp/char_lm",
      flag_values=flag_values,
      help="Directory for results.json and samples.",
    ),
    "max_chars": flags.DEFINE_integer(
      "max_chars",
      200_000,
      flag_values=flag_values,
      help="Characters of the help text to use.",
    ),
    "hidden": flags.DEFINE_integer(
      "hidden_size", 256, flag_values=flag_values, help="LSTM units."
    ),
    "tau": flags.DEFINE_integer(
      "tau", 50, flag_values=flag_values, help="Truncated-BPTT segment length."
    ),
    "epochs": flags.DEFINE_integer(
      "num_epochs", 10, flag_values=flag_values, help="Passes over the text."
    ),
    "lr": flags.DEFINE_float(
      "learning_rate", 3e-3, flag_values=flag_values, help="Adam step size."
    ),
    "seed": flags.DEFINE_integer(
      "seed", 0, flag_values=flag_values, help="Random seed."
    ),
  }


def main(argv: Sequence[str], holders: dict) -> None:
  """Reads the flags and runs the experiment."""
  del argv
  config = CharLMConfig(
    max_chars=holders["max_chars"].value,
    hidden_size=holders["hidden"].value,
    tau=holders["tau"].value,
    num_epochs=holders["epochs"].value,
    learning_rate=holders["lr"].value,
    seed=holders["seed"].value,
  )
  results = run(config, holders["workdir"].value)
  print(
    f"valid bits/char {results['valid_bpc']:.3f} "
    f"(unigram {results['unigram_bpc']:.3f})"
  )
  for text in results["samples"]:
    print("----")
    print(text)


if __name__ == "__main__":
  _launch.run(main, define_flags)
