"""numgpt: GPT pretraining in pure NumPy, every forward and backward written by hand.

Dimension names used in shape comments throughout:
    B   batch size              T   tokens in a sequence (<= context_length)
    C   channels (emb_dim)      NH  attention heads      HS  head size, C / NH
    V   vocabulary size         N   rows of a flattened batch, B * T
"""
from numgpt.autograd import Tensor, enable_grad, is_grad_enabled, no_grad
from numgpt.backend import get_default_dtype, get_rng_state, manual_seed, set_default_dtype, set_rng_state
from numgpt.gradcheck import GradcheckError, gradcheck
from numgpt.model import (GPT_CONFIG_124M, PRESETS, FeedForward, GPTModel, MultiHeadAttention, TransformerBlock,
                          gpt2_config)
from numgpt.nn import (GELU, Dropout, Embedding, LayerNorm, Linear, Module, Parameter, Sequential,
                       StateDictError)
from numgpt.ops import cross_entropy
from numgpt.optim import AdamW, clip_grad_norm_

__version__ = "0.1.0"
