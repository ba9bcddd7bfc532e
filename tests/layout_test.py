"""The package layout: no import cycle, and imports run down the layers.

Every module of equivlab is parsed (nothing is imported), and every import
is counted, the ones inside functions included.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "equivlab"

# What each part of equivlab may import (besides itself). A part is a
# top-level module or package of equivlab.
_BASE = {"checks"}
ALLOWED = {
  "checks": set(),
  "ops": _BASE,
  "groups": _BASE | {"ops"},
  "gconv": _BASE | {"ops", "groups"},
  "parallel": _BASE,
  "data": _BASE | {"ops", "groups", "gconv"},
  "nn": _BASE | {"ops", "groups", "gconv"},
  "testing": _BASE | {"ops", "groups", "gconv", "nn"},
  "training": _BASE | {"ops", "groups", "gconv", "nn", "data", "parallel"},
  "analysis": _BASE
  | {"ops", "groups", "gconv", "nn", "data", "parallel", "training", "testing"},
  "fundamentals": _BASE | {"ops", "groups", "gconv", "nn"},
  "rnn": _BASE | {"ops", "parallel"},
  "rl": _BASE | {"ops", "parallel", "training"},
  # The pinned import paths: thin re-exports.
  "train": {"training"},
  "export": {"nn"},
  "derivations": {"fundamentals"},
}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(target: str, modules) -> str | None:
  while target and target not in modules:
    target = target.rpartition(".")[0]
  return target or None


def _imports(name: str, path: pathlib.Path, modules) -> set[str]:
  """The equivlab modules `name` imports, at any depth of its code."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, *([base] if base else [])])
      targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
    else:
      continue
    for target in targets:
      if target.startswith("equivlab"):
        resolved = _resolve(target, modules)
        # A module's own packages are loaded before it: not an edge.
        if resolved and not (name + ".").startswith(resolved + "."):
          found.add(resolved)
  return found


def _graph():
  modules = _modules()
  return {name: _imports(name, p, modules) for name, p in modules.items()}


def _cycles(graph) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  return found


def _part(module: str) -> str:
  return module.split(".")[1] if "." in module else ""


def test_no_import_cycle_anywhere_in_equivlab():
  assert _cycles(_graph()) == []


def test_every_part_imports_only_the_layers_below_it():
  wrong = []
  for module, targets in _graph().items():
    part = _part(module)
    if not part:
      continue
    allowed = ALLOWED.get(part)
    assert allowed is not None, f"{module}: part {part!r} has no layer"
    for target in targets:
      other = _part(target)
      if other and other != part and other not in allowed:
        wrong.append(f"{module} -> {target}")
  assert wrong == []


def test_the_checker_sees_cycles_and_imports_inside_functions(tmp_path):
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycles(graph) == [["a", "b", "c"]]
  modules = {"equivlab.nn.layers": None, "equivlab.training.loop": None}
  source = tmp_path / "layers.py"
  source.write_text(
    "def f():\n  from equivlab.training import loop\n  return loop\n"
  )
  assert _imports("equivlab.nn.layers", source, modules) == {
    "equivlab.training.loop"
  }


@pytest.mark.parametrize("shim", ["train", "export", "derivations"])
def test_the_pinned_paths_are_thin_re_exports(shim):
  body = ast.parse((ROOT / f"{shim}.py").read_text()).body
  docstring = body[:1] if isinstance(body[0], ast.Expr) else []
  kinds = {type(node).__name__ for node in body[len(docstring) :]}
  assert kinds <= {"Import", "ImportFrom", "Assign"}, kinds
  assigned = {
    target.id
    for node in body
    if isinstance(node, ast.Assign)
    for target in node.targets
  }
  assert assigned <= {"__all__"}, assigned
