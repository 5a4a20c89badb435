"""The model families: GPT-2 (gpt.py: GPTModel, its configs and presets) and Llama/Qwen
(llama.py, its config in llama_config.py), sampling with a KV cache (generate.py), and what a
model of a config takes in memory (memory.py); model_from_config builds either family."""
from numgpt.models.gpt import GPTModel
from numgpt.models.llama import LlamaForCausalLM
from numgpt.models.llama_config import is_llama_config


def model_from_config(cfg):
    """A freshly initialised model of ``cfg``'s family (a numgpt model config)."""
    return LlamaForCausalLM(cfg) if is_llama_config(cfg) else GPTModel(cfg)
