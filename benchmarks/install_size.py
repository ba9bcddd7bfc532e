r"""What `pip install .` costs a new user: time, size, and who brings what.

Creates a fresh virtual environment, runs a non-editable `pip install` of a
checkout into it, and prints the install's wall time, the environment's
size on disk, the number of distributions, the largest ones, and for each
direct requirement the distributions (and megabytes) that ONLY it brings
(its exclusive dependency closure: what dropping it would save).

  python -m benchmarks.install_size
  python -m benchmarks.install_size --repo=/path/to/older/checkout

The time includes resolving and unpacking; pip's download cache is used
unless `--no_cache` (then the network's speed dominates).
"""

import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_REPO = flags.DEFINE_string(
  "repo",
  str(pathlib.Path(__file__).resolve().parents[1]),
  "The equivlab checkout to install.",
)
_NO_CACHE = flags.DEFINE_bool(
  "no_cache", False, "Install with --no-cache-dir (downloads everything)."
)
_TOP = flags.DEFINE_integer("top", 12, "How many of the largest to list.")
_KEEP = flags.DEFINE_string(
  "keep", "", "If set, create the environment there and keep it."
)
_OUTPUT = flags.DEFINE_string(
  "output", "", "If set, write the results there as JSON."
)

# Runs INSIDE the new environment: sizes per distribution and the
# requirement graph, from the installed metadata.
_INSPECT = r"""
import importlib.metadata as md, json, os, re
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name as canon

sizes, graph = {}, {}
for dist in md.distributions():
  name = canon(dist.metadata["Name"])
  total = 0
  for f in dist.files or ():
    path = dist.locate_file(f)
    if os.path.isfile(path):
      total += os.path.getsize(path)
  sizes[name] = sizes.get(name, 0) + total
  deps = []
  for spec in dist.requires or ():
    req = Requirement(spec)
    if req.marker is None or req.marker.evaluate({"extra": ""}):
      deps.append(canon(req.name))
  graph[name] = deps
print(json.dumps({"sizes": sizes, "graph": graph}))
"""


def _closure(graph, roots):
  seen, todo = set(), list(roots)
  while todo:
    name = todo.pop()
    if name in seen or name not in graph:
      continue
    seen.add(name)
    todo.extend(graph[name])
  return seen


def _dir_size(path: pathlib.Path) -> int:
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(repo: str, env_dir: pathlib.Path, no_cache: bool) -> dict:
  """Installs `repo` into a new venv at `env_dir`; returns the figures."""
  subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
  python = str(env_dir / "bin" / "python")
  cmd = [python, "-m", "pip", "install", "--quiet", repo]
  if no_cache:
    cmd.insert(4, "--no-cache-dir")
  start = time.perf_counter()
  subprocess.run(cmd, check=True)
  seconds = time.perf_counter() - start
  info = json.loads(
    subprocess.run(
      [python, "-c", _INSPECT], check=True, capture_output=True, text=True
    ).stdout
  )
  sizes, graph = info["sizes"], info["graph"]
  base = {"pip", "setuptools", "wheel"}
  roots = [d for d in graph.get("equivlab", []) if d not in base]
  everything = _closure(graph, roots)
  exclusive = {}
  for root in roots:
    others = _closure(graph, [r for r in roots if r != root])
    only = sorted(everything - others)
    exclusive[root] = {
      "distributions": only,
      "mb": sum(sizes.get(d, 0) for d in only) / 1e6,
    }
  return {
    "install_s": seconds,
    "env_mb": _dir_size(env_dir) / 1e6,
    "num_distributions": len(sizes) - len(base & set(sizes)),
    "sizes_mb": {d: s / 1e6 for d, s in sizes.items()},
    "exclusive": exclusive,
  }


def main(argv):
  del argv
  if _KEEP.value:
    env_dir = pathlib.Path(_KEEP.value)
    if env_dir.exists():
      raise app.UsageError(f"--keep {env_dir} exists already.")
    result = measure(_REPO.value, env_dir, _NO_CACHE.value)
  else:
    tmp = tempfile.mkdtemp(prefix="equivlab-install-")
    try:
      result = measure(_REPO.value, pathlib.Path(tmp) / "env", _NO_CACHE.value)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  print(f"install: {result['install_s']:.1f} s")
  print(f"environment: {result['env_mb']:.0f} MB")
  print(f"distributions: {result['num_distributions']}")
  print("largest:")
  largest = sorted(result["sizes_mb"].items(), key=lambda kv: -kv[1])
  for name, mb in largest[: _TOP.value]:
    print(f"  {name:<28} {mb:8.1f} MB")
  print("what each direct requirement alone brings:")
  exclusive = sorted(result["exclusive"].items(), key=lambda kv: -kv[1]["mb"])
  for name, info in exclusive:
    extra = [d for d in info["distributions"] if d != name]
    print(f"  {name:<28} {info['mb']:8.1f} MB  {' '.join(extra)}")
  if _OUTPUT.value:
    pathlib.Path(_OUTPUT.value).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
