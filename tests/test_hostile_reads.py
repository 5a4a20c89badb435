"""Hostile model and run directories, as someone handing you one would craft them (issue 22,
findings 3 to 7): every refusal is one NumgptError naming the file, the field, the value and
what was expected (one line and exit 2 on the CLI), nothing is allocated before the size
check, nothing is read from a FIFO or a device, and the memory a header or an index takes
is bounded by its size (measured in a subprocess).

The table runs the CLI in-process (numgpt.cli.main); a few cases run the real command."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cli_process import ENV, assert_usage_error, numgpt_cli
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

import numgpt
from numgpt import cli, schema
from numgpt.cli import common as cli_common, train as cli_train
from numgpt.errors import NumgptError
from numgpt.io.checkpoint import CheckpointManager, build_model, load_checkpoint, restore
from numgpt.io.pretrained import gpt2_dims
from numgpt.models.llama_config import from_hf_config
from numgpt.models.memory import MemoryCheckError, check_model_fits
from numgpt.optim import AdamW
from numgpt.training.run import RunDirectory, resolve_settings
from numgpt.training.train import TrainState

REFERENCE = Path(__file__).parent / "reference"
GPT2_TINY = REFERENCE / "hf_gpt2_tiny"                  # vocab 50, n_embd 16, 2 layers
SMOLLM2 = REFERENCE / "hf_llama" / "smollm2_tiny"       # vocab 400, hidden 32, its own tokenizer.json
DELETE = object()                                       # a field to remove from a document
FUZZ_EXAMPLES = 60                                      # hypothesis examples per fuzzed file: a few seconds
HEADER_MEMORY_RATIO = 4.0                               # peak memory over the header's size, at most
LIBRARY_PARSE_RATIO = 4.5   # an accepted name-dense header: the safetensors library's own parse peaks at 3.9x
MEMORY_SLACK = 8 * 2**20                                # allocator noise around the measurement
BIG_HEADER_BYTES = 50 * 10**6                           # the size for the memory test
COMPILE_NOTE = "compiling kernels, cached for next time"
TINY_GPT = dict(vocab_size=16, context_length=8, emb_dim=8, n_heads=2, n_layers=1, drop_rate=0.0, qkv_bias=False)


# ---------------------------------------------------------------- building hostile directories

def edited(document, changes):
    """``document`` with ``changes`` applied (DELETE removes a field)."""
    document = dict(document)
    for key, value in changes.items():
        if value is DELETE:
            document.pop(key, None)
        else:
            document[key] = value
    return document


def copy_dir(source, target, config_changes=None):
    shutil.copytree(source, target)
    if config_changes is not None:
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps(edited(config, config_changes)))
    return target


def gpt2_tensors():
    with safe_open(str(GPT2_TINY / "model.safetensors"), framework="numpy") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def gpt2_file(path, changes):
    """GPT-2 weights in one .safetensors file (no config.json): the tiny model's, with ``changes``."""
    save_file({k: np.array(v, order="C") for k, v in edited(gpt2_tensors(), changes).items()}, str(path))
    return path


def raw_safetensors(path, header):
    """A safetensors file of ``header`` (name -> entry) and a zero-filled data section."""
    end = max([entry["data_offsets"][1] for entry in header.values()], default=0)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(end))
    return path


def valid_settings():
    """A settings.json document as numgpt train writes it, for the tiny preset on the bundled text."""
    from numgpt.io import bundled
    train = dict(cli_train.TRAIN_DEFAULTS, preset="tiny", context_length=64, drop_rate=0.1)
    return {"format": "numgpt-run", "version": 1, "train": train,
            "data_sha256": hashlib.sha256(bundled.read_bundled(bundled.VERDICT)).hexdigest(),
            "model": dict(numgpt.PRESETS["tiny"]), "optimizer": {"name": "AdamW"}, "schedule": {},
            "environment": cli_train._environment(), "processes": 1}


def run_dir(path, settings_changes=None, train_changes=None):
    path.mkdir()
    document = valid_settings()
    document["train"] = edited(document["train"], train_changes or {})
    (path / "settings.json").write_text(json.dumps(edited(document, settings_changes or {})))
    return path


