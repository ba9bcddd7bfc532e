"""Writes the API reference: one Markdown page per module of equivlab.

Every module and package under `equivlab/` gets a page listing its public
names: `__all__` where the module defines it, else the functions and
classes the module itself defines (no leading underscore). A name is
documented in full once, on the page of the module that defines it; the
packages and thin re-exports that make it available elsewhere list it in a
table that links there. The pages are written to `docs/api/generated/` (not
committed) every time the site is built, so a name added to any `__all__`
appears without editing the docs.

  python docs/gen_api.py [OUT_DIR]
"""

import importlib
import inspect
import pathlib
import pkgutil
import shutil
import sys
import types

_DOCS = pathlib.Path(__file__).resolve().parent
_ROOT = _DOCS.parent
ROOT_PACKAGE = "equivlab"


def module_names(root: str = ROOT_PACKAGE) -> list[str]:
  """The dotted names of `root` and every module below it, sorted."""
  package = importlib.import_module(root)
  names = [root]
  for info in pkgutil.walk_packages(package.__path__, prefix=f"{root}."):
    if not info.name.rsplit(".", 1)[-1].startswith("_"):
      names.append(info.name)
  return sorted(names)


def public_names(module: types.ModuleType) -> list[str]:
  """`__all__`, or the public functions and classes `module` defines."""
  if hasattr(module, "__all__"):
    return list(module.__all__)
  names = []
  for name, value in vars(module).items():
    if name.startswith("_"):
      continue
    if (inspect.isfunction(value) or inspect.isclass(value)) and (
      getattr(value, "__module__", None) == module.__name__
    ):
      names.append(name)
  return sorted(names)


def _kind(value) -> str:
  if inspect.isclass(value):
    return "class"
  if callable(value):
    return "function"
  return "data"


def _home(name: str, value, here: str, tables: dict[str, list[str]], mods):
  """The module whose page documents `value` in full.

  Among the modules that list `name` as this very object, the one that
  defines it (for functions and classes), else the deepest one; every page
  that lists the object computes the same answer.
  """
  owner = getattr(value, "__module__", None)
  candidates = [here] + [
    other
    for other, names in tables.items()
    if other != here
    and name in names
    and getattr(mods[other], name, None) is value
  ]

  def key(modname: str):
    return (modname == owner, modname.count("."), len(modname), modname)

  return max(candidates, key=key)


def render(modname: str, tables, mods) -> str:
  """The Markdown of one module's page."""
  module = mods[modname]
  names = tables[modname]
  own, elsewhere = [], []
  for name in names:
    value = getattr(module, name)
    if inspect.ismodule(value):
      elsewhere.append((name, value.__name__, "module"))
      continue
    home = _home(name, value, modname, tables, mods)
    if home == modname:
      own.append((name, _kind(value)))
    else:
      elsewhere.append((name, f"{home}.{name}", _kind(value)))
  lines = [
    f"# `{modname}`",
    "",
    "```{eval-rst}",
    f".. automodule:: {modname}",
    "   :no-members:",
    "```",
    "",
  ]
  if not names:
    lines += ["This module has no public names.", ""]
  if own:
    lines += ["## Summary", "", "```{eval-rst}", ".. autosummary::", ""]
    lines += [f"   {name}" for name, _ in own]
    lines += ["```", ""]
  if elsewhere:
    lines += [
      "## Available here, documented where defined",
      "",
      "| name | documented at |",
      "|---|---|",
    ]
    for name, target, kind in elsewhere:
      role = "mod" if kind == "module" else "obj"
      lines.append(f"| `{name}` | {{py:{role}}}`{target}` |")
    lines.append("")
  if own:
    lines += ["## Reference", "", "```{eval-rst}"]
    for name, kind in own:
      directive = {"class": "autoclass", "function": "autofunction"}.get(
        kind, "autodata"
      )
      lines.append(f".. {directive}:: {modname}.{name}")
      if kind == "data":
        lines.append("   :no-value:")
      if kind == "class":
        lines.append("   :members:")
      lines.append("")
    lines += ["```", ""]
  return "\n".join(lines)


def write_pages(out_dir: pathlib.Path) -> list[str]:
  """Writes every module's page (and nothing else) into `out_dir`.

  Args:
    out_dir: the folder, emptied first.

  Returns:
    The module names, in the order of the pages.
  """
  if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
  mods, tables = {}, {}
  for modname in module_names():
    try:
      mods[modname] = importlib.import_module(modname)
    except ImportError as error:  # An optional extra is not installed.
      print(f"gen_api: skipping {modname}: {error}", file=sys.stderr)
      continue
    tables[modname] = public_names(mods[modname])
  if out_dir.exists():
    shutil.rmtree(out_dir)
  out_dir.mkdir(parents=True)
  for modname in tables:
    text = render(modname, tables, mods)
    (out_dir / f"{modname}.md").write_text(text, encoding="utf-8")
  return list(tables)


if __name__ == "__main__":
  target = (
    pathlib.Path(sys.argv[1])
    if len(sys.argv) > 1
    else _DOCS / "api" / "generated"
  )
  print("\n".join(write_pages(target)))
