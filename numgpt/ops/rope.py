"""Rotary position embedding (RoPE), in the half-split layout Hugging Face's
Llama, Qwen2 and Qwen3 use, with Llama 3's frequency scaling.

A head's D channels are read as D/2 pairs (x1[i], x2[i]) = (x[i], x[i + D/2]),
the first half against the second (not neighbours: that is the original
paper's interleaved layout, which Hugging Face's checkpoints do not use). The
pair i of the token at position p is turned by the angle p * inv_freq[i]:

    out1 = x1 cos - x2 sin
    out2 = x2 cos + x1 sin         (cos, sin of the angle p * inv_freq[i])

So q . k of two tokens depends on their positions only through the
difference: rotating both by their own angles leaves angle(q) - angle(k).

Shapes: x, out (B, T, H, D), H heads of D channels; cos, sin (T, D/2), one
row per position (broadcast over batch and heads).

Backward: a rotation is linear and orthogonal, so the gradient is the same
rotation backwards (the transpose of [[cos, -sin], [sin, cos]]):

    dx1 =  dout1 cos + dout2 sin
    dx2 = -dout1 sin + dout2 cos

cos and sin are constants of the positions: no gradient.

Frequencies (``rope_frequencies``): inv_freq[i] = theta^(-2i / D), i < D/2,
theta = ``rope_theta``. Llama 3.x scales them for long contexts
(``rope_scaling`` / ``rope_parameters`` with rope_type "llama3"): with the
wavelength w = 2 pi / inv_freq, and L the original context,

- w < L / high_freq_factor (high frequencies): kept;
- w > L / low_freq_factor (low frequencies): divided by ``factor``;
- in between: a blend, s = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor),
  inv_freq' = (1 - s) inv_freq / factor + s inv_freq.
"""
import math
from typing import NamedTuple

import numpy

from numgpt.autograd import record
from numgpt.device import array_module
from numgpt.registry import resolve


class RopeCache(NamedTuple):
    cos: numpy.ndarray       # (T, D/2)
    sin: numpy.ndarray       # (T, D/2)


def rope_frequencies(head_dim, theta, scaling=None):
    """inv_freq (D/2,) float64 for ``head_dim`` D and base ``theta``; ``scaling``:
    None, or Llama 3's dict (rope_type 'llama3', factor, low_freq_factor,
    high_freq_factor, original_max_position_embeddings)."""
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
    inv_freq = theta ** -(numpy.arange(0, head_dim, 2, dtype=numpy.float64) / head_dim)
    if not scaling:
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    smooth = (context / wavelength - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return numpy.where(wavelength < context / high, inv_freq,
                       numpy.where(wavelength > context / low, inv_freq / factor, blended))


def rope_tables(inv_freq, start, length, dtype, xp=numpy):
    """cos, sin (length, D/2) of the positions start .. start + length - 1, in
    ``dtype`` on the array module ``xp`` (angles computed in float64)."""
    angles = numpy.arange(start, start + length, dtype=numpy.float64)[:, None] * inv_freq[None, :]
    return xp.asarray(numpy.cos(angles).astype(dtype)), xp.asarray(numpy.sin(angles).astype(dtype))


def rope_forward(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]                            # 2 x (B, T, H, D/2), views
    c, s = cos[:, None, :], sin[:, None, :]                          # (T, 1, D/2): broadcast over heads
    out = array_module(x).empty_like(x)
    out[..., :half] = x1 * c - x2 * s
    out[..., half:] = x2 * c + x1 * s
    return out, RopeCache(cos, sin)


def rope_backward(dout, cache):
    half = dout.shape[-1] // 2
    d1, d2 = dout[..., :half], dout[..., half:]
    c, s = cache.cos[:, None, :], cache.sin[:, None, :]
    dx = array_module(dout).empty_like(dout)
    dx[..., :half] = d1 * c + d2 * s                                 # the rotation by -angle
    dx[..., half:] = d2 * c - d1 * s
    return (dx,)


def rope(x, cos, sin):
    """Rotate x (B, T, H, D) by the positions' angles; cos, sin (T, D/2) arrays."""
    if x.ndim != 4 or cos.shape != (x.shape[1], x.shape[3] // 2) or sin.shape != cos.shape:
        raise ValueError(f"rope needs x (B, T, H, D) and cos, sin (T, D/2); got {x.shape}, {cos.shape}, {sin.shape}")
    forward, backward = resolve(rope_forward, rope_backward, x.data)
    out, cache = forward(x.data, cos, sin)
    return record(out, (x,), lambda dout: backward(dout, cache), "rope")
