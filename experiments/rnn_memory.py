r"""Long-range memory: recall the first symbol after a lag, across RNN kinds.

Each sequence opens with one of `num_symbols` signal symbols, followed by
`lag` random distractor symbols; after the last step the network must name
the opening symbol (chance = 1 / num_symbols). Elman, LSTM and GRU networks
are trained end to end by backpropagation through time; an echo-state
network keeps its random reservoir and fits only the readout, in closed form
(ridge) and by gradient descent. Also recorded: ||dL_T/dh_t|| against T - t
at initialisation and after training (seed 002 problem 4, seed 004 2(c)):
in the Elman net it decays geometrically, which is why W_hh and W_xh are
hard to train over long lags; the additive memory cell of the LSTM and the
update gate of the GRU keep it from vanishing.

  python -m experiments.rnn_memory --workdir=/tmp/rnn_memory

Writes results.json, accuracy_vs_lag.png and grad_norm_vs_distance.png.
"""

import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from absl import flags, logging

from equivlab import rnn
from equivlab.rnn import esn
from experiments import _launch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RNN_MODELS = ("elman", "lstm", "gru")


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
  """Settings of the lag sweep (defaults: a few minutes on 2 CPU cores)."""

  lags: tuple[int, ...] = (2, 5, 10, 20, 40, 80)
  models: tuple[str, ...] = RNN_MODELS
  num_symbols: int = 4
  num_distractors: int = 4
  hidden_size: int = 32
  batch_size: int = 64
  num_steps: int = 1200
  learning_rate: float = 3e-3
  clip_norm: float = 1.0
  esn_size: int = 200
  esn_radius: float = 0.95
  esn_input_scale: float = 0.1
  esn_train_size: int = 2048
  ridge_l2: float = 1e-4
  eval_size: int = 1024
  grad_lag: int = 40
  grad_probe_size: int = 64
  seed: int = 0


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def make_batch(key, batch_size: int, lag: int, num_symbols: int, n_dist: int):
  """A batch of the recall task.

  Args:
    key: a PRNG key.
    batch_size: B.
    lag: the number of distractor steps L after the signal.
    num_symbols: signal symbols (the classes).
    n_dist: distractor symbols.

  Returns:
    `(xs [B, L + 1, num_symbols + n_dist] one-hot float32, labels [B])`.
  """
  k_sig, k_dist = jax.random.split(key)
  labels = jax.random.randint(k_sig, (batch_size,), 0, num_symbols)
  dist = jax.random.randint(
    k_dist, (batch_size, lag), num_symbols, num_symbols + n_dist
  )
  tokens = jnp.concatenate([labels[:, None], dist], axis=1)
  return jax.nn.one_hot(tokens, num_symbols + n_dist), labels


def _init_model(key, name, dim, hidden, classes):
  k_cell, k_out = jax.random.split(key)
  return {
    "cell": rnn.get_cell(name).init(k_cell, dim, hidden),
    "W_out": jax.random.normal(k_out, (classes, hidden)) / np.sqrt(hidden),
    "b_out": jnp.zeros((classes,)),
  }


@functools.partial(jax.jit, static_argnums=0)
def _final_logits(name, params, xs):
  """Logits from the hidden state after the last step: [B, T, D] -> [B, K]."""
  cell = rnn.get_cell(name)
  hidden = params["W_out"].shape[1]
  carry0 = cell.zero_carry(hidden, (xs.shape[0],))
  carry, _ = rnn.unroll(
    cell.apply, params["cell"], xs, carry0, time_major=False
  )
  h = carry.h if isinstance(carry, rnn.LSTMState) else carry
  return h @ params["W_out"].T + params["b_out"][None, :]


def train_rnn(key, name: str, lag: int, config: MemoryConfig):
  """Trains one recurrent net on the task at one lag (one jitted scan).

  Returns:
    `(params_at_init, trained_params, losses [num_steps])`.
  """
  dim = config.num_symbols + config.num_distractors
  k_init, k_data = jax.random.split(key)
  params0 = _init_model(
    k_init, name, dim, config.hidden_size, config.num_symbols
  )
  optimizer = optax.chain(
    optax.clip_by_global_norm(config.clip_norm),
    optax.adam(config.learning_rate),
  )

  def loss_fn(params, xs, labels):
    logits = _final_logits(name, params, xs)
    return jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    )

  @jax.jit
  def train(params):
    def step(state, i):
      params, opt_state = state
      xs, labels = make_batch(
        jax.random.fold_in(k_data, i),
        config.batch_size,
        lag,
        config.num_symbols,
        config.num_distractors,
      )
      loss, grads = jax.value_and_grad(loss_fn)(params, xs, labels)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(
      step, (params, optimizer.init(params)), jnp.arange(config.num_steps)
    )
    return params, losses

  params, losses = train(params0)
  return params0, params, losses