def save_tiny_checkpoint(directory, cfg=None, **state):
    """A committed checkpoint of a tiny GPT with AdamW moments; its path."""
    numgpt.manual_seed(0)
    model = numgpt.GPTModel(cfg or TINY_GPT)
    optimizer = AdamW(model.parameters(), lr=1e-3)
    for param in model.parameters():
        param.grad = np.ones_like(param.data)
    optimizer.step()
    return CheckpointManager(directory).save(0, model, optimizer, **state)


def rewrite_checkpoint_json(path, edit):
    """Apply ``edit`` to the checkpoint.json document at ``path`` and commit it again (a new marker),
    as a hostile sender would."""
    document = json.loads((path / "checkpoint.json").read_text())
    edit(document)
    (path / "checkpoint.json").write_text(json.dumps(document))
    marker = json.loads((path / "COMMITTED").read_text())
    marker["sha256"] = {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in marker["sha256"]}
    (path / "COMMITTED").write_text(json.dumps(marker))
    return path


def with_train_state(value):
    def edit(document):
        document["state"]["train_state"] = value
    return edit


def with_betas(value):
    def edit(document):
        document["optimizer"]["param_groups"][0]["betas"] = value
    return edit


def with_config(**changes):
    def edit(document):
        document["config"] = edited(document["config"], changes)
    return edit


def with_file(directory, name, data):
    """``directory`` with its file ``name`` holding ``data``."""
    (directory / name).write_bytes(data)
    return directory


def with_link(directory, name, target):
    """``directory`` with its file ``name`` replaced by a symbolic link to ``target``."""
    (directory / name).unlink()
    (directory / name).symlink_to(target)
    return directory


