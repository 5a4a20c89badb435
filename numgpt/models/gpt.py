"""The seed's GPT: MultiHeadAttention, FeedForward, TransformerBlock, GPTModel,
with the seed's config dicts and the state_dict keys of the PyTorch reference
(``llms_from_scratch.ch04.GPTModel``).

Dimensions: B batch, T tokens, C = emb_dim, NH = n_heads, HS = C / NH, V = vocab_size.
"""
import numpy

from numgpt import ops, schema
from numgpt.autograd import array_of
from numgpt.device import array_module
from numgpt.models.memory import check_model_fits
from numgpt.nn.layers import GELU, Dropout, Embedding, LayerNorm, Linear, Module, Sequential
from numgpt.ops.attention import LayerKVCache
from numgpt.schema import MAX_CONTEXT, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH, SchemaError

GPT_CONFIG_124M = {
    "vocab_size": 50257,     # GPT-2 BPE vocabulary
    "context_length": 256,   # shortened context (GPT-2: 1024)
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 12,
    "drop_rate": 0.1,
    "qkv_bias": False,
}

CONFIG_KEYS = tuple(GPT_CONFIG_124M)
SIZE_LIMITS = {"vocab_size": MAX_VOCAB, "context_length": MAX_CONTEXT, "emb_dim": MAX_WIDTH, "n_heads": MAX_HEADS,
               "n_layers": MAX_LAYERS}

