r"""Time of one training step per model, under three settings, in one run.

The training engine's own jitted Adam step (`equivlab.train.prepare`:
augmentation off, forward, backward, update) on a random batch of 28x28
digits, for each model of `--models`, compiled in one process under each
of `--variants`:

  default  as the engine compiles it: `xla_options.jit`, so one XLA
           convolution per call ("auto") with YNNPACK's convolutions off
           (`xla_options.CPU_COMPILER_OPTIONS`);
  cpu      the convolutions' CPU path (`EQUIVLAB_CONV_IMPL=cpu`), with the
           same compiler options;
  jaxlib   the CPU path under jaxlib's default options (YNNPACK
           convolutions on): what a plain `jax.jit` of the step gets.

The steps are timed in alternation, `--rounds` rounds of `--steps` steps
each; the best round counts. Prints one line per model with the ratios to
"default" and writes `--json`.

  python -m benchmarks.train_step
  python -m benchmarks.train_step --models=z2cnn,p4cnn --batch=128

To compare two versions of equivlab, run the script with each on
`PYTHONPATH` (the line "equivlab from ..." says which one was imported),
alternating the versions.
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
from equivlab import train
from equivlab.nn import models
from equivlab.ops import convolution, xla_options

DEFAULT_MODELS = (
  "z2cnn",
  "p4cnn",
  "p4cnn_rotpool",
  "cnn",
  "cnn_gap",
  "p4cnn_gap",
)
VARIANTS = ("default", "cpu", "jaxlib")
# variant -> (EQUIVLAB_CONV_IMPL while tracing, compiler options or None for
# the engine's own).
SETTINGS = {
  "default": (None, None),
  "cpu": ("cpu", None),
  "jaxlib": (
    "cpu",
    {xla_options.YNN_FUSION_OPTION: xla_options.JAXLIB_DEFAULT_YNN_FUSIONS},
  ),
}


@contextlib.contextmanager
def _conv_impl(impl: str | None):
  """`EQUIVLAB_CONV_IMPL=impl` (unset for None) while a step is traced."""
  old = os.environ.get(convolution.ENV_VAR)
  if impl is None:
    os.environ.pop(convolution.ENV_VAR, None)
  else:
    os.environ[convolution.ENV_VAR] = impl
  try:
    yield
  finally:
    if old is None:
      os.environ.pop(convolution.ENV_VAR, None)
    else:
      os.environ[convolution.ENV_VAR] = old


def compiled_step(model: str, variant: str, batch_size: int, seed: int = 0):
  """The engine's Adam step for `model`, compiled as `variant`, and inputs.

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
  impl, options = SETTINGS[variant]
  with _conv_impl(impl):
    state, steps = train.prepare(config, batch["image"])
    step = steps.train_step.lower(state, batch).compile(options)
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
  """Every model under each variant; the best round of each."""
  results = {}
  for model in args.models:
    sides = {v: compiled_step(model, v, args.batch) for v in args.variants}
    best = dict.fromkeys(args.variants, float("inf"))
    for _ in range(args.rounds):
      for variant, (step, state, batch) in sides.items():
        best[variant] = min(
          best[variant], time_round(step, state, batch, args.steps)
        )
    row = {f"{v}_ms": 1e3 * seconds for v, seconds in best.items()}
    text = [f"{v} {row[f'{v}_ms']:7.1f} ms" for v in best]
    if "default" in best:
      for v in best:
        if v != "default":
          row[f"{v}_over_default"] = best[v] / best["default"]
          text.append(f"{v} / default {row[f'{v}_over_default']:.2f}")
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


def _variants(text: str) -> list[str]:
  names = [n.strip() for n in text.split(",") if n.strip()]
  if not names or set(names) - set(VARIANTS) or len(set(names)) < len(names):
    raise argparse.ArgumentTypeError(
      f"expected distinct names from {', '.join(VARIANTS)}; got {text!r}."
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
  parser.add_argument("--variants", type=_variants, default=list(VARIANTS))
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
