"""numba twins of numgpt.optim's array functions.

- ``adamw_update``: the whole AdamW step of one parameter in one pass over
  memory (read p, g, m, v; write p, m, v), prange over elements, with the
  twin's operations in the twin's order, in the parameter's dtype.
- ``sum_of_squares`` (the gradient norm): float64 sums over fixed chunks of
  CHUNK elements, one prange iteration per chunk, LANES partial sums within a
  chunk; the chunk sums are added by NumPy. The chunks do not depend on the
  number of threads: the same result on every run. (The twin's BLAS dot
  product runs on OpenBLAS's threads, which keep spinning after it returns
  and would slow the next numba kernels.)

Arrays that are not C-contiguous go to the NumPy twins.
"""
import math

import numpy
from numba import njit, prange

from numgpt.optim import adamw_update as numpy_adamw_update
from numgpt.optim import sum_of_squares as numpy_sum_of_squares

CHUNK = 2 ** 16   # elements per float64 partial sum
LANES = 16        # independent accumulators within a chunk: they vectorise


@njit(parallel=True, cache=True)
def _adamw_update(param, grad, exp_avg, exp_avg_sq, decay, beta1, one_minus_beta1, beta2, one_minus_beta2,
                  step_size, bias_correction2_sqrt, eps):
    for i in prange(param.size):
        g = grad[i]
        p = param[i] * decay                                           # 1. decoupled decay
        m = exp_avg[i] * beta1 + one_minus_beta1 * g                   # 2. m = b1 m + (1 - b1) g
        v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g            # 3. v = b2 v + (1 - b2) g^2
        denom = numpy.sqrt(v) / bias_correction2_sqrt + eps            # 4. sqrt(v_hat) + eps
        param[i] = p - step_size * m / denom                           # 5. p -= lr m_hat / (sqrt(v_hat) + eps)
        exp_avg[i] = m
        exp_avg_sq[i] = v


def adamw_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step on arrays, in place; ``step`` counts from 1."""
    arrays = (param, grad, exp_avg, exp_avg_sq)
    if not all(a.flags.c_contiguous and a.dtype == param.dtype for a in arrays):
        return numpy_adamw_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay)
    dtype = param.dtype.type
    _adamw_update(param.reshape(-1), grad.reshape(-1), exp_avg.reshape(-1), exp_avg_sq.reshape(-1),
                  dtype(1.0 - lr * weight_decay), dtype(beta1), dtype(1.0 - beta1), dtype(beta2), dtype(1.0 - beta2),
                  dtype(lr / (1.0 - beta1 ** step)), dtype(math.sqrt(1.0 - beta2 ** step)), dtype(eps))


@njit(parallel=True, cache=True)
def _chunk_sums_of_squares(x, sums):
    for chunk in prange(sums.size):
        start, stop = chunk * CHUNK, min(x.size, (chunk + 1) * CHUNK)
        body = stop - (stop - start) % LANES
        lanes = numpy.zeros(LANES, dtype=numpy.float64)
        for j0 in range(start, body, LANES):
            for lane in range(LANES):
                value = numpy.float64(x[j0 + lane])
                lanes[lane] += value * value
        total = 0.0
        for lane in range(LANES):
            total += lanes[lane]
        for j in range(body, stop):
            value = numpy.float64(x[j])
            total += value * value
        sums[chunk] = total


def sum_of_squares(array):
    """The sum of the squared elements, a Python float (inf or nan when an element is)."""
    if not array.flags.c_contiguous:
        return numpy_sum_of_squares(array)
    flat = array.reshape(-1)
    sums = numpy.empty(max(1, -(-flat.size // CHUNK)), dtype=numpy.float64)
    _chunk_sums_of_squares(flat, sums)
    return float(sums.sum())


JITTED = (_adamw_update, _chunk_sums_of_squares)
