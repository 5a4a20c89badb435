"""``vexp``: exp that LLVM can vectorise, for the float32 kernels.

numba calls libm's expf once per element (no SVML here), which keeps the
softmax, GELU and cross-entropy loops scalar. For float32 ``vexp`` is instead
a polynomial that compiles to straight-line code: x = n ln2 + r with
|r| <= ln2/2, exp(r) by a degree-7 polynomial (Cephes' expf coefficients),
2^n as 2 * 2^(n-1) from a table (n reaches 128 just below the overflow, and
2^128 is not a float32; 2^(n-1) always is). Measured against float64 exp: worst relative error 8.1e-8
(numpy's float32 exp: 6.0e-8). NaN stays NaN, above 88.72 gives inf, below
-87.34 gives 0 (numpy gives denormals down to -103.97; no softmax or loss
here can tell). Any other dtype (float64 for gradient checks) uses numpy.exp.

This code is inlined into kernels of other files (attention, GELU, cross-
entropy), whose numba cache stamps only their own source; when this file
changes, kernels/compile_cache.py removes their cached code, so they
recompile with it.
"""
import numpy
from numba import types
from numba.extending import overload

EXP_MAX = 88.72283        # float32 exp overflows above this
EXP_MIN = -87.33654       # below: the result would be denormal; flushed to 0
HALF_POW2 = numpy.array([2.0 ** (n - 1) for n in range(-126, 129)], dtype=numpy.float32)   # 2^(n-1), n in [-126, 128]


def vexp(x):
    """exp(x); in numba-compiled code, the vectorisable form for float32."""
    return numpy.exp(x)


@overload(vexp, inline="always")
def _vexp(x):
    if x != types.float32:
        return lambda x: numpy.exp(x)

    def vexp_float32(x):
        f = numpy.float32
        if x != x:                                                     # NaN
            return x
        xc = min(max(x, f(EXP_MIN)), f(EXP_MAX))
        n = numpy.floor(xc * f(1.442695) + f(0.5))                     # round(x / ln2)
        r = xc - n * f(0.693359375) - n * f(-2.12194440e-4)            # x - n ln2, in two parts
        p = f(1.9875691500e-4)
        p = p * r + f(1.3981999507e-3)
        p = p * r + f(8.3334519073e-3)
        p = p * r + f(4.1665795894e-2)
        p = p * r + f(1.6666665459e-1)
        p = p * r + f(5.0000001201e-1)
        p = p * r * r + r + f(1.0)                                     # exp(r)
        y = (p * f(2.0)) * HALF_POW2[numpy.int32(n) + 126]             # * 2^n, n in [-126, 128]; 2p first: no denormal
        y = f(0.0) if x < f(EXP_MIN) else y
        return f(numpy.inf) if x > f(EXP_MAX) else y
    return vexp_float32
