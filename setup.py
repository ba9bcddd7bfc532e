"""Install script for equivlab."""

import setuptools

_INSTALL_REQUIRES = [
  "absl-py>=2.1",
  # Lower bounds are versions CI has run (Python 3.11 and 3.12); Python
  # 3.10 only gets jax 0.6 / flax 0.10 / orbax 0.11, which equivlab does not
  # run on (no jax.enable_x64, checkpoint and mesh failures).
  "chex>=0.1.90",
  "flatbuffers>=24",  # jax.export serialises inference artifacts with it.
  "flax>=0.12",
  "gymnax>=1.0.1,<2",
  # tensorflow-datasets imports it on Python >= 3.9 without declaring it.
  "importlib_resources>=6.0",
  "jax>=0.10",
  "jmp>=0.0.4",  # float16 loss scaling and casting policies (pure Python).
  "matplotlib>=3.8",
  "numpy>=1.26",
  "optax>=0.2.4",
  "orbax-checkpoint>=0.12",
  "pillow>=10",  # encodes the project's own tfds files without TensorFlow.
  "tensorboardX>=2.6",
  "tensorflow-datasets>=4.9.7",
  "array_record>=0.5",  # backs tfds.data_source without TensorFlow.
  "tqdm>=4.66",
]

_EXTRAS = {
  "test": [
    "hypothesis>=6.100",
    "pytest>=8.0",
    "pytest-xdist>=3.5",
    "rlax>=0.1.6",  # a test-only oracle; it pulls tfp-nightly.
    # Pinned: the format check (also of the README's Python blocks) must not
    # change with a new ruff release.
    "ruff==0.17.6",
  ],
  # The documentation site: `sphinx-build -W --keep-going docs OUT`.
  "docs": [
    "furo>=2024.8",
    "myst-parser>=4.0",
    "sphinx>=8.0",
  ],
  "tf": ["tensorflow-cpu>=2.16"],
  # Peer implementations that benchmarks compare against, when present.
  "peers": ["torch>=2.4"],
}

setuptools.setup(
  name="equivlab",
  version="0.2.0",
  description=(
    "Group-equivariant convolutions, scanned RNNs and DQN as pure, "
    "jitted, tested JAX functions with reproducible experiments."
  ),
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  packages=setuptools.find_packages(include=["equivlab", "equivlab.*"]),
  # The 5,000 embedded MNIST digits (uint8, CC BY-SA 3.0).
  package_data={"equivlab.data": ["embedded_digits.npz"]},
  python_requires=">=3.11",
  install_requires=_INSTALL_REQUIRES,
  extras_require=_EXTRAS,
  license="Apache-2.0",
)
