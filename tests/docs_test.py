"""The documentation: results pages current, the site builds, links hold.

The site is built once per test session into a temporary folder with
`sphinx-build -W --keep-going` (warnings are errors), the way `.ci/run`
builds it; the build takes well under the 2 minutes it is allowed on 2
cores. Skipped where the `docs` extra is not installed.
"""

import html.parser
import json
import pathlib
import subprocess
import sys
import urllib.parse

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_DOCS = _ROOT / "docs"
sys.path.insert(0, str(_DOCS))

import build_results  # noqa: E402
import gen_api  # noqa: E402

_GUIDES = sorted(p.stem for p in (_DOCS / "guides").glob("*.md"))


# --------------------------------------------------------------------------
# Results pages: generated, committed, current.


def test_committed_results_pages_are_what_the_script_writes():
  pages = build_results.render_all()
  for name, text in pages.items():
    committed = _DOCS / "experiments" / name
    assert committed.exists(), f"run python docs/build_results.py ({name})"
    assert committed.read_text(encoding="utf-8") == text, (
      f"docs/experiments/{name} differs from docs/build_results.py's "
      "output: run python docs/build_results.py"
    )
  extra = {p.name for p in (_DOCS / "experiments").glob("*.md")} - set(pages)
  assert not extra, f"pages without a results file: {sorted(extra)}"


def test_every_results_file_and_figure_has_a_page():
  pages = build_results.render_all()
  for results in (_DOCS / "results").glob("*.json"):
    assert f"{results.stem}.md" in pages
  text = "\n".join(pages.values())
  for figure in (_DOCS / "figures").glob("*.png"):
    assert f"../figures/{figure.name}" in text, figure.name


def test_a_changed_results_file_changes_its_page(tmp_path, monkeypatch):
  data = json.loads((_DOCS / "results" / "rnn_memory.json").read_text())
  data["accuracy"]["lstm"][4] = 0.123456
  (tmp_path / "rnn_memory.json").write_text(json.dumps(data))
  monkeypatch.setattr(build_results, "RESULTS", tmp_path)
  page = build_results.render_all()["rnn_memory.md"]
  assert "0.123" in page
  committed = (_DOCS / "experiments" / "rnn_memory.md").read_text()
  assert page != committed


def test_a_new_results_file_gets_a_page(tmp_path, monkeypatch):
  (tmp_path / "new_study.json").write_text(
    json.dumps(
      {"config": {"seed": 3}, "table": "| a | b |\n|---|---|\n| 1 | 2 |"}
    )
  )
  monkeypatch.setattr(build_results, "RESULTS", tmp_path)
  pages = build_results.render_all()
  assert "| 1 |" in pages["new_study.md"]
  assert "new_study" in pages["index.md"]


def test_p4m_mistakes_are_counted_out_of_the_test_fives():
  page = build_results.render_all()["p4m_digits.md"]
  # 109 test fives per seed, 3 seeds: 327 rotated-and-mirrored 5s.
  assert "| z2cnn | rotated+mirrored | 5 -> 2 | 274 | 327 |" in page
  assert "| p4cnn | rotated+mirrored | 5 -> 2 | 293 | 327 |" in page


# --------------------------------------------------------------------------
# API pages: every public name of every module.


def test_api_pages_cover_every_public_name(tmp_path):
  modules = gen_api.write_pages(tmp_path)
  for package in (
    "equivlab.gconv",
    "equivlab.groups",
    "equivlab.nn.models",
    "equivlab.nn.layers",
    "equivlab.data",
    "equivlab.training",
    "equivlab.train",
    "equivlab.testing",
    "equivlab.analysis.viz",
    "equivlab.fundamentals.gradcheck",
    "equivlab.rnn",
    "equivlab.rl.dqn",
    "equivlab.parallel",
    "equivlab.ops.xla_options",
    "equivlab.export",
    "equivlab.derivations",
  ):
    assert package in modules, package
  import equivlab.data  # noqa: PLC0415

  page = (tmp_path / "equivlab.data.md").read_text()
  for name in equivlab.data.__all__:
    assert f"`{name}`" in page, name
  where = (tmp_path / "equivlab.data.datasets.md").read_text()
  assert ".. autofunction:: equivlab.data.datasets.load_dataset" in where


# --------------------------------------------------------------------------
# The built site.


class _Links(html.parser.HTMLParser):
  """The links and the element ids of one page."""

  def __init__(self):
    super().__init__()
    self.links, self.ids = [], set()

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if attrs.get("id"):
      self.ids.add(attrs["id"])
    for key in ("href", "src"):
      if tag in ("a", "img", "link", "script") and attrs.get(key):
        self.links.append(attrs[key])


@pytest.fixture(scope="session")
def site(tmp_path_factory):
  pytest.importorskip("sphinx")
  pytest.importorskip("myst_parser")
  pytest.importorskip("furo")
  out = tmp_path_factory.mktemp("html")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "sphinx",
      "-W",
      "--keep-going",
      "-q",
      "-b",
      "html",
      "-d",
      str(out / ".doctrees"),
      str(_DOCS),
      str(out),
    ],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-5000:]
  return out


def test_site_has_the_guides_api_and_results(site):
  for page in ("index", "getting_started", "api/index", "experiments/index"):
    assert (site / f"{page}.html").exists(), page
  for guide in _GUIDES:
    assert (site / "guides" / f"{guide}.html").exists(), guide
  api = site / "api" / "generated"
  train = (api / "equivlab.train.html").read_text(encoding="utf-8")
  assert "train_and_evaluate" in train
  loop = (api / "equivlab.training.loop.html").read_text(encoding="utf-8")
  assert 'id="equivlab.training.loop.train_and_evaluate"' in loop
  gconv = (api / "equivlab.gconv.conv.html").read_text(encoding="utf-8")
  assert 'id="equivlab.gconv.conv.lifting_conv"' in gconv
  results = (site / "experiments" / "p4m_digits.html").read_text()
  assert "p4m_errors" in results


def test_site_has_no_broken_internal_links(site):
  pages = sorted(site.rglob("*.html"))
  parsed = {}
  for page in pages:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    parsed[page] = parser
  broken = []
  for page, parser in parsed.items():
    for link in parser.links:
      url = urllib.parse.urlparse(link)
      if url.scheme or url.netloc or link.startswith("mailto:"):
        continue
      target = (page.parent / urllib.parse.unquote(url.path)).resolve()
      if url.path == "":
        target = page
      if not target.exists():
        broken.append(f"{page.relative_to(site)} -> {link}")
        continue
      if url.fragment and target.suffix == ".html":
        if target not in parsed:
          continue
        if url.fragment not in parsed[target].ids:
          broken.append(f"{page.relative_to(site)} -> {link}")
  assert not broken, "\n".join(broken[:30])