def sharded_with_shard_name(directory, shard_name):
    """A copy of smollm2_tiny whose index puts every tensor in a shard called ``shard_name``."""
    copy_dir(SMOLLM2, directory)
    with safe_open(str(directory / "model.safetensors"), framework="numpy") as f:
        names = list(f.keys())
    (directory / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {name: shard_name for name in names}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def resumable_run(path, train_state):
    """A run directory a --resume reaches the checkpoint of: the tiny preset's settings, and a
    checkpoint of that model whose train_state is ``train_state``."""
    run_dir(path)
    cfg = numgpt.PRESETS["tiny"]
    checkpoint = save_tiny_checkpoint(path / "checkpoints", cfg, rng_state=numgpt.backend.get_rng_state(),
                                      train_state={})
    return rewrite_checkpoint_json(checkpoint, with_train_state(train_state)).parent.parent


# ---------------------------------------------------------------- finding 6's list, and findings 3 to 5's

LLAMA_GENERATE = ["generate", "--prompt", "Every effort", "--model"]
GPT2_GENERATE = ["generate", "--prompt", "Every effort", "--gpt2"]
HUGE_LLAMA = dict(num_hidden_layers=1000, hidden_size=16384, intermediate_size=53248, num_attention_heads=128,
                  num_key_value_heads=8, head_dim=128)

CASES = {   # id: (builder of the hostile input -> argv, fragments the one line must hold)
    "rope_scaling yarn": (lambda t: LLAMA_GENERATE + [copy_dir(SMOLLM2, t / "m", dict(
        rope_parameters=DELETE, rope_scaling="yarn"))], ["config.json", "rope_scaling is 'yarn'", "JSON object"]),
    "rope_parameters 5": (lambda t: LLAMA_GENERATE + [copy_dir(SMOLLM2, t / "m", dict(rope_parameters=5))],
                          ["config.json", "rope_parameters is 5", "expected a JSON object"]),
    "model_type list": (lambda t: LLAMA_GENERATE + [copy_dir(SMOLLM2, t / "m", dict(model_type=["llama"]))],
                        ["config.json", "model_type is ['llama']", "expected a string"]),
    "rope_theta x": (lambda t: LLAMA_GENERATE + [copy_dir(SMOLLM2, t / "m", dict(
        rope_parameters=DELETE, rope_theta="x"))], ["config.json", "rope_theta is 'x'", "a number > 0"]),
    "num_attention_heads 0": (lambda t: LLAMA_GENERATE + [copy_dir(SMOLLM2, t / "m", dict(
        num_attention_heads=0, head_dim=DELETE))], ["config.json", "num_attention_heads is 0", ">= 1"]),
    "num_hidden_layers 1e6": (lambda t: LLAMA_GENERATE + [copy_dir(SMOLLM2, t / "m", dict(
        num_hidden_layers=10**6))], ["config.json", "num_hidden_layers is 1000000", "<= 1024"]),
    "llama beyond memory": (lambda t: LLAMA_GENERATE + [copy_dir(SMOLLM2, t / "m", HUGE_LLAMA)],
                            ["config.json", "does not fit in memory", "num_hidden_layers 1000", "bytes"]),
    "n_head 3 of 768": (lambda t: GPT2_GENERATE + [copy_dir(GPT2_TINY, t / "m", dict(n_embd=768, n_head=3))],
                        ["model.safetensors", "emb_dim 768", "n_heads 3", "misshapen"]),
    "n_head 5 of 768": (lambda t: GPT2_GENERATE + [copy_dir(GPT2_TINY, t / "m", dict(n_embd=768, n_head=5))],
                        ["config.json", "n_head is 5", "a divisor of n_embd 768"]),
    "n_positions 0": (lambda t: GPT2_GENERATE + [copy_dir(GPT2_TINY, t / "m", dict(n_positions=0))],
                      ["config.json", "n_positions is 0", ">= 1"]),
    "layer_norm_epsilon x": (lambda t: GPT2_GENERATE + [copy_dir(GPT2_TINY, t / "m", dict(layer_norm_epsilon="x"))],
                             ["config.json", "layer_norm_epsilon is 'x'", "a number > 0"]),
    "vocab_size 6e7": (lambda t: GPT2_GENERATE + [copy_dir(GPT2_TINY, t / "m", dict(vocab_size=60_000_000))],
                       ["config.json", "vocab_size is 60000000", f"<= {schema.MAX_VOCAB}"]),
    "gpt2 beyond memory": (lambda t: GPT2_GENERATE + [copy_dir(GPT2_TINY, t / "m", dict(
        n_layer=1000, n_embd=16384, n_head=128))], ["config.json", "does not fit in memory", "n_layer 1000", "bytes"]),
    "1-D wte": (lambda t: GPT2_GENERATE + [gpt2_file(t / "w.safetensors", {"wte.weight": np.zeros(16, np.float32)})],
                ["w.safetensors", "wte.weight has shape (16,)", "expected (vocab_size, emb_dim)"]),
    "0-d wpe": (lambda t: GPT2_GENERATE + [gpt2_file(t / "w.safetensors", {"wpe.weight": np.float32(1)})],
                ["w.safetensors", "wpe.weight has shape ()", "expected (context_length, emb_dim)"]),
    "h.99999999 without config": (lambda t: GPT2_GENERATE + [gpt2_file(t / "w.safetensors", {
        "h.99999999.ln_1.weight": np.ones(16, np.float32)})], ["w.safetensors", "h.99999999", "at most 1024 layers"]),
    "a gap in the blocks": (lambda t: GPT2_GENERATE + [gpt2_file(t / "w.safetensors", {
        "h.5.ln_1.weight": np.ones(16, np.float32)})], ["w.safetensors", "up to h.5", "h.2 first"]),
    "65 dimensions": (lambda t: GPT2_GENERATE + [raw_safetensors(t / "w.safetensors", {
        "wte.weight": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}})],
                      ["w.safetensors", "65 dimensions", f"at most {schema.MAX_TENSOR_DIMS}"]),
    "vocabulary smaller than the tokenizer's": (lambda t: GPT2_GENERATE + [GPT2_TINY],
                                                ["--prompt holds token id", "outside the model's vocab_size 50",
                                                 "its tokenizer has 50257 tokens"]),
    "eval data outside the vocabulary": (lambda t: ["eval", "--data", with_file(t, "text.txt", b"Every effort moves"
                                                                                  b" you") / "text.txt",
                                                    "--context-length", "2", "--gpt2", GPT2_TINY],
                                         ["--data", "text.txt holds token id", "outside the model's vocab_size 50"]),
    "config.json not UTF-8": (lambda t: GPT2_GENERATE + [with_file(copy_dir(GPT2_TINY, t / "m"), "config.json",
                                                                   b'{"n_embd": "\xff"}')],
                              ["config.json", "not UTF-8"]),
    "config.json nested deep": (lambda t: GPT2_GENERATE + [with_file(copy_dir(GPT2_TINY, t / "m"), "config.json",
                                                                     b'{"a":' * 100 + b"1" + b"}" * 100)],
                                ["config.json", "nested more than 64"]),
    "config.json duplicate key": (lambda t: GPT2_GENERATE + [with_file(copy_dir(GPT2_TINY, t / "m"), "config.json",
                                                                       b'{"n_layer": 2, "n_layer": 99}')],
                                  ["config.json", "duplicate key 'n_layer'"]),
    "settings.json without data_sha256": (lambda t: ["train", "--resume", "--out", run_dir(
        t / "run", dict(data_sha256=DELETE))], ["settings.json", "data_sha256 is missing"]),
    "settings.json processes 0": (lambda t: ["train", "--resume", "--out", run_dir(t / "run", dict(processes=0))],
                                  ["settings.json", "processes is 0", ">= 1"]),
    "settings.json grad_accum 0": (lambda t: ["train", "--resume", "--out", run_dir(
        t / "run", train_changes=dict(grad_accum=0))], ["settings.json: train", "grad_accum is 0", ">= 1"]),
    "settings.json batch_size as a string": (lambda t: ["train", "--resume", "--out", run_dir(
        t / "run", train_changes=dict(batch_size="2"))], ["settings.json: train", "batch_size is '2'", "an integer"]),
    "settings.json lr as a string": (lambda t: ["train", "--resume", "--out", run_dir(
        t / "run", train_changes=dict(lr="0.1"))], ["settings.json: train", "lr is '0.1'", "a number"]),
    "settings.json data /dev/zero": (lambda t: ["train", "--resume", "--out", run_dir(
        t / "run", train_changes=dict(data="/dev/zero"))], ["/dev/zero", "a character device, not a regular file"]),
    "checkpoint.json train_state 5": (lambda t: ["train", "--resume", "--out", resumable_run(t / "run", 5)],
                                      ["checkpoint.json", "train_state is 5", "a JSON object"]),
    "checkpoint.json betas ab": (lambda t: ["generate", "--prompt", "x", "--checkpoint", rewrite_checkpoint_json(
        save_tiny_checkpoint(t / "ck"), with_betas("ab"))], ["checkpoint.json", "betas is 'ab'", "two numbers"]),
    "checkpoint.json vocab 1e12": (lambda t: ["generate", "--prompt", "x", "--checkpoint", rewrite_checkpoint_json(
        save_tiny_checkpoint(t / "ck"), with_config(vocab_size=10**12))],
                                   ["checkpoint.json: config", "vocab_size is 1000000000000",
                                    f"<= {schema.MAX_VOCAB}"]),
    "metrics record without epoch": (lambda t: ["plot", with_file(
        run_dir(t / "run"), "metrics.jsonl", b'{"step": 0, "tokens_seen": 8, "train_loss": 1.0}\n')],
                                     ["metrics.jsonl:1", "epoch is missing"]),
    "a 300-character shard name": (lambda t: LLAMA_GENERATE + [sharded_with_shard_name(
        t / "m", "a" * 288 + ".safetensors")], ["model.safetensors.index.json", "not a plain file name",
                                                f"at most {schema.MAX_FILE_NAME} bytes"]),
    "tokenizer.json a link to /dev/zero": (lambda t: LLAMA_GENERATE + [with_link(copy_dir(SMOLLM2, t / "m"),
                                                                                 "tokenizer.json", "/dev/zero")],
                                           ["tokenizer.json", "a character device, not a regular file"]),
}


