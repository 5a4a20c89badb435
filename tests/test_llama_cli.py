"""The Llama/Qwen family through the numgpt command and numgpt's Python API, on the tiny
models transformers itself wrote (tests/reference/hf_llama/): continued pretraining with the
model's own tokenizer, generate / eval / export from the run, resume with the --init
directory gone, a sharded export read back bit for bit, the hub path against a loopback
stand-in (tests/hub_server.py), and bad input (exit 2, one line on stderr, no traceback).

The command runs as a real subprocess. The expected values come from transformers' fixtures
(logits, greedy continuations), from the ``tokenizers`` library reading the fixture's own
tokenizer.json, from the safetensors headers read with json, and from arithmetic; never from
the code under test.
"""
import functools
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_process import ENV, assert_usage_error
from hub_server import COMMIT, HubServer
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

import numgpt
from numgpt.autograd import no_grad

FIXTURES = Path(__file__).resolve().parent / "reference" / "hf_llama"
SMOLLM2 = FIXTURES / "smollm2_tiny"          # tied head, GQA, vocab 400, context 64, its own tokenizer
LLAMA = FIXTURES / "llama_tiny"              # its own tokenizer, eos 299
QWEN2 = FIXTURES / "qwen2_tiny"              # bfloat16, in 3 shards, untied
GPT2 = FIXTURES.parent / "hf_gpt2_tiny"
LOGITS_RTOL = 1e-4                           # float32 logits, relative to the largest |logit| (test_llama_reference)
GPT2_LOGITS_ATOL = 1e-5                      # as test_hf_reference
BATCH, CONTEXT = 2, 64                       # train's default batch; smollm2_tiny's whole context
TRAIN = ["--eval-iter", "1"]                 # evaluation every 5 steps (the default) on one batch
PROMPT = "Every effort moves you"
REPO = "numgpt-test/smollm2-tiny"
HUB_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


# ---------------------------------------------------------------- helpers

def cli(*args, env=None, prelude=None, check=None, timeout=120):
    """``python -m numgpt ARGS`` as a subprocess, its output read as UTF-8; with ``prelude``, that
    code runs first in the same process and then numgpt.cli.main(ARGS)."""
    env = dict(ENV if env is None else env, PYTHONIOENCODING="utf-8")
    main = "\nimport sys\nfrom numgpt.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    command = [sys.executable, "-m", "numgpt"] if prelude is None else [sys.executable, "-c", prelude + main]
    result = subprocess.run(command + [str(a) for a in args], capture_output=True, encoding="utf-8", env=env,
                            timeout=timeout, check=False)
    if check is not None:
        assert result.returncode == check, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def safetensors_header(path):
    """{name: {"dtype", "shape", "data_offsets"}} of a safetensors file, read with json alone."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def read_widened(path, name):
    """One tensor of a fixture file as float32: F32 as it is, BF16's 16 bits as a float32's high half."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(n))[name]
        begin, end = entry["data_offsets"]
        f.seek(8 + n + begin)
        raw = f.read(end - begin)
    if entry["dtype"] == "BF16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])
    assert entry["dtype"] == "F32"
    return np.frombuffer(raw, "<f4").reshape(entry["shape"])


def fixture_tensors(directory):
    """{name: (file, shape)} over a fixture's model.safetensors or its index's shards."""
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "model.safetensors"]
    return {name: (directory / file, tuple(entry["shape"]))
            for file in files for name, entry in safetensors_header(directory / file).items()}


def config(directory):
    return json.loads((directory / "config.json").read_text())


def logits_of(model, ids):
    with no_grad():
        return model(ids).data


def worst_relative(logits, expected):
    return float(np.abs(logits - expected).max() / np.abs(expected).max())


@functools.cache
def fixture_tokenizer(directory):
    """The fixture's tokenizer.json read by the tokenizers library itself."""
    return Tokenizer.from_file(str(directory / "tokenizer.json"))


def windows(n_tokens):
    """The seed's windows of CONTEXT tokens, stride CONTEXT, whose shifted targets fit: starts in
    range(0, n - CONTEXT, CONTEXT)."""
    return len(range(0, n_tokens - CONTEXT, CONTEXT))


