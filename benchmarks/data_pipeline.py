"""Is the batch iterator a bottleneck? Step time with it vs preloaded data.

Trains the same model for the same steps twice on the embedded digits:
(a) the way `equivlab.train` does, batches drawn by
`data.iterate_batches` (a per-epoch permutation, a numpy gather) and put on
the devices by `parallel.shard_batch` every step; (b) on batches prepared
beforehand and already on the devices, so a step is pure compute. Prints
milliseconds per step for both and their ratio (1.0 = the iterator costs
nothing). Both loops dispatch asynchronously and block only at the end.

Usage: python -m benchmarks.data_pipeline [--model cnn] [--batch_size 128]
  [--steps 200] [--num_devices 1]
"""

import argparse
import time

import jax
import numpy as np

from equivlab import data, parallel, train


def _time_steps(train_step, state, batches, steps):
  """Seconds for `steps` train steps over `batches` (an iterable)."""
  start = time.perf_counter()
  done = 0
  for batch in batches:
    state, metrics = train_step(state, batch())
    done += 1
    if done == steps:
      break
  jax.block_until_ready((state, metrics))
  return time.perf_counter() - start, done


def run(model, batch_size, steps, num_devices, repeats=3):
  """Measures both loops; returns {"iterator_ms", "preloaded_ms", "ratio"}."""
  images, labels = data.load_dataset("embedded", "train")
  mesh = parallel.make_mesh(num_devices)
  config = train.TrainConfig(model=model, batch_size=batch_size)
  state, run_steps = train.prepare(config, images[:2], total_steps=steps)
  state = parallel.replicate(state, mesh)
  key = jax.random.PRNGKey(1)
  per_epoch = data.num_batches(len(labels), batch_size, "drop")

  def iterator_batches():
    epoch = 0
    while True:
      for batch in data.iterate_batches(
        images, labels, batch_size, key=key, epoch=epoch
      ):
        yield lambda b=batch: parallel.shard_batch(b, mesh)
      epoch += 1

  preloaded = [
    parallel.shard_batch(b, mesh)
    for b in data.iterate_batches(images, labels, batch_size, key=key)
  ]
  jax.block_until_ready(preloaded)

  def preloaded_batches():
    while True:
      for batch in preloaded:
        yield lambda b=batch: b

  # Compile and warm up once, outside the timings.
  _time_steps(run_steps.train_step, state, preloaded_batches(), 3)
  best = {"iterator": np.inf, "preloaded": np.inf}
  for _ in range(repeats):  # Interleaved, best of `repeats`: less noise.
    for name, batches in (
      ("iterator", iterator_batches()),
      ("preloaded", preloaded_batches()),
    ):
      seconds, done = _time_steps(run_steps.train_step, state, batches, steps)
      best[name] = min(best[name], seconds / done)
  print(
    f"model={model} batch_size={batch_size} steps={steps} "
    f"devices={mesh.devices.size} ({per_epoch} batches per epoch, "
    f"backend {jax.default_backend()})"
  )
  result = {
    "iterator_ms": 1e3 * best["iterator"],
    "preloaded_ms": 1e3 * best["preloaded"],
  }
  result["ratio"] = result["iterator_ms"] / result["preloaded_ms"]
  print(
    f"  iterator  {result['iterator_ms']:8.3f} ms/step\n"
    f"  preloaded {result['preloaded_ms']:8.3f} ms/step\n"
    f"  ratio iterator/preloaded = {result['ratio']:.3f}"
  )
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="cnn", help="equivlab model name")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--num_devices", type=int, default=1)
  args = parser.parse_args()
  run(args.model, args.batch_size, args.steps, args.num_devices)


if __name__ == "__main__":
  main()