@pytest.mark.parametrize("case", CASES)
def test_each_hostile_value_is_one_line_naming_the_file_the_field_and_the_value(case, tmp_path, capsys):
    build, fragments = CASES[case]
    argv = [str(arg) for arg in build(tmp_path)]
    code = cli.main(argv)
    err = capsys.readouterr().err
    print(err)
    assert code == cli_common.EXIT_USAGE
    lines = [line for line in err.strip().splitlines() if line != COMPILE_NOTE]   # numba's first run says so
    assert len(lines) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


# ---------------------------------------------------------------- the real command, and its memory

# VmHWM, this process's own peak: getrusage's ru_maxrss also counts the parent's memory at the fork,
# kept across exec (a large pytest process once made a 150 MiB run read as 600 MiB)
PEAK_PROBE = textwrap.dedent("""
    import runpy, sys
    sys.argv = ["numgpt"] + sys.argv[1:]
    try:
        runpy.run_module("numgpt", run_name="__main__")
    finally:
        peak = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
        print("maxrss_kib", peak, file=sys.stderr)
""")


def test_a_6kb_safetensors_naming_block_99999999_is_refused_with_no_memory_taken(tmp_path):
    """Finding 3: the layer count came from the highest h.N. and the model was allocated (5.9 GB in 5 s)."""
    weights = gpt2_file(tmp_path / "w.safetensors", {"h.99999999.ln_1.weight": np.ones(16, np.float32)})
    result = subprocess.run([sys.executable, "-c", PEAK_PROBE, "generate", "--gpt2", str(weights), "--prompt", "x"],
                            capture_output=True, text=True, timeout=120, env=ENV)
    peak = int(result.stderr.split("maxrss_kib")[1]) * 1024
    result.stderr = result.stderr.split("maxrss_kib")[0]
    print(f"peak RSS {peak / 2**20:.0f} MiB")
    assert_usage_error(result, "h.99999999", "at most 1024 layers")
    assert peak < 400 * 2**20                            # the interpreter and numgpt's imports: about 150 MiB


