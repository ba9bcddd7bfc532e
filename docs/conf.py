"""Sphinx configuration of the equivlab documentation (MyST Markdown).

The API pages are generated from the code at every build (`gen_api.py`);
the results pages are generated from `docs/results/*.json` by
`build_results.py` and committed (a test checks that they are current).
Nothing is fetched from the network: no intersphinx.
"""

import inspect
import pathlib
import re
import sys
import typing

_DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_DOCS.parent))
sys.path.insert(0, str(_DOCS))

import gen_api  # noqa: E402
from sphinx.errors import PycodeError  # noqa: E402
from sphinx.pycode import ModuleAnalyzer  # noqa: E402

import equivlab  # noqa: E402

gen_api.write_pages(_DOCS / "api" / "generated")
release = version = equivlab.__version__

project = "equivlab"
author = "the equivlab authors"
copyright = "the equivlab authors, Apache-2.0"  # noqa: A001

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "results/*.txt", "**/.ipynb_checkpoints"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autosummary_generate = False
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_mock_imports = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" sections as fields, so that they do not describe the same
# attribute a second time beside `:members:`.
napoleon_use_ivar = True
add_module_names = False

html_theme = "furo"
html_title = "equivlab"
html_static_path = []
html_show_sourcelink = False

# The docstrings are Google style with Markdown code spans (`x`): make the
# spans RST literals before napoleon reads them.
_CODE_SPAN = re.compile(r"(?<![`\w])`([^`\n]+)`(?![`\w])")


def _markdown_code_spans(app, what, name, obj, options, lines):
  del app, what, name, obj, options
  for i, line in enumerate(lines):
    lines[i] = _CODE_SPAN.sub(r"``\1``", line)


def _words(text):
  return " ".join(text.split())


def _data_doc_comments(app, what, name, obj, options, lines):
  """Module constants: their `#:` comment, never their type's docstring.

  A constant or type alias without a doc comment in the module whose page
  documents it (a dict re-exported by a package, `dict[str, Array]`)
  would get the docstring of `dict` itself. Its `#:` comment is looked up
  in the modules below that one, where it is defined, and without one the
  docstring stays empty.
  """
  del app, what, options
  if not lines:
    return
  inherited = {
    _words(inspect.getdoc(kind) or "")
    for kind in (type(obj), typing.get_origin(obj))
    if kind is not None
  }
  if _words(" ".join(lines)) not in inherited - {""}:
    return
  modname, attr = name.rsplit(".", 1)
  for other in sorted(sys.modules):
    if other != modname and not other.startswith(f"{modname}."):
      continue
    if getattr(sys.modules[other], attr, None) is not obj:
      continue
    try:
      comments = ModuleAnalyzer.for_module(other).find_attr_docs()
    except PycodeError:
      continue
    if ("", attr) in comments:
      lines[:] = list(comments[("", attr)])
      return
  lines[:] = []


def setup(app):
  app.connect("autodoc-process-docstring", _data_doc_comments, priority=300)
  app.connect("autodoc-process-docstring", _markdown_code_spans, priority=400)
