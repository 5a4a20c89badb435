"""numgpt's ops. Each module holds ``<op>_forward`` / ``<op>_backward`` pairs
(pure functions on arrays, the NumPy reference) and the thin tape wrapper that
records them; the wrappers are re-exported here."""
from numgpt.ops.attention import cached_attention, causal_attention
from numgpt.ops.cross_entropy import cross_entropy
from numgpt.ops.dropout import dropout
from numgpt.ops.elementwise import add, mul, sum_all
from numgpt.ops.embedding import embedding
from numgpt.ops.gelu import gelu
from numgpt.ops.layer_norm import layer_norm
from numgpt.ops.linear import linear
from numgpt.ops.shape import concat, getitem, reshape, share_buffer, transpose

__all__ = ["add", "cached_attention", "causal_attention", "concat", "cross_entropy", "dropout", "embedding", "gelu",
           "getitem", "layer_norm", "linear", "mul", "reshape", "share_buffer", "sum_all", "transpose"]
