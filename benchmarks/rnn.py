"""Side-by-side timings of the scanned RNN, measured in one run.

Sizes: batch 32, T = 100, hidden 128, input 128, float32, forward+backward.
  (a) our scanned Elman (`rnn.elman_unroll`, the input product hoisted out
      of the scan, + `jax.grad`) vs flax `nn.RNN(nn.SimpleCell)`: target
      ratio <= 1.0; the generic `rnn.unroll(elman_cell)` is timed too;
  (b) compile time of our unroll at T = 10 vs T = 1000 (target <= 1.5), and
      of a Python-unrolled loop, whose compile time grows with T;
  (c) the hand-written `elman_bptt` vs `jax.grad(elman_loss)` (vmapped);
  (d) when PyTorch is installed, our step vs `torch.nn.RNN` on CPU.

  python -m benchmarks.rnn [--repeats 20] [--json /tmp/rnn_bench.json]

Ratios are ours / theirs (below 1 means ours is faster). Each timing is the
minimum over `--repeats` runs after a warm-up, the two sides measured in
alternation: on a shared machine the minimum is the least disturbed
estimate of the intrinsic cost (the medians are reported too). Compile
times are single `jit(...).lower(...).compile()` calls. torch is timed with
1 thread and with its default thread count.
"""

import argparse
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import rnn

BATCH, STEPS, HIDDEN, INPUT, CLASSES = 32, 100, 128, 128, 10


def _time_pair(fn_a, args_a, fn_b, args_b, repeats: int):
  """Min and median seconds of two jitted calls, timed in alternation."""
  jax.block_until_ready(fn_a(*args_a))  # compile and warm up
  jax.block_until_ready(fn_b(*args_b))
  times_a, times_b = [], []
  for _ in range(repeats):
    for fn, args, times in ((fn_a, args_a, times_a), (fn_b, args_b, times_b)):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - start)
  return (
    (min(times_a), statistics.median(times_a)),
    (min(times_b), statistics.median(times_b)),
  )


def _our_loss(params, xs):
  h0 = jnp.zeros((xs.shape[0], HIDDEN), xs.dtype)
  _, hs = rnn.elman_unroll(params, xs, h0, time_major=False)
  return jnp.sum(hs * hs)


def _our_generic_loss(params, xs):
  h0 = jnp.zeros((xs.shape[0], HIDDEN), xs.dtype)
  _, hs = rnn.unroll(rnn.elman_cell, params, xs, h0, time_major=False)
  return jnp.sum(hs * hs)


def _python_loop_loss(params, xs):
  h = jnp.zeros((xs.shape[0], HIDDEN), xs.dtype)
  total = jnp.zeros((), xs.dtype)
  for t in range(xs.shape[1]):
    h = jnp.tanh(
      xs[:, t] @ params["W_xh"].T + h @ params["W_hh"].T + params["b_h"][None]
    )
    total = total + jnp.sum(h * h)
  return total


def _compile_seconds(fn, *args) -> float:
  start = time.perf_counter()
  jax.jit(fn).lower(*args).compile()
  return time.perf_counter() - start


def bench_flax(params, xs, repeats):
  """(a) ours vs flax nn.RNN(nn.SimpleCell) on the same weights."""
  ours = jax.jit(jax.grad(_our_loss))
  model = nn.RNN(nn.SimpleCell(HIDDEN))
  variables = model.init(jax.random.key(0), xs)
  flax_params = {
    "cell": {
      "i": {"kernel": params["W_xh"].T, "bias": params["b_h"]},
      "h": {"kernel": params["W_hh"].T},
    }
  }
  expected = jax.tree.structure(variables["params"])
  assert jax.tree.structure(flax_params) == expected, expected

  def flax_loss(p, xs):
    hs = model.apply({"params": p}, xs)
    return jnp.sum(hs * hs)

  np.testing.assert_allclose(
    _our_loss(params, xs), flax_loss(flax_params, xs), rtol=1e-4
  )
  theirs = jax.jit(jax.grad(flax_loss))
  (t_ours, m_ours), (t_flax, m_flax) = _time_pair(
    ours, (params, xs), theirs, (flax_params, xs), repeats
  )
  # The generic path: `unroll(elman_cell)`, input product inside the scan.
  generic = jax.jit(jax.grad(_our_generic_loss))
  (t_gen, m_gen), (t_flax2, m_flax2) = _time_pair(
    generic, (params, xs), theirs, (flax_params, xs), repeats
  )
  return {
    "ours_s": t_ours,
    "flax_s": t_flax,
    "ratio": t_ours / t_flax,
    "median_ours_s": m_ours,
    "median_flax_s": m_flax,
    "median_ratio": m_ours / m_flax,
    "generic_unroll_s": t_gen,
    "generic_ratio": t_gen / t_flax2,
    "generic_median_ratio": m_gen / m_flax2,
  }


def bench_compile(params, key, long_t, python_long_t):
  """(b) compile time at T = 10 vs T = long_t, scan vs Python loop."""
  out = {}
  for name, fn, t_long in (
    ("scan", _our_loss, long_t),
    ("python_loop", _python_loop_loss, python_long_t),
  ):
    grad = jax.grad(fn)
    short = jax.random.normal(key, (BATCH, 10, INPUT))
    long = jax.random.normal(key, (BATCH, t_long, INPUT))
    t_short = _compile_seconds(grad, params, short)
    t_long_s = _compile_seconds(grad, params, long)
    out[name] = {
      "T_short": 10,
      "T_long": t_long,
      "short_s": t_short,
      "long_s": t_long_s,
      "ratio": t_long_s / t_short,
    }
  return out