def transformers_continuation(directory):
    """(prompt text, transformers' greedy continuation as text) of the fixture's generate_prompt:
    the prompt ids decoded, and the 13 ids of generate_ids decoded, by the tokenizers library."""
    ref = load_file(directory / "reference.safetensors")
    tokenizer = fixture_tokenizer(directory)
    prompt = ref["generate_prompt"][0].tolist()
    text = tokenizer.decode(prompt, skip_special_tokens=False)
    assert tokenizer.encode(text, add_special_tokens=False).ids == prompt, "the prompt must survive a round trip"
    return text, tokenizer.decode(ref["generate_ids"][0].tolist(), skip_special_tokens=False)


def latest_checkpoint(run):
    return max((run / "checkpoints").glob("step-*"))


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    """The issue's "done when": 20 steps of continued pretraining of smollm2_tiny on the bundled corpus."""
    run = tmp_path_factory.mktemp("smollm2") / "run"
    result = cli("train", "--init", SMOLLM2, "--max-steps", "20", "--out", run, *TRAIN, check=0)
    return run, result


# ---------------------------------------------------------------- 1. the "done when"

def test_continued_pretraining_tokenizes_with_the_models_own_tokenizer_and_lowers_the_val_loss(
        smollm2_run, verdict_text, tokenizer):
    run, result = smollm2_run
    print(result.stdout)
    settings = json.loads((run / "settings.json").read_text())
    assert Path(settings["train"]["init"]) == SMOLLM2 and Path(settings["train"]["tokenizer"]) == SMOLLM2
    assert settings["train"]["preset"] is None                  # the shape is --init's, not the default preset
    model = settings["model"]
    expected = config(SMOLLM2)
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_key_value_heads", "tie_word_embeddings",
                "eos_token_id", "max_position_embeddings"):
        assert model[key] == expected[key], key
    assert model["model_type"] == "llama" and settings["train"]["context_length"] == CONTEXT
    for name in ("tokenizer.json", "tokenizer_config.json"):          # the run keeps the model's tokenizer
        assert (run / "tokenizer" / name).read_bytes() == (SMOLLM2 / name).read_bytes(), name

    # The training split tokenized by tokenizer.json (the tokenizers library) gives this many steps per
    # epoch; GPT-2's tokenizer would give another number, so the epochs in metrics.jsonl tell them apart.
    train_text = verdict_text[:int(0.9 * len(verdict_text))]
    steps_per_epoch = windows(len(fixture_tokenizer(SMOLLM2).encode(train_text).ids)) // BATCH
    assert steps_per_epoch != windows(len(tokenizer.encode(train_text))) // BATCH
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 5, 10, 15]
    for r in records:
        assert r["epoch"] == pytest.approx((r["step"] + 1) / steps_per_epoch, rel=1e-12)
        assert r["tokens_seen"] == (r["step"] + 1) * BATCH * CONTEXT
    print(f"val loss {records[0]['val_loss']:.4f} -> {records[-1]['val_loss']:.4f}")
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert latest_checkpoint(run).name == "step-00000019"


def test_generate_and_eval_from_the_run(smollm2_run, verdict_path, verdict_text):
    run, _ = smollm2_run
    by_model = cli("generate", "--model", run, "--prompt", PROMPT, "--max-new-tokens", "5", check=0)
    print(by_model.stdout)
    assert by_model.stdout.startswith(PROMPT) and len(by_model.stdout.rstrip("\n")) > len(PROMPT)
    by_checkpoint = cli("generate", "--checkpoint", run, "--prompt", PROMPT, "--max-new-tokens", "5", check=0)
    assert by_checkpoint.stdout == by_model.stdout                        # greedy, the same weights

    ev = cli("eval", "--model", run, "--data", verdict_path, check=0)
    print(ev.stdout)
    words = ev.stdout.replace(",", "").split()
    assert words[0] == "loss" and words[2] == "perplexity"
    loss, ppl = float(words[1]), float(words[3])
    assert math.isfinite(loss) and loss > 0 and abs(ppl - math.exp(loss)) / ppl < 1e-3
    batches = math.ceil(windows(len(fixture_tokenizer(SMOLLM2).encode(verdict_text).ids)) / BATCH)
    assert f"({batches} batches of {CONTEXT} tokens)" in ev.stdout


def test_generate_from_the_model_directory_continues_as_transformers():
    prompt, expected = transformers_continuation(SMOLLM2)
    result = cli("generate", "--model", SMOLLM2, "--prompt", prompt, "--max-new-tokens", "8", "--no-eos", check=0)
    assert result.stdout == expected + "\n"


# ---------------------------------------------------------------- 2. resume

