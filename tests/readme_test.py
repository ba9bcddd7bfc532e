"""The Python blocks of the README and the guides run as written.

Each page's blocks run in order in one namespace (a later block may use
what an earlier one defined), from a temporary working directory so that
the runs they start write there. The blocks are written on tiny settings.
"""

import os
import pathlib
import re

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_README = _ROOT / "README.md"
_PAGES = [
  _README,
  _ROOT / "docs" / "getting_started.md",
  *sorted((_ROOT / "docs" / "guides").glob("*.md")),
]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: pathlib.Path) -> list[str]:
  """The bodies of the ```python blocks of a Markdown file, in order."""
  return _BLOCK.findall(path.read_text(encoding="utf-8"))


def run_page(path: pathlib.Path, cwd: pathlib.Path) -> dict:
  """Runs every Python block of `path` in one namespace from `cwd`."""
  scope = {"__name__": f"docs_{path.stem}"}
  here = os.getcwd()
  os.chdir(cwd)
  try:
    for i, code in enumerate(python_blocks(path)):
      exec(compile(code, f"{path.name} block {i + 1}", "exec"), scope)
  finally:
    os.chdir(here)
  return scope


def test_blocks_are_found():
  assert len(python_blocks(_README)) == 4
  assert "def __call__" in python_blocks(_README)[0]
  guides = [p for p in _PAGES if p.parent.name == "guides"]
  assert len(guides) >= 10
  with_code = [p for p in guides if python_blocks(p)]
  assert len(with_code) >= 10, [p.name for p in guides]


@pytest.mark.parametrize(
  "page",
  [p for p in _PAGES if p != _README and python_blocks(p)],
  ids=lambda p: p.stem,
)
def test_guide_blocks_run(page, tmp_path):
  run_page(page, tmp_path)


def test_readme_blocks_run(tmp_path, capsys):
  scope = run_page(_README, tmp_path)
  # Bring your own model: a custom module, trained and given back.
  result = scope["result"]
  assert type(result.model).__name__ == "SmallNet"
  assert result.history[-1]["epoch"] == 2
  assert result["test_accuracy"] > 0.5  # Chance is 0.1.
  assert scope["logits"].shape == (1000, 10)
  assert set(scope["batch_stats"]) == {"BatchNorm_0"}
  assert (tmp_path / "runs" / "smallnet" / "checkpoints").is_dir()
  # DQN over seeds: one row of evaluations per seed.
  assert scope["out"]["metrics"]["eval_return"].shape == (4, 2)
  assert "test accuracy" in capsys.readouterr().out


def test_a_failing_block_fails_the_page(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("```python\nx = 1\n```\n\n```python\nassert x == 2\n```\n")
  with pytest.raises(AssertionError):
    run_page(page, tmp_path)


def _readme_section(heading: str) -> str:
  text = _README.read_text(encoding="utf-8")
  return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_is_short_and_states_no_history():
  text = _README.read_text(encoding="utf-8")
  assert len(text.splitlines()) <= 250
  for word in ("this round", "previous round", "before this", "was filed"):
    assert word not in text.lower()


def test_readme_set_up_commands_are_what_ci_runs():
  ci = (_ROOT / ".ci" / "run").read_text(encoding="utf-8")
  commands = re.findall(r"```bash\n(.*?)\n```", _readme_section("Set up"))
  assert len(commands) == 2
  assert commands[0].endswith("python -m experiments.rotated_digits")
  test_command = commands[1].split(" && ", 2)[2]  # after venv + activate
  assert test_command in ci


def test_readme_results_are_the_results_pages_figures():
  rows = [
    line
    for line in _readme_section("Results").splitlines()
    if line.startswith("| ") and "](docs/" in line
  ]
  assert len(rows) >= 4
  for row in rows:
    link = re.search(r"\]\((docs/experiments/[\w.]+)\)", row).group(1)
    page = (_ROOT / link).read_text(encoding="utf-8")
    result = row.split("|")[2]
    numbers = re.findall(r"\d+\.\d+(?: \+- \d+\.\d+)?", result)
    assert numbers, row
    for number in numbers:
      assert number in page, f"{number} of '{row}' is not on {link}"


def test_readme_links_resolve():
  text = _README.read_text(encoding="utf-8")
  for target in re.findall(r"\]\(([^)#]+)\)", text):
    if "://" not in target:
      assert (_ROOT / target).exists(), target