def bench_bptt(key, repeats):
  """(c) the hand-written BPTT vs jax.grad of the loss, batched by vmap."""
  k_p, k_x, k_y = jax.random.split(key, 3)
  params = rnn.init_elman(k_p, INPUT, HIDDEN, CLASSES)
  xs = jax.random.normal(k_x, (BATCH, STEPS, INPUT))
  ys = jax.random.randint(k_y, (BATCH, STEPS), 0, CLASSES)
  h0 = jnp.zeros((BATCH, HIDDEN))
  hand = jax.jit(rnn.elman_bptt_batch)
  auto = jax.jit(jax.value_and_grad(rnn.elman_loss_batch))
  np.testing.assert_allclose(
    hand(params, xs, ys, h0)[1]["W_hh"],
    auto(params, xs, ys, h0)[1]["W_hh"],
    rtol=1e-3,
    atol=1e-4,
  )
  args = (params, xs, ys, h0)
  (t_hand, m_hand), (t_auto, m_auto) = _time_pair(
    hand, args, auto, args, repeats
  )
  return {
    "bptt_s": t_hand,
    "autodiff_s": t_auto,
    "ratio": t_hand / t_auto,
    "median_ratio": m_hand / m_auto,
  }


def bench_torch(params, xs, repeats, t_ours):
  """(d) ours vs torch.nn.RNN (tanh) on CPU; None when torch is absent."""
  try:
    import torch  # noqa: PLC0415 (optional peer)
  except ImportError:
    return None
  default_threads = torch.get_num_threads()
  out = {"torch_version": torch.__version__, "ours_s": t_ours}
  for threads in sorted({1, default_threads}):
    torch.set_num_threads(threads)
    t_torch, m_torch = _time_torch(torch, params, xs, repeats)
    out[f"threads_{threads}"] = {
      "torch_s": t_torch,
      "median_torch_s": m_torch,
      "ratio": t_ours / t_torch,
    }
  torch.set_num_threads(default_threads)
  return out


def _time_torch(torch, params, xs, repeats):
  torch.manual_seed(0)
  model = torch.nn.RNN(INPUT, HIDDEN, batch_first=True, bias=True)
  with torch.no_grad():
    for name, key in (("weight_ih_l0", "W_xh"), ("weight_hh_l0", "W_hh")):
      getattr(model, name).copy_(torch.tensor(np.array(params[key])))
    model.bias_ih_l0.copy_(torch.tensor(np.array(params["b_h"])))
    model.bias_hh_l0.zero_()
  x = torch.tensor(np.array(xs))

  def step():
    model.zero_grad(set_to_none=True)
    out, _ = model(x)
    loss = (out * out).sum()
    loss.backward()
    return loss

  loss = step()
  np.testing.assert_allclose(
    loss.item(), float(_our_loss(params, xs)), rtol=1e-3
  )
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return min(times), statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--long_t", type=int, default=1000)
  parser.add_argument(
    "--python_long_t",
    type=int,
    default=1000,
    help="T of the Python-unrolled loop's long compile (it grows with T).",
  )
  parser.add_argument("--json", default="", help="Also write results here.")
  args = parser.parse_args()

  key = jax.random.key(0)
  k_p, k_x, k_c, k_b = jax.random.split(key, 4)
  params = rnn.init_elman(k_p, INPUT, HIDDEN)
  xs = jax.random.normal(k_x, (BATCH, STEPS, INPUT))
  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform}, batch {BATCH},"
    f" T {STEPS}, hidden {HIDDEN}, input {INPUT}, float32"
  )
  results = {"a_flax": bench_flax(params, xs, args.repeats)}
  a = results["a_flax"]
  print(
    f"(a) ours {a['ours_s'] * 1e3:.2f} ms, flax nn.RNN(SimpleCell) "
    f"{a['flax_s'] * 1e3:.2f} ms: ratio {a['ratio']:.3f} (medians: "
    f"{a['median_ratio']:.3f})"
  )
  print(
    f"(a) generic unroll(elman_cell) {a['generic_unroll_s'] * 1e3:.2f} ms: "
    f"ratio {a['generic_ratio']:.3f} (medians: "
    f"{a['generic_median_ratio']:.3f})"
  )
  results["b_compile"] = bench_compile(
    params, k_c, args.long_t, args.python_long_t
  )
  for name, b in results["b_compile"].items():
    print(
      f"(b) {name}: compile T={b['T_short']} {b['short_s']:.2f} s, "
      f"T={b['T_long']} {b['long_s']:.2f} s: ratio {b['ratio']:.2f}"
    )
  results["c_bptt"] = bench_bptt(k_b, args.repeats)
  c = results["c_bptt"]
  print(
    f"(c) elman_bptt {c['bptt_s'] * 1e3:.2f} ms, jax.grad(elman_loss) "
    f"{c['autodiff_s'] * 1e3:.2f} ms: ratio {c['ratio']:.3f} (medians: "
    f"{c['median_ratio']:.3f})"
  )
  results["d_torch"] = bench_torch(params, xs, args.repeats, a["ours_s"])
  d = results["d_torch"]
  if d is None:
    print("(d) skipped: torch is not installed.")
  else:
    for name, r in d.items():
      if name.startswith("threads_"):
        print(
          f"(d) ours {d['ours_s'] * 1e3:.2f} ms, torch "
          f"{d['torch_version']} nn.RNN ({name}) {r['torch_s'] * 1e3:.2f}"
          f" ms: ratio {r['ratio']:.3f}"
        )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
