"""Side-by-side timings of the p4 convolutions, measured in one run.

Sizes (issue 2): batch 128, 28x28, 32 G-channels in and out, kernel 3,
float32, forward + backward (gradients w.r.t. input and filters) under jit.

  (a) `lifting_conv` (32 -> 32 x 4) vs a plain conv 32 -> 128 channels: the
      same FLOPs; target ratio <= 1.10;
  (b) `group_conv` (32 x 4 -> 32 x 4) vs a plain conv 128 -> 128 channels;
      target ratio <= 1.10;
  (c) each against a naive implementation that loops over the 4 rotations
      in Python (4 convolutions, each with a quarter of the output channels,
      then a stack);
  (d) export (`equivlab.nn.export`): inference (eval-mode logits under jit) of
      the exported plain CNN / the group network, for P4CNN and P4MCNN at
      their default widths on 28x28 images, batch statistics from two
      train-mode steps.

  python -m benchmarks.gconv [--repeats 20] [--batch 128] [--json out.json]
  python -m benchmarks.gconv --no-convs   # (d) only

Ratios are ours / plain (or naive / ours for (c)). Each timing is the
minimum over `--repeats` calls after a warm-up, all variants timed in
alternation so that load on a shared machine hits them alike; medians are
reported too. Every side compiles as equivlab does (`xla_options.jit`: on
CPU, YNNPACK's convolutions off). On GPU pass `--precision highest` for full
float32 matmuls.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from equivlab import gconv
from equivlab.nn import export, models
from equivlab.ops import xla_options

_DN = ("NHWC", "HWIO", "NHWC")


def _plain(x, w, precision):
  return lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=_DN, precision=precision
  )


def _naive_lifting(x, w, precision):
  """The 4 rotated filters, one convolution each (the loop we avoid)."""
  outs = [_plain(x, jnp.rot90(w, s, axes=(0, 1)), precision) for s in range(4)]
  return jnp.stack(outs, axis=-1)


def _naive_group(f, w, precision):
  x = f.reshape(*f.shape[:3], -1)
  outs = []
  for s in range(4):
    w_s = jnp.roll(jnp.rot90(w, s, axes=(0, 1)), s, axis=3)
    outs.append(
      _plain(x, w_s.reshape(*w.shape[:2], -1, w.shape[-1]), precision)
    )
  return jnp.stack(outs, axis=-1)


def _fwd_bwd(fn):
  """jit(grad) of a scalar loss of `fn(x, w)` w.r.t. both arguments.

  Compiled as equivlab compiles (`xla_options.jit`), every side alike.
  """

  def loss(x, w):
    out = fn(x, w)
    return jnp.mean(jnp.square(out))

  return xla_options.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _time_all(named_calls, repeats):
  """Min and median seconds per call of each (fn, args), in alternation."""
  for fn, args in named_calls.values():
    jax.block_until_ready(fn(*args))  # compile and warm up
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in named_calls}
  for _ in range(repeats):
    for name, (fn, args) in named_calls.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {
    name: {"min_s": min(t), "median_s": statistics.median(t)}
    for name, t in times.items()
  }


def run(batch=128, size=28, channels=32, kernel=3, repeats=20, precision=None):
  """Times all variants and returns the timings and ratios."""
  rng = np.random.default_rng(0)

  def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)

  c, g = channels, 4
  x = normal(batch, size, size, c)
  f = normal(batch, size, size, c, g)
  w_lift = normal(kernel, kernel, c, c)
  w_group = normal(kernel, kernel, c, g, c)
  w_plain_lift = normal(kernel, kernel, c, c * g)
  w_plain_group = normal(kernel, kernel, c * g, c * g)
  f_flat = f.reshape(batch, size, size, c * g)

  def ours(conv):
    return lambda a, w: conv(a, w, precision=precision)

  def with_precision(fn):
    return lambda a, w: fn(a, w, precision)

  calls = {
    "lifting_conv": (_fwd_bwd(ours(gconv.lifting_conv)), (x, w_lift)),
    "plain 32->128": (_fwd_bwd(with_precision(_plain)), (x, w_plain_lift)),
    "naive lifting": (
      _fwd_bwd(with_precision(_naive_lifting)),
      (x, w_lift),
    ),
    "group_conv": (_fwd_bwd(ours(gconv.group_conv)), (f, w_group)),
    "plain 128->128": (
      _fwd_bwd(with_precision(_plain)),
      (f_flat, w_plain_group),
    ),
    "naive group": (_fwd_bwd(with_precision(_naive_group)), (f, w_group)),
  }
  # The implementations agree before they are timed.
  for ours_name, naive_name in (
    ("lifting_conv", "naive lifting"),
    ("group_conv", "naive group"),
  ):
    a = calls[ours_name][0](*calls[ours_name][1])
    b = calls[naive_name][0](*calls[naive_name][1])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-3)
  timings = _time_all(calls, repeats)
  t = {name: v["min_s"] for name, v in timings.items()}
  ratios = {
    "(a) lifting_conv / plain 32->128": t["lifting_conv"] / t["plain 32->128"],
    "(b) group_conv / plain 128->128": t["group_conv"] / t["plain 128->128"],
    "(c) naive lifting / lifting_conv": t["naive lifting"] / t["lifting_conv"],
    "(c) naive group / group_conv": t["naive group"] / t["group_conv"],
  }
  return {
    "device": str(jax.devices()[0].device_kind),
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "sizes": dict(
      batch=batch, size=size, g_channels=channels, kernel=kernel, group=4
    ),
    "precision": str(precision),
    "repeats": repeats,
    "timings": timings,
    "ratios": ratios,
  }


def run_export(batch=128, size=28, repeats=20, names=("p4cnn", "p4mcnn")):
  """Times eval-mode inference of each group network and its export."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((batch, size, size, 1)), jnp.float32)
  calls, ratios = {}, {}
  for name in names:
    model = models.get_model(name)
    variables = jax.jit(lambda k, m=model: m.init(k, x, train=False))(
      jax.random.key(0, impl="rbg")  # compiles faster than threefry on CPU
    )
    train = jax.jit(
      lambda v, a, m=model: m.apply(v, a, train=True, mutable=["batch_stats"])
    )
    for _ in range(2):  # running statistics off their initial values
      variables = {**variables, **train(variables, x)[1]}
    plain, plain_vars = export.export_p4cnn(model, variables)
    group_fn = xla_options.jit(
      lambda v, a, m=model: m.apply(v, a, train=False), inference=True
    )
    calls[f"{name} group"] = (group_fn, (variables, x))
    calls[f"{name} exported"] = (
      xla_options.jit(plain.apply, inference=True),
      (plain_vars, x),
    )
    np.testing.assert_allclose(  # the same logits before they are timed
      calls[f"{name} exported"][0](plain_vars, x),
      group_fn(variables, x),
      rtol=1e-4,
      atol=1e-4,
    )
  timings = _time_all(calls, repeats)
  for name in names:
    t_plain = timings[f"{name} exported"]["min_s"]
    ratios[f"(d) {name} exported / group"] = (
      t_plain / timings[f"{name} group"]["min_s"]
    )
  return {"timings": timings, "ratios": ratios, "batch": batch, "size": size}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128, help="Batch size.")
  parser.add_argument("--size", type=int, default=28, help="Image side.")
  parser.add_argument("--channels", type=int, default=32, help="G-channels.")
  parser.add_argument("--repeats", type=int, default=20, help="Timed calls.")
  parser.add_argument(
    "--precision",
    choices=["default", "high", "highest"],
    default="default",
    help="lax precision of every convolution (use 'highest' on GPU/TPU).",
  )
  parser.add_argument("--json", default=None, help="Also write results here.")
  parser.add_argument(
    "--convs",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="Time the convolutions, (a)-(c).",
  )
  parser.add_argument(
    "--export",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="Time exported plain CNNs against their group networks, (d).",
  )
  args = parser.parse_args()
  for name in ("batch", "size", "channels", "repeats"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.export and args.size < 28:
    parser.error(
      f"--export times P4CNN/P4MCNN, which need --size >= 28, got "
      f"{args.size} (or pass --no-export)"
    )
  # The JSON keeps the convolutions' results at its top level.
  results = _main_convs(args) if args.convs else {}
  if args.export:
    results["export"] = _main_export(args)
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(results, fh, indent=2)


def _main_export(args):
  results = run_export(batch=args.batch, size=args.size, repeats=args.repeats)
  print(
    f"export: eval-mode inference under jit, batch {results['batch']}, "
    f"{results['size']}x{results['size']}, min over {args.repeats} calls"
  )
  for name, v in results["timings"].items():
    print(
      f"  {name:18s} min {1e3 * v['min_s']:9.2f} ms  "
      f"median {1e3 * v['median_s']:9.2f} ms"
    )
  for name, ratio in results["ratios"].items():
    print(f"  {name:36s} {ratio:6.3f}")
  return results


def _main_convs(args):
  precision = (
    None
    if args.precision == "default"
    else getattr(lax.Precision, args.precision.upper())
  )
  results = run(
    batch=args.batch,
    size=args.size,
    channels=args.channels,
    repeats=args.repeats,
    precision=precision,
  )
  print(
    f"p4 convolutions, forward+backward under jit on {results['device']} "
    f"({results['backend']}), {results['sizes']}, precision {precision}"
  )
  for name, v in results["timings"].items():
    print(
      f"  {name:16s} min {1e3 * v['min_s']:9.2f} ms  "
      f"median {1e3 * v['median_s']:9.2f} ms"
    )
  for name, ratio in results["ratios"].items():
    print(f"  {name:36s} {ratio:6.3f}")
  return results


if __name__ == "__main__":
  main()
