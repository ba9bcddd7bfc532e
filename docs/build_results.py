"""Writes the results pages from the committed results files.

One page per file `docs/results/NAME.json`, in `docs/experiments/NAME.md`:
the command that writes it, its tables (the file's own Markdown `table`
when it has one, else one made here from its numbers), its figures from
`docs/figures/` and the configuration it ran with. Every number on these
pages comes from a results file, and every figure from `docs/figures/`: no
figure is typed by hand. A results file this script does not know yet gets
a page of the same shape (its `table`, its configuration, the figures whose
names start with its name), and figures no page claims are shown on one
page of their own. Nothing is trained or run.

  python docs/build_results.py           # rewrites docs/experiments/
  python docs/build_results.py --check   # exit 1 if a page is out of date

`tests/docs_test.py` fails when a committed page differs from what this
script writes.
"""

import json
import math
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
RESULTS = DOCS / "results"
FIGURES = DOCS / "figures"
PAGES = DOCS / "experiments"


def _fmt(value, digits: int = 3) -> str:
  """A number as the tables print it."""
  if isinstance(value, bool) or value is None:
    return str(value)
  if isinstance(value, int):
    return f"{value:,}"
  if isinstance(value, float):
    if math.isnan(value) or math.isinf(value):
      return str(value)
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
      return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
  return str(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
  """A Markdown table; cells are formatted with `_fmt`."""
  lines = [
    "| " + " | ".join(header) + " |",
    "|" + "---|" * len(header),
  ]
  for row in rows:
    lines.append("| " + " | ".join(_fmt(cell) for cell in row) + " |")
  return "\n".join(lines)


def _separate_tables(text: str) -> str:
  """Puts a blank line between table rows and the prose around them."""
  out = []
  for line in text.strip("\n").splitlines():
    is_row = line.lstrip().startswith("|")
    if out and out[-1] and out[-1].lstrip().startswith("|") != is_row:
      out.append("")
    out.append(line)
  return "\n".join(out)


# Tables for results files that carry numbers but no Markdown table.
def _rnn_memory(d):
  models = list(d["accuracy"])
  rows = [
    [lag] + [d["accuracy"][m][i] for m in models]
    for i, lag in enumerate(d["lags"])
  ]
  return (
    f"Accuracy on {_fmt(d['config']['eval_size'])} evaluation sequences "
    f"(chance {_fmt(d['chance'])}):\n\n"
    + markdown_table(["lag"] + models, rows)
  )


def _char_lm(d):
  rows = [
    [h["epoch"], h["updates"], h["train_bpc"], h["valid_bpc"]]
    for h in d["history"]
  ]
  samples = "\n\n".join(
    f"```text\n{sample}\n```" for sample in d.get("samples", [])
  )
  return (
    markdown_table(
      [
        "text",
        "characters",
        "vocabulary",
        "unigram bits/char",
        "held-out bits/char",
      ],
      [
        [
          d["text"],
          d["num_chars"],
          d["vocab_size"],
          d["unigram_bpc"],
          d["valid_bpc"],
        ]
      ],
    )
    + "\n\nPer epoch:\n\n"
    + markdown_table(
      ["epoch", "updates", "train bits/char", "held-out bits/char"], rows
    )
    + ("\n\nSamples:\n\n" + samples if samples else "")
  )


def _batch_cost(d):
  rows = [
    [
      r["batch_size"],
      1e3 * r["seconds_per_step"],
      r["flops"],
      r["temp_bytes"],
      r["total_bytes"],
    ]
    for r in d["rows"]
  ]
  fits = [
    [name, f["slope"], f["intercept"], f["r2"]] for name, f in d["fits"].items()
  ]
  comparison = [[name, value] for name, value in d["comparison"].items()]
  return (
    f"MLP {d['hidden']}, on {d['device']}. {d['memory_figure']}.\n\n"
    + markdown_table(
      ["batch M", "ms per step", "FLOPs", "temp bytes", "total bytes"], rows
    )
    + "\n\nLeast-squares fits `y = intercept + slope M`:\n\n"
    + markdown_table(["figure", "slope", "intercept", "R^2"], fits)
    + "\n\nPer example, against the hand count of a backward pass:\n\n"
    + markdown_table(["quantity", "value"], comparison)
  )


def _engine_accuracy(d):
  variants = d["variants"]
  rows = []
  for model, entry in d["models"].items():
    paired = next(iter(entry["paired"].values()))
    rows.append(
      [model]
      + [f"{entry[v]['mean']:.2f} +- {entry[v]['std']:.2f}" for v in variants]
      + [paired["mean_difference"], paired["paired_t_p"]]
    )
  return (
    f"Test error % over seeds {d['seeds'][0]}-{d['seeds'][-1]} (mean +- "
    "sample std), the seeds paired:\n\n"
    + markdown_table(
      ["model"] + variants + ["paired difference (points)", "paired t-test p"],
      rows,
    )
  )


def _gconv_benchmark(d):
  rows = [[name, ratio] for name, ratio in d["ratios"].items()]
  rows += [[name, ratio] for name, ratio in d["export"]["ratios"].items()]
  timings = [
    [name, 1e3 * t["min_s"], 1e3 * t["median_s"]]
    for name, t in {**d["timings"], **d["export"]["timings"]}.items()
  ]
  return (
    f"Sizes: {json.dumps(d['sizes'])}; device {d['device']}, jax "
    f"{d['jax']}, best of {d['repeats']}.\n\n"
    + markdown_table(["ratio", "measured"], rows)
    + "\n\n"
    + markdown_table(["side", "best ms", "median ms"], timings)
  )


def _gconv_peers(d):
  rows = []
  for layer, entry in d["layers"].items():
    r = entry["ratios"]
    rows.append(
      [
        layer,
        r["default / escnn time"],
        r["jaxlib / escnn time"],
        r["default / escnn peak memory"],
        1e3 * entry["sides"]["default"]["min_s"],
        1e3 * entry["sides"]["escnn"]["min_s"],
      ]
    )
  return f"Settings: {json.dumps(d['settings'])}.\n\n" + markdown_table(
    [
      "layer",
      "equivlab / escnn, time",
      "jaxlib options / escnn, time",
      "equivlab / escnn, peak memory",
      "equivlab ms",
      "escnn ms",
    ],
    rows,
  )


def _train_step(d):
  rows = [
    [
      model,
      m["default_ms"],
      m["cpu_ms"],
      m["jaxlib_ms"],
      m["jaxlib_over_default"],
    ]
    for model, m in d["models"].items()
  ]
  return f"One Adam step on a batch of {d['batch']} digits:\n\n" + (
    markdown_table(
      [
        "model",
        "equivlab options, ms",
        "CPU path, ms",
        "jaxlib's options, ms",
        "jaxlib's / equivlab's",
      ],
      rows,
    )
  )


def _inspect_cnn(d):
  return "```text\n" + d["summary"].strip() + "\n```"


def _p4m_mistakes(d):
  """The most frequent mistakes, with the counts they are out of."""
  rows = []
  for row in d["rows"]:
    runs = [r for r in d["runs"] if r["model"] == row["model"]]
    for test_set, mistakes in row["mistakes"].items():
      for true, predicted, count in mistakes:
        total = sum(sum(r["confusion"][test_set][true]) for r in runs)
        rows.append(
          [
            row["model"],
            test_set,
            f"{true} -> {predicted}",
            count,
            total,
            count / total,
          ]
        )
  return (
    "Most frequent mistakes, summed over the seeds, out of every test "
    "digit of that class on that test set in those runs "
    f"({len(d['runs']) // len(d['rows'])} seeds per model):\n\n"
    + markdown_table(
      ["model", "test set", "true -> predicted", "count", "out of", "fraction"],
      rows,
    )
  )


# name: (title, command, what it shows (no numbers), figures, extra tables).
EXPERIMENTS = {
  "rotated_digits": (
    "Rotated digits (Cohen & Welling 2016, Table 1)",
    "python -m experiments.rotated_digits",
    "Z2CNN, P4CNN with rotation pooling and P4CNN trained and tested on "
    "the embedded digits turned by uniform random angles; the paper's "
    "MNIST-rot errors beside them.",
    ["rotated_digits_errors.png"],
    [],
  ),
  "engine_accuracy": (
    "The main job under equivlab's compiler options and jaxlib's",
    "python -m benchmarks.engine_accuracy --num_seeds=10",
    "The rotated-digits job trained under the engine's CPU compiler "
    "options and under jaxlib's default options, on the same seeds.",
    [],
    [_engine_accuracy],
  ),
  "p4m_digits": (
    "Rotated and mirrored digits (p4m)",
    "python -m experiments.p4m_digits",
    "Z2CNN, P4CNN and P4MCNN at matched parameter counts, trained on "
    "rotated digits and tested upright, mirrored, rotated, and rotated "
    "then mirrored.",
    [
      "p4m_errors.png",
      "p4m_invariance.png",
      "p4m_pred_changes.png",
      "p4m_examples.png",
    ],
    [_p4m_mistakes],
  ),
  "shifted_digits": (
    "Shifted digits",
    "python -m experiments.shifted_digits",
    "Accuracy on the test digits and on the test digits shifted by up to "
    "`max_shift` pixels.",
    ["shifted_digits_sweep.png"],
    [],
  ),
  "shift_equivariance": (
    "Where shift invariance is lost, layer by layer",
    "python -m experiments.shift_equivariance",
    "Each layer's output for shifted inputs against the best-matching "
    "shift of the unshifted output (error @ best shift).",
    ["shift_equivariance.png"],
    [],
  ),
  "inspect_cnn": (
    "Inside a CNN: filters, feature maps, occlusion",
    "python -m experiments.inspect_cnn",
    "Filters, feature maps, predictions for shifted digits and occlusion "
    "maps of a trained CNN.",
    ["inspect_filters_layer1.png", "inspect_occlusion.png"],
    [_inspect_cnn],
  ),
  "adversarial_patch": (
    "Adversarial patches",
    "python -m experiments.adversarial_patch",
    "The smallest square patch (side in pixels) that makes a model predict "
    "each other class: optimised content against grey patches ('-': no "
    "grey patch up to the largest side reaches that class).",
    ["adversarial_cnn.png", "adversarial_p4cnn.png", "adversarial_sizes.png"],
    [],
  ),
  "depth_study": (
    "Depth, vanishing gradients and residual paths (MLPs)",
    "python -m experiments.depth_study",
    "Deep MLPs with sigmoid, tanh and ReLU units, with and without batch "
    "norm and residual paths.",
    ["depth_gradient_norms.png"],
    [],
  ),
  "depth_study_cnn": (
    "Depth, vanishing gradients and residual paths (CNNs)",
    "python -m experiments.depth_study --architecture=cnn --num_epochs=5",
    "The same grid on CNNs with a strided stem and global average pooling.",
    ["depth_gradient_norms_cnn.png"],
    [],
  ),
  "batch_cost": (
    "Cost of a training step against the batch size",
    "python -m benchmarks.batch_cost",
    "Time, FLOPs and compiled memory of one SGD step of an MLP for batch "
    "sizes 1 to 1024.",
    ["batch_cost.png"],
    [_batch_cost],
  ),
  "rnn_memory": (
    "RNN memory task",
    "python -m experiments.rnn_memory",
    "Recall the first of `num_symbols` symbols after `lag` distractors: "
    "Elman, LSTM, GRU and echo-state networks.",
    ["rnn_accuracy_vs_lag.png", "rnn_grad_norm_vs_distance.png"],
    [_rnn_memory],
  ),
  "char_lm": (
    "Character-level LSTM",
    "python -m experiments.char_lm",
    "An LSTM trained with truncated BPTT on CPython's help topics, against "
    "a unigram model.",
    [],
    [_char_lm],
  ),
  "dqn_cartpole": (
    "DQN on CartPole",
    "python -m experiments.dqn",
    "Double DQN with a hard target copy, several agents trained at once, "
    "greedy evaluation every `eval_every` environment steps.",
    ["dqn_cartpole.png"],
    [],
  ),
  "precision": (
    "Reduced precision",
    "python -m experiments.precision",
    "The CNN and P4CNN trained in float32, bfloat16 and float16 (dynamic "
    "loss scaling), float32 master weights; memory and equivariance per "
    "precision.",
    [
      "precision_accuracy.png",
      "precision_equivariance.png",
      "precision_memory.png",
    ],
    [],
  ),
  "ensembles": (
    "Ensembles: average predictions, not parameters",
    "python -m experiments.ensembles",
    "M CNNs from different seeds combined by averaging their softmax "
    "outputs or their parameters.",
    ["ensembles_accuracy.png", "ensembles_nll.png"],
    [],
  ),
  "training_ablation": (
    "Training ablation",
    "python -m experiments.training_ablation",
    "A small CNN; each row changes one thing of the recipe.",
    [
      "ablation_test_accuracy.png",
      "ablation_loss_curves.png",
      "ablation_filters_he.png",
    ],
    [],
  ),
  "gconv_benchmark": (
    "Group convolutions against plain convolutions",
    "python -m benchmarks.gconv",
    "Forward and backward under jit: (a)/(b) a group convolution against "
    "one plain convolution of the same FLOPs, (c) a Python loop over the "
    "rotations, (d) the exported plain network against the group network.",
    [],
    [_gconv_benchmark],
  ),
  "gconv_peers": (
    "Group convolution layers against escnn",
    "python -m benchmarks.gconv_peers --peer_python=PY",
    "One layer of each kind, forward and backward, against escnn's "
    "`R2Conv`, each side in its own process.",
    [],
    [_gconv_peers],
  ),
  "symmetry_report_p4cnn": (
    "Where symmetry is lost: P4CNN",
    "python -m experiments.symmetry_report --model=p4cnn",
    "The equivariance error of every layer's output of a P4CNN under the "
    "rotations of p4 (`equivlab.testing.equivariance_report`).",
    ["symmetry_report_p4cnn.png"],
    [],
  ),
  "symmetry_report_p4cnn_strided": (
    "Where symmetry is lost: a stride-2 group convolution on an even map",
    "python -m experiments.symmetry_report --model=p4cnn_strided "
    "--image_size=28",
    "P4CNN's layout with its max pool replaced by a stride-2 group "
    "convolution, on 28x28 digits: the report names the strided layer, "
    "and the exactness predictor says why.",
    ["symmetry_report_p4cnn_strided.png"],
    [],
  ),
  "symmetry_report_z2cnn": (
    "Where symmetry is lost: Z2CNN",
    "python -m experiments.symmetry_report --model=z2cnn",
    "A plain CNN of the same depth: its first convolution breaks rotation "
    "equivariance.",
    ["symmetry_report_z2cnn.png"],
    [],
  ),
  "symmetry_report_benchmark": (
    "The equivariance report's cost, and exported inference",
    "python -m benchmarks.symmetry_report --batch 32 --repeats 20 "
    "--json docs/results/symmetry_report_benchmark.json",
    "The report's time against one forward pass per group element, and "
    "the exported plain network's inference time against the group "
    "network's, on the CPU.",
    [],
    [],
  ),
  "train_step": (
    "One training step per model",
    "python -m benchmarks.train_step",
    "One Adam step of the engine under equivlab's CPU compiler options, "
    "the CPU convolution path, and jaxlib's default options.",
    [],
    [_train_step],
  ),
}

# Pictures that no results file backs: what draws them.
PICTURES = {
  "lifted_feature_maps.png": (
    "Lifted feature maps rotate and cycle with the input",
    "python -m experiments.equivariance_demo",
  ),
}


def _config_block(config) -> list[str]:
  if not config:
    return []
  return [
    "## Configuration",
    "",
    "```json",
    json.dumps(config, indent=2, sort_keys=True),
    "```",
    "",
  ]


def _figure(name: str, alt: str) -> list[str]:
  return [f"![{alt}](../figures/{name})", ""]


def render_page(name: str, data: dict) -> tuple[str, list[str]]:
  """One results page; returns its Markdown and the figures it shows."""
  known = EXPERIMENTS.get(name)
  if known:
    title, command, what, figures, extra = known
  else:
    title = name.replace("_", " ").capitalize()
    command, what, extra = None, None, []
    figures = sorted(p.name for p in FIGURES.glob(f"{name}*.png"))
  figures = [f for f in figures if (FIGURES / f).exists()]
  lines = [
    f"# {title}",
    "",
    f"<!-- Generated by docs/build_results.py from docs/results/{name}.json."
    " Do not edit. -->",
    "",
  ]
  if what:
    lines += [what, ""]
  if command:
    lines += ["```bash", command, "```", ""]
  lines += [f"Results file: `docs/results/{name}.json`.", ""]
  tables = []
  if isinstance(data.get("table"), str):
    tables.append(_separate_tables(data["table"]))
  tables += [_separate_tables(make(data)) for make in extra]
  if tables:
    lines += ["## Results", ""]
    for table in tables:
      lines += [table, ""]
  if figures:
    lines += ["## Figures", ""]
    for figure in figures:
      lines += _figure(figure, figure[: -len(".png")].replace("_", " "))
  lines += _config_block(data.get("config"))
  return "\n".join(lines).rstrip("\n") + "\n", figures


def render_all() -> dict[str, str]:
  """Every page's file name and text, the index included."""
  pages, shown = {}, set()
  names = sorted(p.stem for p in RESULTS.glob("*.json"))
  order = [n for n in EXPERIMENTS if n in names] + [
    n for n in names if n not in EXPERIMENTS
  ]
  for name in order:
    data = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict):
      data = {"values": data}
    pages[f"{name}.md"], figures = render_page(name, data)
    shown.update(figures)
  pictures = sorted(
    p.name for p in FIGURES.glob("*.png") if p.name not in shown
  )
  index = [
    "# Results",
    "",
    "<!-- Generated by docs/build_results.py. Do not edit. -->",
    "",
    "One page per results file in `docs/results/`, with the command that "
    "writes it, its tables, its figures and its configuration. The pages "
    "are generated from the committed files: nothing here is trained or "
    "typed by hand.",
    "",
    "```{toctree}",
    ":maxdepth: 1",
    "",
  ]
  index += [name for name in order]
  if pictures:
    index.append("pictures")
  index += ["```", ""]
  pages["index.md"] = "\n".join(index)
  if pictures:
    text = [
      "# Pictures",
      "",
      "<!-- Generated by docs/build_results.py. Do not edit. -->",
      "",
      "Figures in `docs/figures/` that no results page shows.",
      "",
    ]
    for picture in pictures:
      title, command = PICTURES.get(picture, (picture, None))
      text += [f"## {title}", ""]
      if command:
        text += ["```bash", command, "```", ""]
      text += _figure(picture, title)
    pages["pictures.md"] = "\n".join(text).rstrip("\n") + "\n"
  return pages


def main(argv: list[str]) -> int:
  pages = render_all()
  if "--check" in argv:
    stale = [
      name
      for name, text in pages.items()
      if not (PAGES / name).exists()
      or (PAGES / name).read_text(encoding="utf-8") != text
    ]
    extra = sorted(p.name for p in PAGES.glob("*.md") if p.name not in pages)
    for name in stale + extra:
      print(f"out of date: docs/experiments/{name}")
    return 1 if stale or extra else 0
  PAGES.mkdir(exist_ok=True)
  for old in PAGES.glob("*.md"):
    if old.name not in pages:
      old.unlink()
  for name, text in pages.items():
    (PAGES / name).write_text(text, encoding="utf-8")
  print(f"wrote {len(pages)} pages to {PAGES}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
