r"""Time of one training step per model, on the CPU path and on plain XLA.

The training engine's own jitted Adam step (`equivlab.train.prepare`:
augmentation off, forward, backward, update) on a random batch of 28x28
digits, for each model of `--models`, traced twice in one process: with
the convolutions' CPU path (`EQUIVLAB_CONV_IMPL=cpu`, what "auto" picks on
a CPU) and with one XLA convolution per call (`EQUIVLAB_CONV_IMPL=xla`,
what accelerators run). The steps are timed in alternation, `--rounds`
rounds of `--steps` steps each; the best round counts. Prints one line per
model and writes `--json`.

  python -m benchmarks.train_step
  python -m benchmarks.train_step --models=z2cnn,p4cnn --batch=128

To compare two versions of equivlab, run the script with each on
`PYTHONPATH` (the line "equivlab from ..." says which one was imported),
e.g. `--impls=cpu --models=p4cnn`, alternating the versions.
"""

import argparse
import contextlib
import json
import os
import pathlib
import time

import jax
import numpy as np

import equivlab
from equivlab import convolution, models, train

DEFAULT_MODELS = (
  "z2cnn",
  "p4cnn",
  "p4cnn_rotpool",
  "cnn",
  "cnn_gap",
  "p4cnn_gap",
)
IMPLS = ("cpu", "xla")
NAMES = {"cpu": "cpu path", "xla": "one XLA conv"}


@contextlib.contextmanager
def _conv_impl(impl: str):
  """`EQUIVLAB_CONV_IMPL=impl` while a step is traced."""
  old = os.environ.get(convolution.ENV_VAR)
  os.environ[convolution.ENV_VAR] = impl
  try:
    yield
  finally:
    if old is None:
      os.environ.pop(convolution.ENV_VAR)
    else:
      os.environ[convolution.ENV_VAR] = old


def compiled_step(model: str, impl: str, batch_size: int, seed: int = 0):
  """The engine's Adam step for `model`, traced under `impl`, and its inputs.

  Returns:
    `(step, state, batch)`, the step compiled and run once.
  """
  config = train.TrainConfig(
    model=model, optimizer="adam", learning_rate=1e-3, seed=seed
  )
  rng = np.random.default_rng(seed)
  batch = jax.device_put(
    {
      "image": rng.random((batch_size, 28, 28, 1), np.float32),
      "label": rng.integers(0, 10, batch_size).astype(np.int32),
    }
  )
  with _conv_impl(impl):
    state, steps = train.prepare(config, batch["image"])
    step = steps.train_step.lower(state, batch).compile()
  jax.block_until_ready(step(state, batch))
  return step, state, batch


def time_round(step, state, batch, steps: int) -> float:
  """Seconds per step over `steps` steps from the same state."""
  start = time.perf_counter()
  for _ in range(steps):
    out = step(state, batch)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def run(args) -> dict:
  """Every model under each implementation; the best round of each."""
  results = {}
  for model in args.models:
    sides = {
      impl: compiled_step(model, impl, args.batch) for impl in args.impls
    }
    best = dict.fromkeys(args.impls, float("inf"))
    for _ in range(args.rounds):
      for impl, (step, state, batch) in sides.items():
        best[impl] = min(best[impl], time_round(step, state, batch, args.steps))
    row = {f"{impl}_ms": 1e3 * seconds for impl, seconds in best.items()}
    text = [f"{NAMES[impl]} {row[f'{impl}_ms']:7.1f} ms" for impl in best]
    if len(best) == len(IMPLS):
      row["xla_over_cpu"] = best["xla"] / best["cpu"]
      text.append(f"xla / cpu {row['xla_over_cpu']:.2f}")
    results[model] = row
    print(f"{model:>14}: " + ", ".join(text), flush=True)
  return results


def _models(text: str) -> list[str]:
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = sorted(set(names) - set(models.MODEL_NAMES))
  if not names or unknown:
    raise argparse.ArgumentTypeError(
      f"expected a comma-separated list of models from "
      f"{', '.join(models.MODEL_NAMES)}; got {text!r}."
    )
  return names


def _impls(text: str) -> list[str]:
  names = [n.strip() for n in text.split(",") if n.strip()]
  if not names or set(names) - set(IMPLS) or len(set(names)) < len(names):
    raise argparse.ArgumentTypeError(
      f"expected 'cpu', 'xla' or 'cpu,xla'; got {text!r}."
    )
  return names


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}.")
  return value


def _parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", type=_models, default=list(DEFAULT_MODELS))
  parser.add_argument("--impls", type=_impls, default=list(IMPLS))
  parser.add_argument("--batch", type=_positive, default=64)
  parser.add_argument("--steps", type=_positive, default=5)
  parser.add_argument("--rounds", type=_positive, default=3)
  parser.add_argument("--json", default=None)
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = _parse(argv)
  print(
    f"equivlab from {pathlib.Path(equivlab.__file__).parent}, "
    f"{jax.devices()[0].device_kind}, batch {args.batch}",
    flush=True,
  )
  results = {"batch": args.batch, "models": run(args)}
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
  return results


if __name__ == "__main__":
  main()