def test_resume_needs_neither_the_init_directory_nor_flags_and_is_exact(tmp_path):
    init = shutil.copytree(SMOLLM2, tmp_path / "init")
    run = tmp_path / "run"
    cli("train", "--init", init, "--max-steps", "20", "--out", run, *TRAIN, check=0)
    init.rename(tmp_path / "gone")                                         # the run keeps its own tokenizer
    resumed = cli("train", "--resume", "--out", run, "--max-steps", "25", check=0)
    print(resumed.stdout, resumed.stderr)
    assert f"Resuming from {run / 'checkpoints' / 'step-00000019'} (step 19 done, step 20 next)" in resumed.stdout
    assert latest_checkpoint(run).name == "step-00000024"
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 5, 10, 15,
                                                                                                       20]
    assert (run / "tokenizer" / "tokenizer.json").read_bytes() == (SMOLLM2 / "tokenizer.json").read_bytes()

    whole = tmp_path / "whole"                                             # the same 25 steps in one go
    cli("train", "--init", SMOLLM2, "--max-steps", "25", "--out", whole, *TRAIN, check=0)
    a = load_file(latest_checkpoint(whole) / "model.safetensors")
    b = load_file(latest_checkpoint(run) / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name


# ---------------------------------------------------------------- 3. export

def test_a_sharded_export_of_qwen2_reads_back_bit_for_bit(tmp_path):
    out = tmp_path / "export"
    max_bytes = 10_000
    cli("export", "--model", QWEN2, "--out", out, "--max-shard-size", "10KB", check=0)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) >= 2 and not (out / "model.safetensors").exists()
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    expected = fixture_tensors(QWEN2)
    headers = {shard: safetensors_header(out / shard) for shard in shards}
    assert index["weight_map"] == {name: shard for shard, header in headers.items() for name in header}
    assert set(index["weight_map"]) == set(expected)                       # transformers' names, no more, no less
    for shard, header in headers.items():
        sizes = [entry["data_offsets"][1] - entry["data_offsets"][0] for entry in header.values()]
        assert sum(sizes) <= max_bytes or len(sizes) == 1, shard           # a larger tensor alone in a shard
        for name, entry in header.items():
            assert entry["dtype"] == "F32" and tuple(entry["shape"]) == expected[name][1], name
    # the float32 export of the widened bfloat16 weights holds exactly the fixture's values
    exported = {}
    for shard in shards:
        exported.update(load_file(out / shard))
    for name, (file, _) in expected.items():
        assert np.array_equal(exported[name], read_widened(file, name)), name
    written, original = config(out), config(QWEN2)
    for key in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings"):
        assert written[key] == original[key], key

    ref = load_file(QWEN2 / "reference.safetensors")
    reloaded = logits_of(numgpt.load_pretrained(out), ref["input_ids"])
    assert worst_relative(reloaded, ref["logits"]) <= LOGITS_RTOL
    assert np.array_equal(reloaded, logits_of(numgpt.load_pretrained(QWEN2), ref["input_ids"]))


def test_exporting_a_tied_run_writes_no_lm_head_and_copies_the_tokenizer(smollm2_run, tmp_path):
    run, _ = smollm2_run
    out = tmp_path / "export"
    cli("export", "--model", run, "--out", out, check=0)
    header = safetensors_header(out / "model.safetensors")
    assert "lm_head.weight" not in header
    assert set(header) == set(fixture_tensors(SMOLLM2))                   # what transformers wrote, tied
    assert config(out)["tie_word_embeddings"] is True
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (SMOLLM2 / name).read_bytes(), name
    trained = load_file(latest_checkpoint(run) / "model.safetensors")
    exported = load_file(out / "model.safetensors")
    assert exported.keys() == trained.keys()
    for name in trained:
        assert np.array_equal(exported[name], trained[name]), name


# ---------------------------------------------------------------- 4. the Python API

@pytest.mark.parametrize("name", ["llama_tiny", "smollm2_tiny", "qwen3_tiny", "qwen2_tiny"])
def test_load_pretrained_of_a_model_directory_follows_its_model_type(name):
    model = numgpt.load_pretrained(FIXTURES / name)
    assert isinstance(model, numgpt.LlamaForCausalLM) and not model.training
    assert model.cfg["model_type"] == config(FIXTURES / name)["model_type"]
    ref = load_file(FIXTURES / name / "reference.safetensors")
    assert worst_relative(logits_of(model, ref["input_ids"]), ref["logits"]) <= LOGITS_RTOL


