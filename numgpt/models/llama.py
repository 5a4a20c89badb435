"""The Llama decoder family: Llama 3.x, SmolLM2, Qwen2.5 and Qwen3, one model
configured from Hugging Face's ``config.json``, with the parameter names of
Hugging Face's ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM``
(so its state_dict is the checkpoint's, key for key).

A block, pre-norm as GPT-2's, with RMSNorm in place of LayerNorm, rotary
positions in place of a position table, and a gated MLP:

    h = x + o_proj(attention(rope(q), rope(k), v))      q, k, v from input_layernorm(x)
    y = h + down_proj(silu(gate_proj(n)) * up_proj(n))   n = post_attention_layernorm(h)

What differs between the families is configuration, read from config.json:

- grouped-query attention: ``num_key_value_heads`` below ``num_attention_heads``
  (SmolLM2, Llama 3.2, Qwen); the KV cache holds only the key/value heads;
- Qwen3: an RMSNorm on each head of the queries and keys (``q_norm``, ``k_norm``)
  before the rotation, and a ``head_dim`` of its own (heads * head_dim may
  differ from hidden_size);
- Qwen2.5: biases on q, k, v (not on o); Llama's ``attention_bias`` puts them
  on all four, its ``mlp_bias`` on the MLP;
- Llama 3.x: ``rope_scaling`` of type llama3 (numgpt/ops/rope.py);
- a head tied to the embedding (``tie_word_embeddings``) or its own ``lm_head``.

Dimensions: B batch, T tokens, C hidden_size, NH heads, NKV key/value heads,
HS head_dim, F intermediate_size, V vocab_size.

``cfg`` is a plain dict (saved in checkpoints and settings.json), read, checked
and written by numgpt.models.llama_config: the Hugging Face fields under their
Hugging Face names, plus numgpt's ``model_type``, ``context_length``
(= max_position_embeddings) and ``drop_rate`` (0: these models train without dropout).
"""
import copy

import numpy

from numgpt import backend, ops
from numgpt.autograd import array_of
from numgpt.device import array_module
from numgpt.models.llama_config import check_config
from numgpt.models.memory import check_model_fits
from numgpt.nn.layers import Embedding, Linear, Module, Parameter, Sequential, normal_
from numgpt.ops.attention import LayerKVCache
from numgpt.ops.rope import rope_frequencies, rope_tables


# ---------------------------------------------------------------- modules
def _normal_linear(in_features, out_features, bias, std):
    """A Linear initialised as Hugging Face's Llama: N(0, std) weights, zero bias."""
    layer = Linear(in_features, out_features, bias=bias)
    layer.weight.data = normal_((out_features, in_features)) * layer.weight.dtype.type(std)
    if bias:
        layer.bias.data = numpy.zeros_like(layer.bias.data)
    return layer


class RMSNorm(Module):
    """RMSNorm with a learned ``weight`` (ones), as Hugging Face's LlamaRMSNorm."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(numpy.ones(dim, dtype=backend.get_default_dtype()))

    def forward(self, x):
        return ops.rms_norm(x, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LlamaAttention(Module):
    """q_proj, k_proj, v_proj, o_proj (and Qwen3's q_norm, k_norm); rotary positions; GQA."""

    def __init__(self, cfg):
        super().__init__()
        C, HS, std = cfg["hidden_size"], cfg["head_dim"], cfg["initializer_range"]
        self.n_heads, self.n_kv_heads, self.head_dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], HS
        self.q_proj = _normal_linear(C, self.n_heads * HS, cfg["attention_bias"], std)
        self.k_proj = _normal_linear(C, self.n_kv_heads * HS, cfg["attention_bias"], std)
        self.v_proj = _normal_linear(C, self.n_kv_heads * HS, cfg["attention_bias"], std)
        self.o_proj = _normal_linear(self.n_heads * HS, C, cfg["o_proj_bias"], std)
        if cfg["qk_norm"]:
            self.q_norm = RMSNorm(HS, cfg["rms_norm_eps"])
            self.k_norm = RMSNorm(HS, cfg["rms_norm_eps"])

    def forward(self, x, cos, sin, kv_cache=None):
        """x (B, T, C), cos/sin (T, HS/2) of the T positions -> (B, T, C)."""
        B, T, _ = x.shape
        NH, NKV, HS = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).reshape(B, T, NH, HS)                                  # (B, T, NH, HS)
        k = self.k_proj(x).reshape(B, T, NKV, HS)                                 # (B, T, NKV, HS)
        v = self.v_proj(x)                                                        # (B, T, NKV * HS)
        if "q_norm" in self._modules:                                             # Qwen3: per-head RMSNorm
            q, k = self.q_norm(q), self.k_norm(k)
        q = ops.rope(q, cos, sin).reshape(B, T, NH * HS)
        k = ops.rope(k, cos, sin).reshape(B, T, NKV * HS)
        if kv_cache is None:
            context = ops.causal_attention(q, k, v, NH, 0.0, self.training, n_kv_heads=NKV)
        else:
            context = ops.cached_attention(q, k, v, NH, kv_cache, n_kv_heads=NKV)
        return self.o_proj(context)                                               # (B, T, NH * HS) -> (B, T, C)


