"""How close Adam(b1=0, b2, eta0/sqrt(t)) comes to AdaGrad (Kingma & Ba 2015).

Prints the gap table for b2 = 0.9 ... 0.99999 twice: with every stabiliser
at zero (the exact limit of the derivation) and with optax's defaults (Adam
eps 1e-8 outside the root; AdaGrad eps 1e-7 inside the root and an initial
accumulator of 0.1), and writes it as Markdown and JSON.

  python -m benchmarks.adam_adagrad [--output_dir=runs/adam_adagrad]
      [--num_steps=1000]
"""

import argparse
import json
import pathlib

import jax

from equivlab.fundamentals import optimizer_theory

B2S = (0.9, 0.99, 0.999, 0.9999, 0.99999)
SETTINGS = {
  "exact (eps = 0, accumulator = 0)": {},
  "optax defaults": {
    "adam_eps": 1e-8,
    "adagrad_eps": 1e-7,
    "adagrad_initial_accumulator": 0.1,
  },
}


def run(
  out_dir: str | pathlib.Path,
  num_steps: int = 1000,
  b2s: tuple[float, ...] = B2S,
) -> dict:
  """Computes, prints and writes the table.

  Args:
    out_dir: where `adam_adagrad.md` and `adam_adagrad.json` go.
    num_steps: the trajectory length.
    b2s: the second-moment decays, one row each.

  Returns:
    `{setting: [row dicts]}`.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  results = {}
  with jax.enable_x64(True):
    for name, kwargs in SETTINGS.items():
      rows = optimizer_theory.adam_adagrad_gap(
        b2s, num_steps=num_steps, **kwargs
      )
      results[name] = [row._asdict() for row in rows]
  lines = [
    f"Adam(b1=0, b2, lr=eta0/sqrt(t)) vs AdaGrad(eta0=0.5): {num_steps} "
    "steps on an 8-D noisy quadratic, float64. Gap = max over steps of "
    "the largest coordinate difference; relative = gap / AdaGrad's "
    "largest displacement.",
    "",
    "| b2 | " + " | ".join(f"{n}: gap (relative)" for n in SETTINGS) + " |",
    "|---|" + "---|" * len(SETTINGS),
  ]
  for i, b2 in enumerate(b2s):
    cells = [
      f"{results[n][i]['max_gap']:.3e} ({results[n][i]['relative_gap']:.2e})"
      for n in SETTINGS
    ]
    lines.append(f"| {b2} | " + " | ".join(cells) + " |")
  table = "\n".join(lines)
  print(table)
  (out_dir / "adam_adagrad.md").write_text(table + "\n")
  (out_dir / "adam_adagrad.json").write_text(json.dumps(results, indent=2))
  return results


def _positive_int(text: str) -> int:
  """An argparse type: an integer >= 1."""
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}.")
  return value


def parse_args(argv=None) -> argparse.Namespace:
  """Parses the command line (`--help` prints the options and exits).

  Args:
    argv: the arguments without the program name; `None` reads `sys.argv`.

  Returns:
    The namespace with `output_dir` and `num_steps`.
  """
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.adam_adagrad",
    description=__doc__.splitlines()[0],
  )
  parser.add_argument(
    "--output_dir",
    default="runs/adam_adagrad",
    help="where adam_adagrad.md and adam_adagrad.json are written.",
  )
  parser.add_argument(
    "--num_steps",
    type=_positive_int,
    default=1000,
    help="the length of each optimisation trajectory.",
  )
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  """Runs the benchmark with the options of `argv` (see `parse_args`)."""
  args = parse_args(argv)
  return run(args.output_dir, num_steps=args.num_steps)


if __name__ == "__main__":
  main()
