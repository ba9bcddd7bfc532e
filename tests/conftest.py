"""Global test settings: applied before any test module imports jax."""

import os

# Eight simulated host devices for the sharding tests. XLA reads this flag
# once, when the backend starts, so it must be set before jax is imported.
_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " " + _DEVICE_FLAG
  ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# Compiled programs shared by every test and test subprocess (many compile
# the very same train steps); experiments launched by tests use it too.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(os.environ.get("TMPDIR", "/tmp"), "equivlab-test-jax-cache"),
)
# Every program, not only those over jax's default second of compilation:
# the tests' programs are small, and many recur across tests.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# tfds must never reach for the network in tests.
os.environ.setdefault(
  "TFDS_DATA_DIR",
  os.path.join(os.environ.get("TMPDIR", "/tmp"), "equivlab-tfds-test"),
)

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Implicit rank promotion hides shape bugs: make it an error everywhere.
jax.config.update("jax_numpy_rank_promotion", "raise")
# float32 results are compared at tolerances (1e-5 for BPTT, 1e-4 for
# equivariance) that TF32, the default float32 matmul precision on NVIDIA
# GPUs, would exceed; on CPU this changes nothing. The accelerator suite
# (benchmarks/accelerator_suite.py) measures both precisions.
jax.config.update("jax_default_matmul_precision", "highest")

# Property tests compile a new XLA program per example: keep them few and
# free of wall-clock deadlines (the CI machine has 2 cores).
settings.register_profile(
  "ci", max_examples=25, deadline=None, derandomize=True
)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def tiny_rotated_digits():
  """The main job's settings shrunk to a run of seconds (one model, 1 seed)."""
  from experiments import rotated_digits  # noqa: PLC0415

  return rotated_digits.Config(
    models=("p4cnn_rotpool",),
    num_seeds=1,
    num_epochs=1,
    batch_size=16,
    train_limit=32,
    test_limit=16,
    num_invariance=4,
    num_devices=1,
    progress=False,
  )