class LlamaMLP(Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)); the SwiGLU product goes into down_proj
    without being kept for the backward pass (ops.swiglu_linear recomputes it)."""

    def __init__(self, cfg):
        super().__init__()
        C, F, bias, std = cfg["hidden_size"], cfg["intermediate_size"], cfg["mlp_bias"], cfg["initializer_range"]
        self.gate_proj = _normal_linear(C, F, bias, std)
        self.up_proj = _normal_linear(C, F, bias, std)
        self.down_proj = _normal_linear(F, C, bias, std)

    def forward(self, x):                                                         # (B, T, C)
        down = self.down_proj
        if not isinstance(down, Linear):                      # bf16-true (numgpt/nn/inference_bf16.py): unfused
            return down(ops.swiglu(self.gate_proj(x), self.up_proj(x)))
        return ops.swiglu_linear(self.gate_proj(x), self.up_proj(x), down.weight, down.bias)   # (B, T, F) -> (B, T, C)


class LlamaDecoderLayer(Module):
    """Pre-norm block: attention and MLP, each around a shortcut."""

    def __init__(self, cfg):
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])

    def forward(self, x, cos, sin, kv_cache=None):                                # x (B, T, C)
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(Module):
    """embed_tokens, the decoder layers, the final norm (Hugging Face's ``model.``)."""

    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.embed_tokens.weight.data *= self.embed_tokens.weight.dtype.type(cfg["initializer_range"])
        self.layers = Sequential(*[LlamaDecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class LlamaForCausalLM(Module):
    """The decoder with its output head: token ids (B, T) -> logits (B, T, V).

    The same interface as GPTModel (``cfg``, ``new_kv_cache``,
    ``forward(idx, kv_cache=None)``), so training, generation and checkpoints
    run it unchanged."""

    def __init__(self, cfg):
        super().__init__()
        check_config(cfg)
        check_model_fits(cfg)                                                # before anything is allocated
        self.cfg = copy.deepcopy(dict(cfg))
        self.model = LlamaModel(cfg)
        self.lm_head = _normal_linear(cfg["hidden_size"], cfg["vocab_size"], False, cfg["initializer_range"])
        if cfg["tie_word_embeddings"]:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.inv_freq = rope_frequencies(cfg["head_dim"], cfg["rope_theta"], cfg["rope_scaling"])   # (HS/2,)

    def new_kv_cache(self, batch_size, max_len=None):
        """Empty per-layer key/value buffers (NKV heads) for ``forward(idx, kv_cache=...)``."""
        max_len = max_len or self.cfg["context_length"]
        like = self.model.norm.weight.data        # float, on the model's device (also when weights are bf16)
        return [LayerKVCache(batch_size, self.cfg["num_key_value_heads"], max_len, self.cfg["head_dim"],
                             like.dtype, array_module(like)) for _ in range(self.cfg["num_hidden_layers"])]

    def forward(self, in_idx, kv_cache=None):
        """Token ids (B, T) -> logits (B, T, V). With ``kv_cache`` (from
        ``new_kv_cache``), in_idx holds only the new positions, placed after
        the cached ones (inference under no_grad)."""
        in_idx = array_of(in_idx)
        if in_idx.ndim != 2:
            raise ValueError(f"{type(self).__name__} expects token ids of shape (batch, tokens), got {in_idx.shape}")
        T = in_idx.shape[1]
        start = 0 if kv_cache is None else kv_cache[0].length
        if start + T > self.cfg["context_length"]:
            raise ValueError(f"input has {start + T} tokens, more than context_length {self.cfg['context_length']}: "
                             f"crop it to the last {self.cfg['context_length']}")
        like = self.model.norm.weight.data
        cos, sin = rope_tables(self.inv_freq, start, T, like.dtype, array_module(like))   # (T, HS/2) each
        x = self.model.embed_tokens(in_idx)                                       # (B, T) -> (B, T, C)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, None if kv_cache is None else kv_cache[i])     # (B, T, C)
        x = self.model.norm(x)
        return self.lm_head(x)                                                    # (B, T, C) -> (B, T, V)