# Model presets by name: the seed's run, GPT-2's four sizes (as OpenAI shipped
# them: context 1024, biased qkv, tied head) and small ones for a laptop CPU.
GPT2_SIZES = {
    "gpt2-124m": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-355m": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-774m": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-1558m": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}
PRESETS = {
    "gpt2-124m": dict(GPT_CONFIG_124M),
    "small": dict(GPT_CONFIG_124M, emb_dim=256, n_heads=4, n_layers=4, context_length=128),
    "tiny": dict(GPT_CONFIG_124M, emb_dim=64, n_heads=4, n_layers=2, context_length=64),
}


def gpt2_config(size):
    """The config of one of OpenAI's GPT-2 sizes ('gpt2-124m', ...)."""
    if size not in GPT2_SIZES:
        raise ValueError(f"unknown GPT-2 size {size!r}: expected one of {', '.join(GPT2_SIZES)}")
    return dict(GPT_CONFIG_124M, context_length=1024, drop_rate=0.0, qkv_bias=True, tie_weights=True,
                **GPT2_SIZES[size])


def check_config(cfg, where="model config"):
    """Raise a SchemaError (a ValueError) naming ``where``, the first missing key or impossible value
    and what was expected: every size an integer from 1 to numgpt's limit (numgpt.schema)."""
    if not isinstance(cfg, dict):
        raise SchemaError(f"{where} is a {type(cfg).__name__}, not a JSON object of {', '.join(CONFIG_KEYS)}")
    missing = [key for key in CONFIG_KEYS if key not in cfg]
    if missing:
        raise SchemaError(f"{where} lacks {', '.join(missing)} (expected keys: {', '.join(CONFIG_KEYS)})")
    for key, high in SIZE_LIMITS.items():
        schema.integer(_plain(cfg), key, where, low=1, high=high)
    if cfg["emb_dim"] % cfg["n_heads"]:
        schema.fail(where, "n_heads", cfg["n_heads"], f"a divisor of emb_dim {cfg['emb_dim']}")
    schema.number(cfg, "drop_rate", where, low=0.0, below=1.0)
    schema.boolean(cfg, "qkv_bias", where)
    schema.boolean(cfg, "tie_weights", where, required=False)


def _plain(cfg):
    """``cfg`` with NumPy integers as Python ints (a config built in code may hold them)."""
    return {key: int(value) if isinstance(value, numpy.integer) else value for key, value in cfg.items()}


class MultiHeadAttention(Module):
    """Causal self-attention: W_query, W_key, W_value, out_proj as in the seed.

    The projections make queries, keys and values (B, T, C) each; the
    attention core (numgpt/ops/attention.py) splits them into heads,
    attends causally and merges the heads again.
    """

    ignored_state_keys = ("mask",)  # the reference's causal-mask buffer

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        if d_out % num_heads:
            raise ValueError(f"d_out {d_out} is not divisible by num_heads {num_heads}")
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.context_length = context_length
        self.dropout = dropout
        self.W_query = Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = Linear(d_out, d_out)

    def forward(self, x, kv_cache=None):
        """x (B, T, C) -> (B, T, C); with ``kv_cache`` (a LayerKVCache), the
        T new positions attend to the cached ones too (inference only)."""
        queries = self.W_query(x)                                                  # (B, T, C)
        keys = self.W_key(x)                                                       # (B, T, C)
        values = self.W_value(x)                                                   # (B, T, C)
        if kv_cache is None:
            context = ops.causal_attention(queries, keys, values, self.num_heads, self.dropout, self.training)
        else:
            context = ops.cached_attention(queries, keys, values, self.num_heads, kv_cache)
        return self.out_proj(context)                                              # (B, T, C)


class FeedForward(Module):
    """Linear(C, 4C) -> GELU -> Linear(4C, C), as ``layers`` (keys layers.0, layers.2)."""

    def __init__(self, cfg):
        super().__init__()
        C = cfg["emb_dim"]
        self.layers = Sequential(Linear(C, 4 * C), GELU(), Linear(4 * C, C))

    def forward(self, x):
        fc, proj = self.layers[0], self.layers[2]               # layers = (fc, GELU, proj)
        if not isinstance(fc, Linear):                          # bf16-true (numgpt/nn/inference_bf16.py): unfused
            return proj(self.layers[1](fc(x)))
        return proj(ops.linear_gelu(x, fc.weight, fc.bias))    # gelu(fc(x)): bias + GELU fused with the kernels


class TransformerBlock(Module):
    """Pre-LayerNorm block with shortcut connections and drop_shortcut."""

    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["context_length"], cfg["drop_rate"],
                                      cfg["n_heads"], cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = Dropout(cfg["drop_rate"])

    def forward(self, x, kv_cache=None):                         # x (B, T, C)
        # x = x + drop_shortcut(att(norm1(x))), the shortcut around attention, and h = norm2(x),
        # as one op: with the kernels, the add, its dropout and the LayerNorm are one pass each way
        p, training, norm2 = self.drop_shortcut.p, self.drop_shortcut.training, self.norm2
        x, h = ops.dropout_add_layer_norm(x, self.att(self.norm1(x), kv_cache), p, training,
                                          norm2.scale, norm2.shift, norm2.eps)
        return ops.dropout_add(x, self.ff(h), p, training)       # x + drop_shortcut(ff(h)): around the MLP


class GPTModel(Module):
    """Token + position embeddings, dropout, n_layers blocks, final norm, out_head.

    ``cfg`` is the seed's dict; an optional ``tie_weights: True`` makes
    out_head share tok_emb's weight (GPT-2 as OpenAI shipped it).
    """

    def __init__(self, cfg):
        super().__init__()
        check_config(cfg)
        check_model_fits(cfg)                                                # before anything is allocated
        self.cfg = dict(cfg)
        self.tok_emb = Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = Dropout(cfg["drop_rate"])
        self.trf_blocks = Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        if cfg.get("tie_weights", False):
            self.out_head.weight = self.tok_emb.weight

    def new_kv_cache(self, batch_size, max_len=None):
        """Empty per-layer key/value buffers for ``forward(idx, kv_cache=...)``."""
        C, NH = self.cfg["emb_dim"], self.cfg["n_heads"]
        max_len = max_len or self.cfg["context_length"]
        like = self.final_norm.scale.data          # float, on the model's device (also when weights are bf16)
        return [LayerKVCache(batch_size, NH, max_len, C // NH, like.dtype, array_module(like))
                for _ in range(self.cfg["n_layers"])]

    def forward(self, in_idx, kv_cache=None):
        """Token ids (B, T) -> logits (B, T, V). With ``kv_cache`` (from
        ``new_kv_cache``), in_idx holds only the new positions, placed after
        the cached ones (inference under no_grad)."""
        in_idx = array_of(in_idx)
        if in_idx.ndim != 2:
            raise ValueError(f"GPTModel expects token ids of shape (batch, tokens), got shape {in_idx.shape}")
        B, T = in_idx.shape
        start = 0 if kv_cache is None else kv_cache[0].length
        if start + T > self.cfg["context_length"]:
            raise ValueError(f"input has {start + T} tokens, more than context_length {self.cfg['context_length']}: "
                             f"crop it to the last {self.cfg['context_length']}")
        tok_embeds = self.tok_emb(in_idx)                                        # (B, T) -> (B, T, C)
        positions = array_module(self.final_norm.scale.data).arange(start, start + T)   # (T,), on the model's device
        pos_embeds = self.pos_emb(positions)                                    # (T,) -> (T, C)
        x = self.drop_emb(tok_embeds + pos_embeds)                              # (B, T, C)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, None if kv_cache is None else kv_cache[i])             # (B, T, C)
        x = self.final_norm(x)
        return self.out_head(x)                                                 # (B, T, C) -> (B, T, V)