def accuracy(name, params, xs, labels) -> float:
  logits = _final_logits(name, params, xs)
  return float(jnp.mean(jnp.argmax(logits, axis=1) == labels))


def run_esn(key, lag: int, eval_batch, config: MemoryConfig) -> dict:
  """An echo-state net: random reservoir, ridge and gradient readouts."""
  dim = config.num_symbols + config.num_distractors
  k_res, k_data, k_read = jax.random.split(key, 3)
  params = esn.init_esn(
    k_res,
    dim,
    config.esn_size,
    spectral_radius=config.esn_radius,
    input_scale=config.esn_input_scale,
  )
  xs, labels = make_batch(
    k_data,
    config.esn_train_size,
    lag,
    config.num_symbols,
    config.num_distractors,
  )
  states = jax.jit(lambda x: esn.esn_states(params, x)[0])
  train_feats = states(xs)
  eval_feats = states(eval_batch[0])
  targets = jax.nn.one_hot(labels, config.num_symbols)
  ridge = esn.ridge_readout(train_feats, targets, config.ridge_l2)
  grad_readout, _ = esn.gradient_readout(
    k_read, train_feats, labels, config.num_symbols, num_steps=500
  )
  acc = lambda v: float(
    jnp.mean(jnp.argmax(esn.readout_apply(v, eval_feats), 1) == eval_batch[1])
  )
  return {"ridge": acc(ridge), "gradient": acc(grad_readout)}


def gradient_profile(name, params, key, lag, config: MemoryConfig):
  """Mean ||dL_T/dh_t|| over a batch, indexed by distance T - t (0..lag)."""
  xs, labels = make_batch(
    key,
    config.grad_probe_size,
    lag,
    config.num_symbols,
    config.num_distractors,
  )
  cell = rnn.get_cell(name)
  hidden = params["W_out"].shape[1]

  def one(x, y):
    def final_loss(h):
      logits = params["W_out"] @ h + params["b_out"]
      return jax.nn.logsumexp(logits) - logits[y]

    return rnn.carry_gradient_norms(
      cell.apply, params["cell"], x, cell.zero_carry(hidden), final_loss
    )

  norms = jax.jit(jax.vmap(one))(xs, labels)  # [B, T]
  return np.asarray(jnp.mean(norms, axis=0)[::-1])  # index = T - t


def _plot_accuracy(results, path):
  fig, ax = plt.subplots(figsize=(6, 4))
  lags = results["lags"]
  for name, accs in results["accuracy"].items():
    ax.plot(lags, accs, marker="o", label=name)
  ax.axhline(results["chance"], color="gray", ls="--", label="chance")
  ax.set_xscale("log")
  ax.set_xticks(lags, [str(lag) for lag in lags])
  ax.set_xticks([], minor=True)
  ax.set_xlabel("lag L (steps between the signal and the answer)")
  ax.set_ylabel("test accuracy")
  ax.set_title("Recall the first symbol after L distractors")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_gradients(results, path):
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for ax, stage in zip(axes, ("init", "trained"), strict=True):
    for name, norms in results["grad_norms"][stage].items():
      ax.semilogy(np.arange(len(norms)), np.maximum(norms, 1e-30), label=name)
    ax.set_xlabel("T - t")
    ax.set_title(f"{stage}, lag {results['grad_lag']}")
  axes[0].set_ylabel("mean ||dL_T / dh_t||")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(config: MemoryConfig, workdir: str) -> dict:
  """Runs the lag sweep and writes results.json and two plots to workdir.

  Returns:
    The results dict written to results.json.
  """
  unknown = set(config.models) - set(RNN_MODELS)
  if unknown:
    raise ValueError(
      f"models must be among {RNN_MODELS}, got {sorted(unknown)}."
    )
  os.makedirs(workdir, exist_ok=True)
  key = jax.random.key(config.seed)
  k_eval, k_models, k_esn, k_probe = jax.random.split(key, 4)
  names = (*config.models, "esn_ridge", "esn_gradient")
  acc = {name: [] for name in names}
  final_loss = {name: [] for name in config.models}
  grad_lag = min(config.lags, key=lambda lag: abs(lag - config.grad_lag))
  grad_norms = {"init": {}, "trained": {}}
  for lag in config.lags:
    eval_batch = make_batch(
      jax.random.fold_in(k_eval, lag),
      config.eval_size,
      lag,
      config.num_symbols,
      config.num_distractors,
    )
    for name in config.models:
      i = RNN_MODELS.index(name)
      k = jax.random.fold_in(jax.random.fold_in(k_models, lag), i)
      params0, params, losses = train_rnn(k, name, lag, config)
      acc[name].append(accuracy(name, params, *eval_batch))
      final_loss[name].append(float(jnp.mean(losses[-20:])))
      if lag == grad_lag:
        for stage, p in (("init", params0), ("trained", params)):
          grad_norms[stage][name] = gradient_profile(
            name, p, k_probe, lag, config
          ).tolist()
      logging.info(
        "lag %d %s: accuracy %.3f, final loss %.3f",
        lag,
        name,
        acc[name][-1],
        final_loss[name][-1],
      )
    esn_acc = run_esn(jax.random.fold_in(k_esn, lag), lag, eval_batch, config)
    acc["esn_ridge"].append(esn_acc["ridge"])
    acc["esn_gradient"].append(esn_acc["gradient"])
    logging.info("lag %d esn: %s", lag, esn_acc)
  results = {
    "config": dataclasses.asdict(config),
    "lags": list(config.lags),
    "chance": 1.0 / config.num_symbols,
    "accuracy": acc,
    "final_train_loss": final_loss,
    "grad_lag": grad_lag,
    "grad_norms": grad_norms,
  }
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  _plot_accuracy(results, os.path.join(workdir, "accuracy_vs_lag.png"))
  _plot_gradients(results, os.path.join(workdir, "grad_norm_vs_distance.png"))
  return results