def test_load_pretrained_of_a_gpt2_directory_is_gpt2():
    model = numgpt.load_pretrained(GPT2)
    assert isinstance(model, numgpt.GPTModel)
    ref = load_file(GPT2 / "reference.safetensors")
    assert np.abs(logits_of(model, ref["input_ids"]) - ref["logits"]).max() <= GPT2_LOGITS_ATOL


def test_load_pretrained_of_a_run_and_of_one_checkpoint(smollm2_run):
    run, _ = smollm2_run
    trained = load_file(latest_checkpoint(run) / "model.safetensors")
    for source in (run, latest_checkpoint(run)):
        model = numgpt.load_pretrained(source)
        assert isinstance(model, numgpt.LlamaForCausalLM) and not model.training
        params = dict(model.named_parameters())
        assert params.keys() == trained.keys()
        for name, value in trained.items():
            assert np.array_equal(params[name].data, value), (source, name)


def test_get_tokenizer(smollm2_run, tmp_path):
    run, _ = smollm2_run
    for directory in (SMOLLM2, LLAMA):
        reference = fixture_tokenizer(directory)
        hf = numgpt.get_tokenizer(directory)
        assert hf.eot_token == config(directory)["eos_token_id"]          # 0 and 299
        assert hf.n_vocab == reference.get_vocab_size(with_added_tokens=True)
        assert hf.encode(PROMPT) == reference.encode(PROMPT).ids
    from_run = numgpt.get_tokenizer(run)
    assert from_run.directory == run / "tokenizer" and from_run.eot_token == 0
    assert from_run.encode(PROMPT) == fixture_tokenizer(SMOLLM2).encode(PROMPT).ids

    for gpt2 in (numgpt.get_tokenizer(), numgpt.get_tokenizer(GPT2)):     # GPT-2's own BPE, 50257 tokens
        assert gpt2.n_vocab == 50257 and gpt2.eot_token == 50256
        assert gpt2.encode("Hello world") == [15496, 995]

    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a model")
    for source in ("no-such-model", str(a_file)):
        for function in (numgpt.get_tokenizer, numgpt.load_pretrained):
            with pytest.raises(numgpt.NumgptError, match=re.escape(source)):
                function(source)


# ---------------------------------------------------------------- 5, 6. what train refuses

def test_a_model_too_large_for_the_memory_is_refused_before_it_is_built(tmp_path):
    """Llama 3.2 1B (its published config.json) on a machine whose /proc/meminfo says 8 GiB are
    available: the train process reads this meminfo file instead of the real one."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16777216 kB\nMemFree:         1048576 kB\nMemAvailable:    8388608 kB\n")
    available = 8388608 * 1024
    from numgpt.cli.train import _memory_available
    assert _memory_available(meminfo) == available
    # Llama-3.2-1B: vocab 128256, hidden 2048, 16 layers, 32 heads and 8 kv heads of 64, MLP 8192, tied head
    V, C, L, HS, F = 128256, 2048, 16, 64, 8192
    per_layer = C * 32 * HS + 2 * C * 8 * HS + 32 * HS * C + 3 * C * F + 2 * C
    parameters = V * C + L * per_layer + C
    assert parameters == 1_235_814_400
    state = parameters * 4 * 4                          # float32 weights, gradients, AdamW's two moments
    run = tmp_path / "run"
    result = cli("train", "--preset", "llama-3.2-1b", "--tokenizer", LLAMA, "--out", run,
                 prelude=f"import functools, numgpt.cli.train\nnumgpt.cli.train._memory_available = "
                         f"functools.partial(numgpt.cli.train._memory_available, {str(meminfo)!r})")
    assert_usage_error(result, f"{state:,} bytes", f"{available:,} bytes", "SmolLM2")
    assert not (run / "tokenizer").exists() and not (run / "settings.json").exists()


def test_a_llama_preset_needs_a_tokenizer_and_a_llama_init_takes_no_dropout(tmp_path):
    assert_usage_error(cli("train", "--preset", "smollm2-135m", "--out", tmp_path / "a"), "--tokenizer")
    assert_usage_error(cli("train", "--init", SMOLLM2, "--drop-rate", "0.1", "--out", tmp_path / "b"),
                       "--drop-rate")


# ---------------------------------------------------------------- 7. the hub

# Runs before numgpt in the subprocess: connections to 127.0.0.1 only (none with TEST_SOCKETS=none),
# every address tried appended to $TEST_SOCKET_LOG (as tests/test_hub.py guards its own process).
SOCKET_GUARD = """
import os, socket
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
def _log(what):
    with open(os.environ["TEST_SOCKET_LOG"], "a") as f:
        f.write(repr(what) + "\\n")
