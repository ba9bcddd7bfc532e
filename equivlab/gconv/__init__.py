"""Lifting and group convolutions for p4 and p4m, as pure functions.

Cohen & Welling, "Group Equivariant Convolutional Networks" (ICML 2016);
the G-correlation `[f * psi](g) = sum_h sum_k f_k(h) psi_k(g^-1 h)`.

Conventions (DESIGN.md). Arrays are NHWC and a group feature map carries the
group axis last: `[N, H, W, C, 4]` (p4) or `[N, H, W, C, 8]` (p4m).
Convolution means cross-correlation (`lax.conv_general_dilated`). Rotation
index `s` is `s * 90` degrees in the sense of `np.rot90` on (H, W). p4m
index `m * 4 + r` is "mirror the W axis if m, then rotate by r" (see
`equivlab.groups` for the group law and the composition order).

Implementation. Each call transforms the filter bank once, with a single
gather of static indices, into a plain HWIO kernel that holds every group
element in its output channels (and, for group convolutions, the input
group axis in its input channels), then runs ONE `lax.conv_general_dilated`.
Channels are laid out as `c * G + g`, so the feature maps reshape to and
from `[N, H, W, C * G]` without a transpose.

Exactness. `lifting_conv(rotate_z2(x, k), w) == rotate_p4(lifting_conv(x, w),
k)` and the same for `group_conv` hold up to float rounding whenever
`is_exactly_equivariant(size, kernel, stride, padding)` is True: the padding
is symmetric and the strided windows tile the padded input exactly.
Translations: a stride-1 convolution commutes with integer shifts of the
input away from the borders, and with circular shifts everywhere when the
padding is "CIRCULAR" (the image is then a torus); dilation keeps both
properties, since a rotated dilated kernel is the dilated rotated kernel.

Inputs. Mixed dtypes are promoted as `jnp` promotes them
(`jnp.result_type(x, w)`: float32 with int32 gives float32, bfloat16 with
float32 gives float32); a convolution whose promoted dtype is not floating
point (int with int) is a TypeError. A kernel (or pooling window) that does
not fit the padded input is a ValueError naming the smallest accepted input
size, never an empty output. Max pooling takes integer inputs too.
"""

from equivlab.gconv.actions import (
  mirror_p4m,
  mirror_z2,
  rotate_p4,
  rotate_p4m,
  rotate_z2,
)
from equivlab.gconv.banks import group_filter_bank, lifting_filter_bank
from equivlab.gconv.conv import (
  group_conv,
  group_conv_p4m,
  lifting_conv,
  lifting_conv_p4m,
)
from equivlab.gconv.padding import (
  Padding,
  effective_kernel,
  is_exactly_equivariant,
  normalize_padding,
  output_size,
  padding_amounts,
)
from equivlab.gconv.pool import group_pool, spatial_max_pool

__all__ = [
  "Padding",
  "effective_kernel",
  "group_conv",
  "group_conv_p4m",
  "group_filter_bank",
  "group_pool",
  "is_exactly_equivariant",
  "lifting_conv",
  "lifting_conv_p4m",
  "lifting_filter_bank",
  "mirror_p4m",
  "mirror_z2",
  "normalize_padding",
  "output_size",
  "padding_amounts",
  "rotate_p4",
  "rotate_p4m",
  "rotate_z2",
  "spatial_max_pool",
]
