"""numgpt's ops. Each module holds ``<op>_forward`` / ``<op>_backward`` pairs
(pure functions on arrays, the NumPy reference, with the backward derived in
the module docstring) and the thin tape wrapper that records them; the
wrappers are re-exported here. What runs when a wrapper is called (the
reference, a numba twin, or your backward through ``use_backward``) is
decided in one place, numgpt/registry.py."""
from numgpt.ops.attention import cached_attention, causal_attention
from numgpt.ops.cross_entropy import cross_entropy
from numgpt.ops.dropout import dropout
from numgpt.ops.elementwise import add, mul, sum_all
from numgpt.ops.embedding import embedding
from numgpt.ops.fused import dropout_add, dropout_add_layer_norm, linear_gelu
from numgpt.ops.gelu import gelu
from numgpt.ops.layer_norm import layer_norm
from numgpt.ops.linear import linear
from numgpt.ops.rms_norm import rms_norm
from numgpt.ops.rope import rope
from numgpt.ops.shape import concat, getitem, reshape, transpose
from numgpt.ops.swiglu import swiglu, swiglu_linear
from numgpt.registry import use_backward

__all__ = ["add", "cached_attention", "causal_attention", "concat", "cross_entropy", "dropout", "dropout_add",
           "dropout_add_layer_norm", "embedding", "gelu", "getitem", "layer_norm", "linear", "linear_gelu", "mul",
           "reshape", "rms_norm", "rope", "sum_all", "swiglu", "swiglu_linear", "transpose", "use_backward"]