def connect(sock, address):
    _log(address)
    if os.environ["TEST_SOCKETS"] == "none" or not (isinstance(address, tuple) and address[0] == "127.0.0.1"):
        raise ConnectionRefusedError(f"test socket guard: no connection to {address}")
    return _connect(sock, address)
def getaddrinfo(host, *args, **kwargs):
    if host not in ("127.0.0.1", "localhost"):
        _log(host)
        raise socket.gaierror(f"test socket guard: no name lookup of {host}")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect = connect
socket.getaddrinfo = getaddrinfo
"""


def hub_env(tmp_path, **settings):
    """The environment of a subprocess with a Hugging Face home of the test's own, no HF_* setting and no
    proxy from outside."""
    env = {k: v for k, v in ENV.items() if not k.startswith(("HF_", "TRANSFORMERS_")) and k != "NUMGPT_HOME"
           and not k.lower().endswith("_proxy")}
    return dict(env, HF_HOME=str(tmp_path / "hf_home"), TEST_SOCKET_LOG=str(tmp_path / "sockets.log"), **settings)


def test_download_then_train_and_generate_from_the_hf_cache(tmp_path):
    files = {(REPO, name): (SMOLLM2 / name).read_bytes() for name in HUB_FILES}
    files[REPO, "pytorch_model.bin"] = b"\x80\x02}q\x00."                  # never fetched
    files[REPO, "README.md"] = b"# tiny\n"
    snapshot = tmp_path / "hf_home" / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    with HubServer(files) as server:
        env = hub_env(tmp_path, HF_ENDPOINT=server.url, TEST_SOCKETS="loopback")
        download = cli("download", REPO, env=env, prelude=SOCKET_GUARD, check=0)
        assert download.stdout.strip() == f"{REPO} in {snapshot}"
        assert sorted(p.name for p in snapshot.iterdir()) == sorted(HUB_FILES)
        for name in HUB_FILES:
            assert (snapshot / name).read_bytes() == (SMOLLM2 / name).read_bytes(), name
        fetched = [path for _, path, _ in server.requests if "/resolve/" in path]
        assert not [path for path in fetched if path.endswith((".bin", ".md"))]

        before = len(server.requests)                                      # online, from the cache: nothing fetched
        run = tmp_path / "run"
        cli("train", "--init", REPO, "--max-steps", "2", "--out", run, *TRAIN, env=env, prelude=SOCKET_GUARD, check=0)
        assert not [path for _, path, _ in server.requests[before:] if "/resolve/" in path]
        assert (run / "tokenizer" / "tokenizer.json").read_bytes() == (SMOLLM2 / "tokenizer.json").read_bytes()
        assert latest_checkpoint(run).name == "step-00000001"
    connections = (tmp_path / "sockets.log").read_text().splitlines()
    assert connections and all(line.startswith("('127.0.0.1', ") for line in connections)

    (tmp_path / "sockets.log").unlink()                                    # the hub is gone; offline, no socket
    prompt, expected = transformers_continuation(SMOLLM2)
    offline = hub_env(tmp_path, HF_HUB_OFFLINE="1", TEST_SOCKETS="none")
    result = cli("generate", "--model", REPO, "--prompt", prompt, "--max-new-tokens", "8", "--no-eos", env=offline,
                 prelude=SOCKET_GUARD, check=0)
    assert result.stdout == expected + "\n"
    assert not (tmp_path / "sockets.log").exists()


# ---------------------------------------------------------------- 8. directories numgpt cannot load

def test_an_unsupported_model_type_and_a_missing_tensor_are_one_line_each(tmp_path):
    mistral = shutil.copytree(SMOLLM2, tmp_path / "mistral")
    (mistral / "config.json").write_text(json.dumps(dict(config(SMOLLM2), model_type="mistral")))
    result = cli("train", "--init", mistral, "--max-steps", "1", "--out", tmp_path / "run")
    assert_usage_error(result, str(mistral / "config.json"), "'mistral' is not supported", "llama",
                      "qwen2", "qwen3")

    partial = shutil.copytree(SMOLLM2, tmp_path / "partial")
    tensors = load_file(SMOLLM2 / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})
    result = cli("generate", "--model", partial, "--prompt", PROMPT)
    assert_usage_error(result, str(partial), "missing: model.layers.1.mlp.down_proj.weight")
