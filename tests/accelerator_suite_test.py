"""benchmarks/accelerator_suite.py stays runnable: tiny parts on CPU."""

import json

from absl import flags

from benchmarks import accelerator_suite


def test_tiny_suite_runs_its_parts_and_writes_one_json(tmp_path):
  out = tmp_path / "suite.json"
  # The other benchmarks and the main job have smoke tests of their own;
  # their command lines are checked below.
  parts = ["exactness", "gconv", "tests"]
  suite = accelerator_suite.main(
    ["--tiny", f"--output={out}", "--parts", *parts]
  )
  assert json.loads(out.read_text()) == suite
  assert suite["device"]["backend"] == "cpu"
  for name in parts[1:]:
    assert suite["parts"][name]["returncode"] == 0, suite["parts"][name]
  assert suite["parts"]["gconv"]["results"]["ratios"]
  assert "1 passed" in suite["parts"]["tests"]["output_tail"]
  exact = suite["exactness"]
  for precision in ("default", "highest"):
    assert set(exact[precision]["errors"]) == {
      "lifting_conv",
      "group_conv",
      "p4cnn_logits",
      "elman_bptt_vs_grad",
    }
    # CPU has no TF32: both precisions hold every tolerance.
    assert all(exact[precision]["within_tolerance"].values())
  assert exact["default_precision_suffices"]


def _flag_names(argv):
  return [a.split("=")[0].lstrip("-") for a in argv if a.startswith("--")]


def test_argparse_benchmarks_take_the_suite_flags(tmp_path):
  import pathlib  # noqa: PLC0415
  import re  # noqa: PLC0415

  root = pathlib.Path(accelerator_suite.__file__).parent
  for tiny in (False, True):
    commands = accelerator_suite._commands(tiny, tmp_path)
    for name in ("gconv", "rnn", "data_pipeline"):
      source = (root / f"{name}.py").read_text()
      defined = set(re.findall(r'add_argument\(\s*"--([\w-]+)"', source))
      defined |= {f"no-{n}" for n in defined}  # BooleanOptionalAction
      assert set(_flag_names(commands[name][0][3:])) <= defined, name


def test_dqn_and_main_job_command_lines_name_existing_flags(tmp_path):
  from benchmarks import dqn as dqn_benchmark  # noqa: PLC0415
  from experiments import rotated_digits  # noqa: PLC0415

  commands = accelerator_suite._commands(False, tmp_path)
  tiny = accelerator_suite._commands(True, tmp_path)
  main_job = flags.FlagValues()
  rotated_digits.define_flags(main_job)
  for table in (commands, tiny):
    # The DQN benchmark's own parser: an unknown option exits.
    dqn_benchmark.parse_args(list(table["dqn"][0][3:]))
    assert set(_flag_names(table["main_job"][0][3:])) <= set(main_job)
