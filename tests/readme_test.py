"""The README's Python examples run as written."""

import os
import pathlib
import re

_README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section_code(heading: str) -> str:
  text = _README.read_text(encoding="utf-8")
  section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert blocks, f"no python block under '## {heading}'"
  return blocks[0]


def test_bring_your_own_model_trains_a_custom_module(tmp_path, capsys):
  code = _section_code("Bring your own model")
  cwd = os.getcwd()
  os.chdir(tmp_path)  # The example writes runs/smallnet relative to here.
  try:
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
  finally:
    os.chdir(cwd)
  result = scope["result"]
  assert type(result.model).__name__ == "SmallNet"
  assert result.history[-1]["epoch"] == 2
  assert result["test_accuracy"] > 0.5  # Chance is 0.1.
  assert scope["logits"].shape == (1000, 10)
  assert set(scope["batch_stats"]) == {"BatchNorm_0"}
  assert (tmp_path / "runs" / "smallnet" / "checkpoints").is_dir()
  assert "test accuracy" in capsys.readouterr().out
