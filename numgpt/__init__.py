"""numgpt: GPT pretraining in pure NumPy, every forward and backward written by hand.

Dimension names used in shape comments throughout:
    B   batch size              T   tokens in a sequence (<= context_length)
    C   channels (emb_dim)      NH  attention heads      HS  head size, C / NH
    V   vocabulary size         N   rows of a flattened batch, B * T

The public API keeps the seed's names: GPTModel, GPT_CONFIG_124M,
GPTDatasetV1, create_dataloader_v1, calc_loss_batch, calc_loss_loader,
train_model_simple, generate_text_simple, generate, plot_losses, ...
"""
__version__ = "0.1.0"    # the one place the version is declared (setup.cfg reads it)

from numgpt import cuda, device, distributed
from numgpt.autograd import Tensor, enable_grad, is_grad_enabled, no_grad
from numgpt.backend import get_default_dtype, get_rng_state, manual_seed, set_default_dtype, set_rng_state
from numgpt.checkpoint import (Checkpoint, CheckpointError, CheckpointManager, build_model, load_checkpoint,
                               restore, save_checkpoint)
from numgpt.data import (DataLoader, GPTDatasetV1, Subset, create_dataloader_v1, default_collate, load_the_verdict,
                         read_text, split_text)
from numgpt.generate import generate, generate_text_simple
from numgpt.gradcheck import GradcheckError, gradcheck, gradcheck_pair
from numgpt.graph import draw_graph, explain
from numgpt.model import (GPT_CONFIG_124M, PRESETS, FeedForward, GPTModel, MultiHeadAttention, TransformerBlock,
                          gpt2_config)
from numgpt.nn import (GELU, Dropout, Embedding, LayerNorm, Linear, Module, Parameter, Sequential,
                       StateDictError)
from numgpt.ops import cross_entropy, use_backward
from numgpt.optim import AdamW, clip_grad_norm_
from numgpt.plot import plot_losses
from numgpt.precision import autocast, is_autocast_enabled
from numgpt.download import DownloadError, download_gpt2
from numgpt.errors import NumgptError, UsageError
from numgpt.pretrained import WeightsError, export_hf, load_gpt2
from numgpt.tokenizer import text_to_token_ids, token_ids_to_text
from numgpt.torch_format import TorchFileError, load_torch
from numgpt.families import export_pretrained, get_tokenizer, load_pretrained
from numgpt.llama import LlamaForCausalLM
from numgpt.train import (LRSchedule, TrainState, calc_loss_batch, calc_loss_loader, evaluate_model,
                          generate_and_print_sample, perplexity, train_model_simple)

__all__ = [
    "AdamW",
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "DataLoader",
    "DownloadError",
    "Dropout",
    "Embedding",
    "FeedForward",
    "GELU",
    "GPTDatasetV1",
    "GPTModel",
    "GPT_CONFIG_124M",
    "GradcheckError",
    "LayerNorm",
    "LRSchedule",
    "Linear",
    "LlamaForCausalLM",
    "Module",
    "MultiHeadAttention",
    "NumgptError",
    "PRESETS",
    "Parameter",
    "Sequential",
    "StateDictError",
    "Subset",
    "Tensor",
    "TorchFileError",
    "TrainState",
    "TransformerBlock",
    "UsageError",
    "WeightsError",
    "autocast",
    "build_model",
    "calc_loss_batch",
    "calc_loss_loader",
    "clip_grad_norm_",
    "create_dataloader_v1",
    "cuda",
    "cross_entropy",
    "default_collate",
    "device",
    "distributed",
    "download_gpt2",
    "draw_graph",
    "enable_grad",
    "evaluate_model",
    "explain",
    "export_hf",
    "export_pretrained",
    "generate",
    "generate_and_print_sample",
    "generate_text_simple",
    "get_default_dtype",
    "get_rng_state",
    "get_tokenizer",
    "gpt2_config",
    "gradcheck",
    "gradcheck_pair",
    "is_autocast_enabled",
    "is_grad_enabled",
    "load_checkpoint",
    "load_gpt2",
    "load_pretrained",
    "load_the_verdict",
    "load_torch",
    "manual_seed",
    "no_grad",
    "perplexity",
    "plot_losses",
    "read_text",
    "restore",
    "save_checkpoint",
    "set_default_dtype",
    "set_rng_state",
    "split_text",
    "text_to_token_ids",
    "token_ids_to_text",
    "use_backward",
    "train_model_simple",
]