def test_tokenizer_json_as_a_fifo_is_refused_without_hanging(tmp_path):
    model = copy_dir(SMOLLM2, tmp_path / "m")
    (model / "tokenizer.json").unlink()
    os.mkfifo(model / "tokenizer.json")
    result = numgpt_cli("generate", "--model", model, "--prompt", "x", timeout=120)   # a hang fails here
    assert_usage_error(result, "tokenizer.json", "a FIFO (named pipe), not a regular file")


def test_a_fifo_config_json_is_refused_not_read(tmp_path):
    model = copy_dir(GPT2_TINY, tmp_path / "m")
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    result = numgpt_cli("generate", "--gpt2", model, "--prompt", "x", timeout=120)
    assert_usage_error(result, "config.json", "FIFO")


SWAP_PROBE = textwrap.dedent("""
    import os, stat, sys
    from numgpt.io import safe_io
    real_stat = os.stat
    def stat_before_the_swap(path, *args, **kwargs):      # the path was a regular file when it was checked
        result = real_stat(path, *args, **kwargs)
        return os.stat_result((stat.S_IFREG | 0o644,) + tuple(result)[1:])
    safe_io.os.stat = stat_before_the_swap
    try:
        safe_io.read_json(sys.argv[1])
    except safe_io.UnsafeFileError as error:
        print(error)
""")


def test_a_fifo_swapped_in_after_the_check_is_refused_on_the_open_descriptor(tmp_path):
    """The race: the path is checked, then replaced by a FIFO before the open. The open does not
    block (O_NONBLOCK) and fstat refuses what was opened; a blocking open would hang here."""
    fifo = tmp_path / "settings.json"
    os.mkfifo(fifo)
    result = subprocess.run([sys.executable, "-c", SWAP_PROBE, str(fifo)], capture_output=True, text=True,
                            timeout=60, env=ENV)
    print(result.stdout, result.stderr)
    assert result.returncode == 0 and "a FIFO (named pipe), not a regular file" in result.stdout


MEMORY_PROBE = textwrap.dedent("""
    import sys
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    import numgpt
    from numgpt.io import hf_weights
    from numgpt.io import safe_io
    before = status("VmRSS:")
    try:
        if sys.argv[1] == "header":
            safe_io.check_safetensors_header(sys.argv[2])
        else:
            hf_weights.tensor_index(sys.argv[2])
        print("accepted")
    except numgpt.NumgptError as error:
        print("refused", " ".join(str(error).split())[:300])
    print(status("VmHWM:") - before)
""")


