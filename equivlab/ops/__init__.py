"""Low-level operations under every layer: the 2-D convolution and the CPU
compiler options.

- `convolution`: `conv_general_dilated` with a CPU path for the filter
  gradient and padded "VALID" convolutions; one XLA convolution elsewhere.
- `xla_options`: per-compilation XLA options for the CPU, and a `jit` that
  applies them.
"""
