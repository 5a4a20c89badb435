"""Modules and layers (as ``torch.nn``): Module, Parameter and the layers GPT-2 is built from,
each a thin wrapper whose forward calls the ops in numgpt/ops/."""
from numgpt.nn.layers import (GELU, Dropout, Embedding, IncompatibleKeys, LayerNorm, Linear, Module, Parameter,
                              Sequential, StateDictError, normal_, uniform_)

__all__ = ["GELU", "Dropout", "Embedding", "IncompatibleKeys", "LayerNorm", "Linear", "Module", "Parameter",
           "Sequential", "StateDictError", "normal_", "uniform_"]