def format_table(results: dict) -> str:
  """The lag-sweep accuracies as a Markdown table."""
  names = list(results["accuracy"])
  lines = [
    "| lag | " + " | ".join(names) + " |",
    "|---:|" + "---:|" * len(names),
  ]
  for i, lag in enumerate(results["lags"]):
    row = " | ".join(f"{results['accuracy'][n][i]:.3f}" for n in names)
    lines.append(f"| {lag} | {row} |")
  return "\n".join(lines)


def define_flags(flag_values=flags.FLAGS) -> dict:
  """Registers this experiment's flags; returns their holders by name.

  Called only when the module runs as a script, so importing it (as the
  tests do, next to other experiments with flags of the same names) never
  defines a flag twice.
  """
  return {
    "workdir": flags.DEFINE_string(
      "workdir",
      "/tmp/rnn_memory",
      flag_values=flag_values,
      help="Directory for results.json and plots.",
    ),
    "lags": flags.DEFINE_list(
      "lags",
      ["2", "5", "10", "20", "40", "80"],
      flag_values=flag_values,
      help="Lags L to sweep.",
    ),
    "hidden": flags.DEFINE_integer(
      "hidden_size",
      32,
      flag_values=flag_values,
      help="Hidden units of the Elman, LSTM and GRU nets.",
    ),
    "steps": flags.DEFINE_integer(
      "num_steps",
      MemoryConfig.num_steps,
      flag_values=flag_values,
      help="Adam steps per model and lag.",
    ),
    "batch": flags.DEFINE_integer(
      "batch_size", 64, flag_values=flag_values, help="Sequences per step."
    ),
    "lr": flags.DEFINE_float(
      "learning_rate", 3e-3, flag_values=flag_values, help="Adam step size."
    ),
    "esn_size": flags.DEFINE_integer(
      "esn_size",
      200,
      flag_values=flag_values,
      help="Reservoir units of the echo-state net.",
    ),
    "esn_radius": flags.DEFINE_float(
      "esn_radius",
      0.95,
      flag_values=flag_values,
      help="Spectral radius of the reservoir matrix.",
    ),
    "esn_input_scale": flags.DEFINE_float(
      "esn_input_scale",
      0.1,
      flag_values=flag_values,
      help="Input weights are uniform in [-scale, scale]; small keeps the "
      "reservoir near its linear regime, where its memory is longest.",
    ),
    "grad_lag": flags.DEFINE_integer(
      "grad_lag",
      40,
      flag_values=flag_values,
      help="Lag (nearest swept one) of the gradient-norm plot.",
    ),
    "seed": flags.DEFINE_integer(
      "seed", 0, flag_values=flag_values, help="Random seed."
    ),
  }


def main(argv: Sequence[str], holders: dict) -> None:
  """Reads the flags and runs the experiment."""
  del argv
  config = MemoryConfig(
    lags=tuple(int(lag) for lag in holders["lags"].value),
    hidden_size=holders["hidden"].value,
    num_steps=holders["steps"].value,
    batch_size=holders["batch"].value,
    learning_rate=holders["lr"].value,
    esn_size=holders["esn_size"].value,
    esn_radius=holders["esn_radius"].value,
    esn_input_scale=holders["esn_input_scale"].value,
    grad_lag=holders["grad_lag"].value,
    seed=holders["seed"].value,
  )
  results = run(config, holders["workdir"].value)
  print(format_table(results))


if __name__ == "__main__":
  _launch.run(main, define_flags)