def measure(kind, path):
    """(verdict line, bytes the peak memory rose by) of reading ``path`` in a fresh process."""
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, kind, str(path)], capture_output=True, text=True,
                            timeout=300, check=True)
    verdict, rise = result.stdout.strip().splitlines()
    return verdict, int(rise)


def header_of_empty_tensors(path, count, name_length):
    """A safetensors file whose header names ``count`` empty tensors with names of ``name_length`` characters."""
    entries = ",".join(f'"{f"t{i:07d}".ljust(name_length, "x")}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'
                       for i in range(count))
    text = ("{" + entries + "}").encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    return len(text)


def test_a_50mb_header_of_a_million_empty_tensors_is_refused_within_its_size(tmp_path):
    """Finding 7: a 76 MB header of 1.4 M empty tensors took 1.9 GB; they are now counted in the raw
    bytes, a chunk at a time, before any parser builds them."""
    size = header_of_empty_tensors(tmp_path / "h.safetensors", BIG_HEADER_BYTES // 60, 8)
    verdict, rise = measure("header", tmp_path / "h.safetensors")
    print(f"{size / 1e6:.0f} MB header: {verdict}; peak rose {rise / 1e6:.1f} MB = {rise / size:.2f}x")
    assert verdict.startswith("refused") and f"at most {schema.MAX_TENSORS}" in verdict
    assert rise <= HEADER_MEMORY_RATIO * size + MEMORY_SLACK


def test_a_50mb_index_of_a_million_entries_is_refused_within_its_size_in_one_short_message(tmp_path):
    """Finding 7: a 47 MB index of 1 M entries took 1.4 GB and made a message of a million lines."""
    directory = tmp_path / "m"
    directory.mkdir()
    weight_map = {f"model.layers.{i}.weight": f"model-{i % 7:05d}-of-00007.safetensors"
                  for i in range(BIG_HEADER_BYTES // 55)}
    text = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    (directory / "model.safetensors.index.json").write_bytes(text)
    verdict, rise = measure("index", directory)
    print(f"{len(text) / 1e6:.0f} MB index: {verdict}; peak rose {rise / 1e6:.1f} MB = {rise / len(text):.2f}x")
    assert verdict.startswith("refused") and f"limit of {schema.MAX_TENSORS} tensors" in verdict
    assert rise <= HEADER_MEMORY_RATIO * len(text) + MEMORY_SLACK


def test_an_accepted_header_at_the_tensor_limit_is_parsed_within_a_small_multiple_of_its_size(tmp_path):
    """The worst an accepted header does: as many tensors as numgpt reads, with long names (names are
    what the safetensors library copies most); 20 MB to keep the test short, the ratio is the same at 50."""
    count = 48_000
    size = header_of_empty_tensors(tmp_path / "h.safetensors", count, 380)
    verdict, rise = measure("header", tmp_path / "h.safetensors")
    print(f"{size / 1e6:.0f} MB header of {count} tensors: {verdict}; peak rose {rise / 1e6:.1f} MB "
          f"= {rise / size:.2f}x")
    assert verdict == "accepted"
    assert rise <= LIBRARY_PARSE_RATIO * size + MEMORY_SLACK


def test_error_messages_list_a_few_dozen_problems_and_count_the_rest(tmp_path):
    directory = copy_dir(SMOLLM2, tmp_path / "m")
    (directory / "model.safetensors").unlink()
    weight_map = {f"extra.{i}": "../outside.safetensors" for i in range(500)}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(NumgptError) as error:
        numgpt.load_pretrained(directory)
    lines = str(error.value).splitlines()
    print(lines[0], lines[-1], sep="\n")
    assert "500 problems" in lines[0]
    assert len(lines) == 1 + schema.MAX_LISTED_PROBLEMS + 1
    assert lines[-1].strip() == f"... and {500 - schema.MAX_LISTED_PROBLEMS} more"


# ---------------------------------------------------------------- the size check, directly

def test_the_memory_check_names_the_field_and_the_bytes_before_anything_is_allocated():
    cfg = dict(numgpt.GPT_CONFIG_124M, vocab_size=10_000_000)
    with pytest.raises(MemoryCheckError, match=r"some/config.json: .*vocab_size 10000000 makes its weights take "
                                               r"[\d,]+ bytes .* and 1,073,741,824 bytes \(1.0 GiB\) are available"):
        check_model_fits(cfg, "some/config.json", available=2**30)
    assert check_model_fits(numgpt.PRESETS["tiny"], available=2**30) < 2**30


# ---------------------------------------------------------------- property-based: nothing but NumgptErrors

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6)
    | st.sampled_from([0, -1, 1, 2**31, 2**63, 10**12, 0.5, 1e308, "", "x", [], {}]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5)
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SMOLLM2_CONFIG = json.loads((SMOLLM2 / "config.json").read_text())
GPT2_CONFIG = json.loads((GPT2_TINY / "config.json").read_text())
SMALL_MEMORY = 2**30


@FUZZ
@given(field=st.sampled_from(sorted(SMOLLM2_CONFIG) + ["rope_scaling", "rope_theta", "head_dim"]),
       value=JSON_VALUES, inner=st.sampled_from(["rope_theta", "rope_type", "factor", "low_freq_factor"]))
def test_fuzzed_llama_config_json_values_raise_only_numgpt_errors(field, value, inner):
    hf = dict(SMOLLM2_CONFIG, **{field: value})
    if field == "rope_parameters" and isinstance(value, dict):
        hf[field] = dict(value, rope_type="llama3", **{inner: value.get(inner)})
    try:
        check_model_fits(from_hf_config(hf, "config.json"), available=SMALL_MEMORY)
    except NumgptError:
        pass


@FUZZ
@given(field=st.sampled_from(sorted(GPT2_CONFIG)), value=JSON_VALUES)
def test_fuzzed_gpt2_config_json_values_raise_only_numgpt_errors(field, value):
    try:
        dims = gpt2_dims(dict(GPT2_CONFIG, **{field: value}), "config.json")
        check_model_fits(dict(numgpt.GPT_CONFIG_124M, **dims), available=SMALL_MEMORY)
    except NumgptError:
        pass


SETTINGS_FIELDS = [("top", name) for name in valid_settings()] + [("train", name) for name in cli_train.TRAIN_DEFAULTS]


@FUZZ
@given(where=st.sampled_from(SETTINGS_FIELDS), value=JSON_VALUES)
def test_fuzzed_settings_json_values_raise_only_numgpt_errors(tmp_path, where, value):
    document = valid_settings()
    part, name = where
    if part == "top":
        document[name] = value
    else:
        document["train"][name] = value
    (tmp_path / "settings.json").write_text(json.dumps(document))
    try:
        read = RunDirectory(tmp_path).read_settings()
        resolve_settings({}, cli_train.TRAIN_DEFAULTS, read["train"])
    except NumgptError:
        pass


@pytest.fixture(scope="module")
def committed_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("fuzz") / "ck", rng_state=numgpt.backend.get_rng_state(),
                                train_state=TrainState().to_dict())


CHECKPOINT_FIELDS = ([("config", name) for name in TINY_GPT] + [("group", name) for name in ("lr", "betas", "eps",
                     "weight_decay", "params")] + [("train_state", name) for name in TrainState().to_dict()]
                     + [("state", "rng_state"), ("state", "train_state"), ("top", "optimizer"), ("top", "tied")])


@FUZZ
@given(where=st.sampled_from(CHECKPOINT_FIELDS), value=JSON_VALUES)
def test_fuzzed_checkpoint_json_values_raise_only_numgpt_errors(committed_checkpoint, tmp_path, where, value):
    path = tmp_path / "ck"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(committed_checkpoint, path)
    part, name = where

    def edit(document):
        target = {"config": document["config"], "group": document["optimizer"]["param_groups"][0],
                  "train_state": document["state"]["train_state"], "state": document["state"], "top": document}[part]
        target[name] = value
    rewrite_checkpoint_json(path, edit)
    try:
        checkpoint = load_checkpoint(path)
        model = build_model(checkpoint)
        optimizer = AdamW(model.parameters())
        restore(checkpoint, model, optimizer)
        TrainState.from_dict(checkpoint.state.get("train_state"), path / "checkpoint.json")
    except NumgptError:
        pass
