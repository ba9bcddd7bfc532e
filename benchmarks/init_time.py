r"""The first eager `Module.init` of a G-CNN against a plain flax CNN.

What a researcher meets in the first minute: a fresh Python process on CPU
that imports equivlab, builds a model and calls `model.init(key, x)` eagerly
(no `jax.jit`), so every initialiser and every op of the forward pass
compiles its own small XLA program. Each case runs in its own FRESH
subprocess (nothing compiled, no persistent compilation cache), `--repeats`
times; the median is kept. Cases:

  flax_cnn7    a plain flax CNN of the P4CNN's depth: 7 `nn.Conv` layers
               (20 channels, the width of Cohen & Welling's Z2CNN, whose
               3x3 kernels are the size of the P4CNN's [3, 3, 10, 4, 10]),
               batch norm, ReLU, one 2x2 max pool, "VALID" padding;
  p4cnn        `equivlab.nn.models.get_model("p4cnn").init(key, x)`;
  flax_cnn2    two `nn.Conv` layers (20 channels);
  user_p4      a user's own two-layer module: `layers.LiftingConv` and
               `layers.GroupConv` (10 G-channels), as in the README;
  p4cnn_engine the engine's path (`jax.jit` of the init under
               `jax.threefry_partitionable(False)`), for reference.

Prints seconds per case (the init only; the import is printed apart) and
the ratios p4cnn / flax_cnn7 and user_p4 / flax_cnn2.

  python -m benchmarks.init_time --repeats=3
  python -m benchmarks.init_time --repo=/path/to/another/checkout

`--repo` times another checkout of equivlab (its root goes first on the
subprocesses' `PYTHONPATH`), e.g. an older commit extracted with
`git archive`.
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys

from absl import app, flags

_REPEATS = flags.DEFINE_integer(
  "repeats", 3, "Fresh processes per case; the median time is kept."
)
_CASES = flags.DEFINE_list(
  "cases",
  ["flax_cnn7", "p4cnn", "flax_cnn2", "user_p4", "p4cnn_engine"],
  "Which cases to time (see the module docstring).",
)
_REPO = flags.DEFINE_string(
  "repo",
  str(pathlib.Path(__file__).resolve().parents[1]),
  "The equivlab checkout whose code is timed.",
)
_OUTPUT = flags.DEFINE_string(
  "output", "", "If set, write the results there as JSON."
)

# Every case defines `model` and `x`; the timed part is the same for all.
_PRELUDE = """
import time
t0 = time.perf_counter()
import flax.linen as nn
import jax
import jax.numpy as jnp
from equivlab.nn import layers, models
t_import = time.perf_counter() - t0


class FlaxCNN(nn.Module):
  depth: int = 7
  features: int = 20

  @nn.compact
  def __call__(self, x, train=False):
    for layer in range(self.depth):
      last = layer == self.depth - 1
      x = nn.Conv(10 if last else self.features, (3, 3), padding="VALID")(x)
      if last:
        break
      x = nn.BatchNorm(use_running_average=not train)(x)
      x = nn.relu(x)
      if layer == 1:
        x = nn.max_pool(x, (2, 2), (2, 2))
    return jnp.mean(x, axis=(1, 2))


class UserP4(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(layers.LiftingConv(10, 3)(x))
    h = layers.GroupConv(10, 3)(h)
    return jnp.mean(h, axis=(1, 2, 4))


def engine_init(model, key, x):
  with jax.threefry_partitionable(False):
    return jax.jit(model.init)(key, x)


key = jax.random.PRNGKey(0)
x = jnp.zeros((1, 28, 28, 1), jnp.float32)
"""

_CASE_CODE = {
  "flax_cnn7": "model = FlaxCNN(depth=7)",
  "flax_cnn2": "model = FlaxCNN(depth=2)",
  "p4cnn": 'model = models.get_model("p4cnn")',
  "user_p4": "model = UserP4()",
  "p4cnn_engine": 'model = models.get_model("p4cnn")',
}

_TIMED = """
t0 = time.perf_counter()
variables = {init}
jax.block_until_ready(variables)
print("RESULT", t_import, time.perf_counter() - t0)
"""


def case_source(case: str) -> str:
  """The program one fresh process runs for `case`."""
  init = "model.init(key, x)"
  if case == "p4cnn_engine":
    init = "engine_init(model, key, x)"
  return _PRELUDE + _CASE_CODE[case] + _TIMED.format(init=init)


def run_case(case: str, repo: str) -> tuple[float, float]:
  """(import seconds, init seconds) of `case` in a fresh process."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
    p for p in (repo, env.get("PYTHONPATH", "")) if p
  )
  env.setdefault("JAX_PLATFORMS", "cpu")
  # No persistent compilation cache: a new user's first process has none.
  for name in ("JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS"):
    env.pop(name, None)
  proc = subprocess.run(
    [sys.executable, "-c", case_source(case)],
    cwd=repo,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT"):
      _, t_import, t_init = line.split()
      return float(t_import), float(t_init)
  raise RuntimeError(f"case {case!r} failed:\n{proc.stderr[-3000:]}")


def main(argv):
  del argv
  unknown = sorted(set(_CASES.value) - set(_CASE_CODE))
  if unknown:
    raise app.UsageError(
      f"--cases must be among {sorted(_CASE_CODE)}, got {unknown}."
    )
  if _REPEATS.value < 1:
    raise app.UsageError(f"--repeats must be >= 1, got {_REPEATS.value}.")
  results = {}
  for case in _CASES.value:
    runs = [run_case(case, _REPO.value) for _ in range(_REPEATS.value)]
    init = statistics.median(r[1] for r in runs)
    imp = statistics.median(r[0] for r in runs)
    results[case] = {"init_s": init, "import_s": imp, "runs": runs}
    print(f"{case:>13}: init {init:6.2f} s   (import {imp:5.2f} s)")
  for num, den in (("p4cnn", "flax_cnn7"), ("user_p4", "flax_cnn2")):
    if num in results and den in results:
      ratio = results[num]["init_s"] / results[den]["init_s"]
      results[f"{num}/{den}"] = ratio
      print(f"{num} / {den}: {ratio:.2f}x")
  if _OUTPUT.value:
    pathlib.Path(_OUTPUT.value).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)
