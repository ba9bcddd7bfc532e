"""The escnn side of `benchmarks/gconv.py --peers` (run by it, not by hand).

Times escnn's `R2Conv` (train mode: the filter basis is expanded on every
call, as in training) forward + backward on one layer and prints one JSON
line: the minimum and median seconds per call and the process's peak
resident memory. It runs under the interpreter given to `--peer_python`
(escnn needs numpy < 2 through lie-learn, so it usually lives in a venv of
its own), with the thread count and CPU affinity its parent sets.

  python benchmarks/escnn_side.py --layer group --group p4 --fields 32 \
      --batch 128 --size 28 --repeats 5 --threads 1
"""

import argparse
import json
import resource
import statistics
import time


def _layer(group: str, kind: str, fields: int):
  from escnn import gspaces  # noqa: PLC0415 (optional peer)
  from escnn import nn as enn  # noqa: PLC0415

  space = gspaces.rot2dOnR2(4) if group == "p4" else gspaces.flipRot2dOnR2(4)
  regular = enn.FieldType(space, fields * [space.regular_repr])
  if kind == "lifting":
    source = enn.FieldType(space, [space.trivial_repr])
  else:
    source = regular
  conv = enn.R2Conv(source, regular, kernel_size=3, padding=1)
  conv.train()
  return conv, source


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layer", choices=["lifting", "group"], required=True)
  parser.add_argument("--group", choices=["p4", "p4m"], default="p4")
  parser.add_argument("--fields", type=int, default=32)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--size", type=int, default=28)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=1)
  args = parser.parse_args()

  import torch  # noqa: PLC0415 (optional peer)
  from escnn import nn as enn  # noqa: PLC0415

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  conv, source = _layer(args.group, args.layer, args.fields)
  x = torch.randn(args.batch, source.size, args.size, args.size)
  x.requires_grad_(True)

  def step():
    out = conv(enn.GeometricTensor(x, source)).tensor
    loss = out.square().mean()
    loss.backward()
    x.grad = None
    conv.zero_grad(set_to_none=True)

  step()  # warm-up: allocations, basis expansion caches
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(
    json.dumps(
      {
        "side": "escnn",
        "torch": torch.__version__,
        "min_s": min(times),
        "median_s": statistics.median(times),
        "peak_rss_mib": peak_kib / 1024,
        "channels_in": source.size,
        "channels_out": conv.out_type.size,
      }
    )
  )


if __name__ == "__main__":
  main()
