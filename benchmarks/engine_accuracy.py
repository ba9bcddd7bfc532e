r"""Does the engine's CPU setting change what the main job learns?

Trains `experiments.rotated_digits` (defaults, `--num_seeds` seeds) under
each engine variant of `benchmarks.train_step` and compares the test
errors seed by seed:

  default  the engine as it is (one XLA convolution, equivlab's compiler
           options);
  jaxlib   the CPU convolution path (filter gradients as matrix
           products) under jaxlib's default options.

The two sum the convolutions' gradients in other orders, so the same seed
follows another trajectory; the question is whether the errors differ in
distribution. Per model it prints both means +- sample std, the paired
mean difference (default - jaxlib) and the paired t-test's p-value, and
writes them with every seed's error to --output. Each variant trains in
`<workdir>/<variant>`, so an interrupted comparison resumes.

    python -m benchmarks.engine_accuracy --num_seeds=10
"""

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import time
from collections.abc import Iterator, Sequence

from benchmarks import train_step as step_bench
from equivlab.ops import convolution, xla_options
from experiments import rotated_digits


@contextlib.contextmanager
def engine_variant(variant: str) -> Iterator[None]:
  """Everything compiled inside is compiled as `variant` (see the module).

  Sets `EQUIVLAB_CONV_IMPL` and replaces `xla_options.compiler_options`
  while inside, the way `benchmarks.train_step` compiles its variants.
  """
  if variant not in step_bench.VARIANTS:
    raise ValueError(
      f"variant must be one of {step_bench.VARIANTS}, got {variant!r}."
    )
  impl, options = step_bench.SETTINGS[variant]
  engine_options = xla_options.compiler_options

  def replaced(backend=None, *, inference=False):
    chosen = engine_options(backend, inference=inference)
    return chosen | options if chosen and options else chosen

  old_impl = os.environ.get(convolution.ENV_VAR)
  if impl is not None:
    os.environ[convolution.ENV_VAR] = impl
  xla_options.compiler_options = replaced
  try:
    yield
  finally:
    xla_options.compiler_options = engine_options
    if old_impl is None:
      os.environ.pop(convolution.ENV_VAR, None)
    else:
      os.environ[convolution.ENV_VAR] = old_impl


def paired(errors: Sequence[float], baseline: Sequence[float]) -> dict:
  """Mean, spread and the paired t-test of `errors - baseline`, seed by seed.

  Raises:
    ValueError: if the two are not the same nonzero length.
  """
  if len(errors) != len(baseline) or not errors:
    raise ValueError(
      "expected one error per seed on both sides, got "
      f"{len(errors)} and {len(baseline)}."
    )
  diffs = [a - b for a, b in zip(errors, baseline, strict=True)]
  result = {"mean_difference": statistics.fmean(diffs)}
  if len(diffs) > 1:
    from scipy import stats  # noqa: PLC0415 (a jax dependency)

    result["std_difference"] = statistics.stdev(diffs)
    result["paired_t_p"] = (
      float(stats.ttest_rel(errors, baseline).pvalue) if any(diffs) else 1.0
    )
  return result


def compare(
  config: rotated_digits.Config,
  variants: Sequence[str],
  workdir: str | pathlib.Path,
) -> dict:
  """Trains the main job under each variant; per-model errors compared.

  Returns:
    {"seeds", "variants", "seconds": variant -> wall seconds of this call,
    "models": model -> {variant -> {"errors", "mean", "std"}, "paired":
    `paired(first variant, other)` for each other variant}}.
  """
  workdir = pathlib.Path(workdir)
  errors, seconds = {}, {}
  for variant in variants:
    start = time.perf_counter()
    with engine_variant(variant):
      results = rotated_digits.run(config, workdir / variant)
    seconds[variant] = time.perf_counter() - start
    runs = sorted(results["runs"], key=lambda r: (r["model"], r["seed"]))
    for run in runs:
      errors.setdefault(run["model"], {}).setdefault(variant, [])
      errors[run["model"]][variant].append(run["test_error"])
  first = variants[0]
  models = {}
  for model, by_variant in errors.items():
    row = {
      v: {
        "errors": e,
        "mean": statistics.fmean(e),
        "std": statistics.stdev(e) if len(e) > 1 else 0.0,
      }
      for v, e in by_variant.items()
    }
    row["paired"] = {
      f"{first}-{v}": paired(by_variant[first], by_variant[v])
      for v in variants[1:]
    }
    models[model] = row
  return {
    "seeds": list(config.seeds),
    "variants": list(variants),
    "seconds": seconds,
    "models": models,
  }


def _print(results: dict) -> None:
  first, *others = results["variants"]
  for model, row in results["models"].items():
    sides = ", ".join(
      f"{v} {row[v]['mean']:.2f} +- {row[v]['std']:.2f}"
      for v in results["variants"]
    )
    print(f"{model:>14}: {sides} (test error %)")
    for v in others:
      p = row["paired"][f"{first}-{v}"]
      extra = (
        f", paired t p = {p['paired_t_p']:.2f}" if "paired_t_p" in p else ""
      )
      print(
        f"{'':>14}  {first} - {v}: {p['mean_difference']:+.2f} points{extra}"
      )


def _variants(text: str) -> list[str]:
  names = [n.strip() for n in text.split(",") if n.strip()]
  if len(names) < 2 or set(names) - set(step_bench.VARIANTS):
    raise argparse.ArgumentTypeError(
      f"expected two or more of {', '.join(step_bench.VARIANTS)}, "
      f"comma-separated; got {text!r}."
    )
  return names


def _parse(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_seeds", type=int, default=10)
  parser.add_argument("--variants", type=_variants, default="default,jaxlib")
  parser.add_argument("--workdir", default="/tmp/equivlab_engine_accuracy")
  parser.add_argument(
    "--output", default="/tmp/equivlab_engine_accuracy/results.json"
  )
  args = parser.parse_args(argv)
  if args.num_seeds < 1:
    parser.error(f"--num_seeds must be >= 1, got {args.num_seeds}.")
  return args


def main(argv=None) -> None:
  args = _parse(argv)
  config = rotated_digits.Config(num_seeds=args.num_seeds, progress=False)
  results = compare(config, args.variants, args.workdir)
  _print(results)
  output = pathlib.Path(args.output)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(results, indent=2) + "\n")
  print(f"wrote {output}")


if __name__ == "__main__":
  main()
