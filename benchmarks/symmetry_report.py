"""The equivariance report's cost, and exported networks' inference, on CPU.

  (a) `testing.equivariance_report` on P4CNN (p4, 3 elements) and P4MCNN
      (p4m, 7 elements) at their default widths, 28x28 digits-sized random
      images, against `1 + elements` compiled eval-mode forward passes of
      the same network: the report runs one forward pass on x and one per
      element, and compares every captured output on the host.
  (b) `equivlab.export`: eval-mode inference of the exported network / the
      group network, for P4CNN and for a user module that is not in the
      model zoo (lifting conv, group batch norm, strided group conv, group
      pooling, spatial mean, Dense), both compiled as equivlab compiles
      (`xla_options.jit(inference=True)`).

  python -m benchmarks.symmetry_report [--batch 32] [--repeats 10] \
      [--json docs/results/symmetry_report_benchmark.json]

Each timing is the minimum over `--repeats` calls after a warm-up (the
report's compiled forward pass is cached per model), all variants timed in
alternation so that load on a shared machine hits them alike.
"""

import argparse
import json
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import export, testing
from equivlab.nn import layers, models
from equivlab.ops import xla_options
from equivlab.testing import report as report_module


class UserNet(nn.Module):
  """A group network built from equivlab layers, not in the model zoo."""

  num_classes: int = 10
  features: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = layers.LiftingConv(self.features, 3)(x)
    h = nn.relu(layers.GroupBatchNorm(use_running_average=not train)(h))
    h = layers.GroupConv(2 * self.features, 3, strides=2, padding="VALID")(h)
    h = nn.relu(layers.GroupBatchNorm(use_running_average=not train)(h))
    h = layers.GroupConv(2 * self.features, 3)(h)
    h = jnp.mean(layers.GroupPool()(h), axis=(1, 2))
    return nn.Dense(self.num_classes)(h)


def _time(named, repeats):
  """Min and median seconds of each zero-argument call, in alternation."""
  for fn in named.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in named}
  for _ in range(repeats):
    for name, fn in named.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {
    k: {"min_s": min(t), "median_s": statistics.median(t)}
    for k, t in times.items()
  }


def _variables(model, x):
  key = jax.random.key(0, impl="rbg")
  variables = jax.jit(lambda k: model.init(k, x, train=False))(key)
  train = jax.jit(
    lambda v: model.apply(v, x, train=True, mutable=["batch_stats"])[1]
  )
  return {**variables, **train(variables)}  # running statistics moved


def _cold(fn):
  """Seconds of one call after every compiled program is dropped."""
  jax.clear_caches()
  report_module._forward.cache_clear()
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def run_report(batch=32, size=28, repeats=10, names=("p4cnn", "p4mcnn")):
  """(a): the report's time over `1 + elements` forward passes.

  Warm: the minimum over repeated calls, the report's programs compiled
  (plain forward passes, and the report's capturing forward, which returns
  every intermediate output). Cold: one first call each, compilation
  included (the report against one compiled forward and `elements` more).
  """
  x = np.random.default_rng(0).standard_normal((batch, size, size, 1))
  x = x.astype(np.float32)
  calls, passes, xj, cold = {}, {}, jnp.asarray(x), {}
  for name in names:
    group = "p4m" if name == "p4mcnn" else "p4"
    model = models.get_model(name)
    v = _variables(model, xj)

    def forward(m=model, v=v):
      return xla_options.jit(lambda v, a: m.apply(v, a), inference=True)

    def report(m=model, v=v, g=group):
      return testing.equivariance_report(m, v, x, group=g).rows[-1].error

    fwd = forward()
    capture, _ = report_module._forward(model, (("train", False),), (), True)
    calls[f"{name} forward"] = lambda f=fwd, v=v: f(v, xj)
    calls[f"{name} capturing forward"] = lambda f=capture, v=v: f(v, xj)
    calls[f"{name} report"] = report
    passes[name] = 8 if group == "p4m" else 4
    cold[f"{name} report"] = _cold(report)
    cold[f"{name} forward"] = _cold(lambda f=forward, v=v: f()(v, xj))
  timings = _time(calls, repeats)
  ratios = {}
  for name, n in passes.items():
    t = {k: timings[f"{name} {k}"]["min_s"] for k in ("report", "forward")}
    t["capture"] = timings[f"{name} capturing forward"]["min_s"]
    ratios[f"(a) {name} report / ({n} forward passes), warm"] = t["report"] / (
      n * t["forward"]
    )
    ratios[f"(a) {name} report / ({n} capturing passes), warm"] = t[
      "report"
    ] / (n * t["capture"])
    first = cold[f"{name} forward"] + (n - 1) * t["forward"]
    ratios[f"(a) {name} report / ({n} forward passes), cold"] = (
      cold[f"{name} report"] / first
    )
  return {"timings": timings, "first_call_s": cold, "ratios": ratios}


def run_export(batch=32, size=28, repeats=10, names=("p4cnn", "user")):
  """(b): exported inference time over the group network's."""
  x = np.random.default_rng(1).standard_normal((batch, size, size, 1))
  x = jnp.asarray(x, jnp.float32)
  calls = {}
  for name in names:
    model = UserNet() if name == "user" else models.get_model(name)
    v = _variables(model, x)
    plain, plain_v = export.export(model, v, input_shape=(1, size, size, 1))
    group_fn = xla_options.jit(
      lambda v, a, m=model: m.apply(v, a), inference=True
    )
    plain_fn = xla_options.jit(plain.apply, inference=True)
    np.testing.assert_allclose(
      plain_fn(plain_v, x), group_fn(v, x), rtol=1e-4, atol=1e-4
    )
    calls[f"{name} group"] = lambda f=group_fn, v=v: f(v, x)
    calls[f"{name} exported"] = lambda f=plain_fn, v=plain_v: f(v, x)
  timings = _time(calls, repeats)
  ratios = {
    f"(b) {name} exported / group": timings[f"{name} exported"]["min_s"]
    / timings[f"{name} group"]["min_s"]
    for name in names
  }
  return {"timings": timings, "ratios": ratios}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32, help="Batch size.")
  parser.add_argument("--size", type=int, default=28, help="Image side.")
  parser.add_argument("--repeats", type=int, default=10, help="Timed calls.")
  parser.add_argument("--json", default=None, help="Also write results here.")
  args = parser.parse_args()
  for name in ("batch", "repeats"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.size < 28:
    parser.error(f"P4CNN needs --size >= 28, got {args.size}")
  results = {
    "config": vars(args),
    "device": jax.devices()[0].device_kind,
    "machine": platform.machine(),
    "report": run_report(args.batch, args.size, args.repeats),
    "export": run_export(args.batch, args.size, args.repeats),
  }
  for part in ("report", "export"):
    for key, ratio in results[part]["ratios"].items():
      print(f"{key}: {ratio:.2f}")
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(results, fh, indent=2)


if __name__ == "__main__":
  main()
