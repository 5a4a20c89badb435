"""Write the PyTorch files that tests/test_torch_files.py reads without PyTorch.

Needs torch (and transformers, llms-from-scratch), so it runs outside numgpt's environment, from
outside the repository root:

    pip install torch==2.13.0 transformers safetensors numpy
    pip install --no-deps llms-from-scratch
    python tests/reference/torch_files/make_torch_files.py

It writes, next to this file (each .pth with an ``.expected.safetensors`` beside it, written by the
safetensors package, holding what ``torch.load(weights_only=True)`` returns, tensor for tensor):

    model_and_optimizer.pth   the seed's torch.save({"model_state_dict", "optimizer_state_dict"}) of a
                              tiny llms_from_scratch.ch04.GPTModel after TRAINED_STEPS AdamW steps
                              (lr 0.0005, weight_decay 0.1, as the seed); its expected file also holds
                              the batch (input_ids, target_ids) and ``next.<key>``, the parameters after
                              one more step on that batch (dropout off)
    model.pth                 torch.save(model.state_dict(), "model.pth"), as the book saves it
    views.pth                 a tied weight and its transpose, a slice and a strided column of one
                              storage, bf16 / float16 / int64 / int32 / uint8 / bool tensors, a 0-d and
                              an empty tensor, a Parameter, nested lists, tuples, strings, floats, None
    hf_gpt2_tiny_bin/         a tiny transformers GPT2LMHeadModel as transformers 4.x's
                              save_pretrained(safe_serialization=False) wrote it (transformers 5 writes
                              safetensors only): config.json, pytorch_model.bin
    hf_gpt2_tiny_sharded/     the same in three shards: pytorch_model-0000k-of-00003.bin and
                              pytorch_model.bin.index.json

Expected tensors are stored under their path in the object (keys joined by '/'); bf16 tensors as
their int16 bits. Bump FIXTURE_VERSION when the content or the layout changes; the tests expect it.
"""
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from llms_from_scratch.ch04 import GPTModel

FIXTURE_VERSION = 1
SEED = 123
TRAINED_STEPS = 3
B, T = 2, 8
CONFIG = {"vocab_size": 50, "context_length": T, "emb_dim": 16, "n_heads": 4, "n_layers": 2,
          "drop_rate": 0.0, "qkv_bias": False}
HERE = Path(__file__).resolve().parent


def flat(value, prefix=""):
    """{path: tensor} of every tensor in a nested dict/list/tuple."""
    if isinstance(value, torch.Tensor):
        return {prefix: value.detach().view(torch.int16) if value.dtype == torch.bfloat16 else value.detach()}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) \
        else []
    out = {}
    for key, item in items:
        out.update(flat(item, f"{prefix}/{key}" if prefix else str(key)))
    return out


def save_expected(path, obj, extra=None):
    tensors = {key: value.contiguous().clone() for key, value in {**flat(obj), **(extra or {})}.items()}
    save_file(tensors, str(path), metadata={"fixture_version": str(FIXTURE_VERSION), "torch": torch.__version__})


def loss_of(model, inputs, targets):
    logits = model(inputs)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def seed_checkpoint():
    torch.manual_seed(SEED)
    model = GPTModel(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0005, weight_decay=0.1)
    inputs = torch.randint(0, CONFIG["vocab_size"], (B, T))
    targets = torch.randint(0, CONFIG["vocab_size"], (B, T))
    model.train()
    for _ in range(TRAINED_STEPS):
        optimizer.zero_grad()
        loss_of(model, inputs, targets).backward()
        optimizer.step()
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
               HERE / "model_and_optimizer.pth")
    torch.save(model.state_dict(), HERE / "model.pth")
    saved = torch.load(HERE / "model_and_optimizer.pth", weights_only=True)
    optimizer.zero_grad()
    loss_of(model, inputs, targets).backward()
    optimizer.step()
    following = {f"next/{key}": value for key, value in model.state_dict().items()}
    save_expected(HERE / "model_and_optimizer.expected.safetensors", saved,
                  {"input_ids": inputs, "target_ids": targets, **following})
    save_expected(HERE / "model.expected.safetensors", torch.load(HERE / "model.pth", weights_only=True))


def views():
    torch.manual_seed(SEED + 1)
    weight = torch.randn(6, 4)
    block = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "tied": weight, "tied_t": weight.t(), "rows": weight[2:5], "column": block[:, 3], "stepped": block[::2, ::3],
        "bf16": torch.randn(3, 5).to(torch.bfloat16), "bf16_t": None, "f16": torch.randn(2, 3).half(),
        "i64": torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4), "i32": torch.tensor([7, -8, 2**31 - 1],
                                                                                       dtype=torch.int32),
        "u8": torch.tensor([0, 255, 17], dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "grad": torch.ones(2, requires_grad=True),
        "param": torch.nn.Parameter(torch.full((2, 2), 0.5)),
        "nested": [1, -2**40, 3.25, "text", None, True, (4, "five", [torch.tensor([6.0])])],
    }
    obj["bf16_t"] = obj["bf16"].t()
    torch.save(obj, HERE / "views.pth")
    save_expected(HERE / "views.expected.safetensors", torch.load(HERE / "views.pth", weights_only=True))


def hf_gpt2():
    """transformers 5 writes safetensors only, so the files of its 4.x ``save_pretrained(...,
    safe_serialization=False)`` are written here as it wrote them: torch.save of the state dict
    without the tied lm_head.weight, in one pytorch_model.bin or in shards with an index."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(SEED + 2)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                        eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    state = {key: value for key, value in model.state_dict().items() if key != "lm_head.weight"}
    names = list(state)
    shards = [names[i::3] for i in range(3)]
    for name in ("hf_gpt2_tiny_bin", "hf_gpt2_tiny_sharded"):
        shutil.rmtree(HERE / name, ignore_errors=True)
        config.save_pretrained(HERE / name)
    torch.save(state, HERE / "hf_gpt2_tiny_bin" / "pytorch_model.bin")
    weight_map = {}
    for i, keys in enumerate(shards, 1):
        file = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        torch.save({key: state[key] for key in keys}, HERE / "hf_gpt2_tiny_sharded" / file)
        weight_map.update({key: file for key in keys})
    total = sum(value.numel() * value.element_size() for value in state.values())
    (HERE / "hf_gpt2_tiny_sharded" / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    save_file({key: value.contiguous().clone() for key, value in state.items()},
              str(HERE / "hf_gpt2_tiny.expected.safetensors"),
              metadata={"fixture_version": str(FIXTURE_VERSION), "torch": torch.__version__})


if __name__ == "__main__":
    seed_checkpoint()
    views()
    hf_gpt2()
    print(json.dumps(sorted(p.name for p in HERE.rglob("*") if p.is_file())))
