"""numgpt: GPT pretraining in pure NumPy, every forward and backward written by hand.

Dimension names used in shape comments throughout:
    B   batch size              T   tokens in a sequence (<= context_length)
    C   channels (emb_dim)      NH  attention heads      HS  head size, C / NH
    V   vocabulary size         N   rows of a flattened batch, B * T

The public API keeps the seed's names: GPTModel, GPT_CONFIG_124M,
GPTDatasetV1, create_dataloader_v1, calc_loss_batch, calc_loss_loader,
train_model_simple, generate_text_simple, generate, plot_losses, ...

The folders are the layers, and imports point down this list only:
    foundation  errors.py, schema.py, safe_write.py, backend.py, device.py, cuda.py, bf16.py
    core        autograd.py, ops/, registry.py, optim.py, graph.py, kernels/ (numgpt.kernels)
    nn          nn/: Module and layers
    models      models/: GPT-2, Llama/Qwen, generation, memory; gradcheck.py (it checks a tiny GPTModel)
    io          io/: safetensors, checkpoints, Hugging Face weights and hub, GPT-2 files, tokenizers
    data        data/: datasets and loaders, the token store, prepare
    training    training/: the loop, the run directory, distributed, the loss plot
    api         this file: the public names, re-exported
    cli         cli/: one module per subcommand
Two cycles are documented, and their imports sit inside functions: Tensor's operators are
ops and the ops make Tensors; the ops ask the registry which function runs and the registry
lists the reference pairs. Any other import inside a function is of a heavy or optional
library (numba's kernels, matplotlib, mpi4py, cupy, huggingface_hub, pyarrow, datasets), with
its reason on the line. tests/test_layout.py reads the import graph and holds this rule.
"""
__version__ = "0.1.0"    # the one place the version is declared (setup.cfg reads it)

from numgpt import cuda, device
from numgpt.training import distributed
from numgpt.autograd import Tensor, enable_grad, is_grad_enabled, no_grad
from numgpt.backend import get_default_dtype, get_rng_state, manual_seed, set_default_dtype, set_rng_state
from numgpt.io.checkpoint import (Checkpoint, CheckpointError, CheckpointManager, build_model, load_checkpoint,
                                  restore, save_checkpoint)
from numgpt.data.datasets import (DataLoader, GPTDatasetV1, Subset, create_dataloader_v1, default_collate,
                                  load_the_verdict, read_text, split_text)
from numgpt.models.generate import generate, generate_text_simple
from numgpt.gradcheck import GradcheckError, gradcheck, gradcheck_pair
from numgpt.graph import draw_graph, explain
from numgpt.models.gpt import (GPT_CONFIG_124M, PRESETS, FeedForward, GPTModel, MultiHeadAttention, TransformerBlock,
                               gpt2_config)
from numgpt.nn.layers import (GELU, Dropout, Embedding, LayerNorm, Linear, Module, Parameter, Sequential,
                              StateDictError)
from numgpt.ops import cross_entropy, use_backward
from numgpt.optim import AdamW, clip_grad_norm_
from numgpt.training.plot import plot_losses
from numgpt.precision import autocast, is_autocast_enabled
from numgpt.io.download import DownloadError, download_gpt2
from numgpt.errors import NumgptError, UsageError
from numgpt.io.pretrained import WeightsError, export_hf, load_gpt2
from numgpt.io.tokenizer import text_to_token_ids, token_ids_to_text
from numgpt.io.torch_format import TorchFileError, load_torch
from numgpt.io.families import export_pretrained, get_tokenizer, load_pretrained
from numgpt.models.llama import LlamaForCausalLM
from numgpt.training.train import (LRSchedule, TrainState, calc_loss_batch, calc_loss_loader, evaluate_model,
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

