"""Reference fixtures for the Llama/Qwen decoder family, written by Hugging Face transformers itself.

Needs torch and transformers, so it runs in the reference venv, never in numgpt's own environment,
and as a script path (not with the repo root on sys.path: transformers' `import kernels` would find
numgpt's kernels/ folder):

    /work/refenv/bin/python tests/reference/make_hf_llama_reference.py

Default mode writes hf_llama/<name>/ next to this file for four tiny random models, each what
`save_pretrained(dir, safe_serialization=True)` wrote (config.json, generation_config.json, the
weights) plus reference.safetensors:
    llama_tiny    LlamaForCausalLM, plain MHA, untied head, Llama 3 rope scaling (all three bands)
    smollm2_tiny  LlamaForCausalLM shaped like SmolLM2: GQA, tied head, no rope scaling
    qwen3_tiny    Qwen3ForCausalLM: q/k RMSNorm, head_dim 16 with hidden 32 and 4 heads, GQA, tied
    qwen2_tiny    Qwen2ForCausalLM: q/k/v biases, GQA, untied, saved in bfloat16 in >= 3 shards
reference.safetensors holds, for a (B, T) = (2, 9) batch:
    input_ids, target_ids (B, T) int64     random ids, one repeated; targets are the next tokens, one -100
    logits (B, T, V) float32               eval mode
    loss () float32                        mean cross-entropy over the non-ignored targets
    grad.<name> float32                    d loss / d parameter, Hugging Face state_dict names
                                           (tied head: model.embed_tokens.weight holds both uses)
    generate_prompt (1, 5), generate_ids (1, 13) int64              greedy, 8 new tokens, no eos stop
    generate_prompt_batch (2, 5), generate_ids_batch (2, 13) int64  the same for two rows, no padding
    metadata {"fixture_version", "transformers", "torch", "model_class"}
smollm2_tiny and llama_tiny also hold a byte-level BPE tokenizer trained on numgpt's
resources/the-verdict.txt, saved by transformers (tokenizer.json, tokenizer_config.json), and
tokenizer_reference.json: transformers' ids and decodes of TOKENIZER_TEXTS.

qwen2_tiny's references come from loading its saved bfloat16 directory back as float32 (the
widening is exact), so a reader of the same bfloat16 files must match them.

Before it writes anything the script repeats every float computation in float64 (model.double())
and refuses to write if a float32 tensor differs by more than FLOAT32_FLOOR_MAX relative to that
tensor's largest magnitude (gradients: per tensor); it also requires greedy generation to pick
each token by a margin of at least GREEDY_MARGIN_MIN. If either fails, choose another seed.
Re-running gives byte-identical files.

Reverse mode, on a Hugging Face directory that numgpt exported with a reference.safetensors beside
it (input_ids and numgpt's logits for them):

    /work/refenv/bin/python tests/reference/make_hf_llama_reference.py --check-export DIR

loads DIR with AutoModelForCausalLM.from_pretrained(DIR, dtype=float32), prints the loading report,
whether the head's tying matches config.json and the worst logits difference, and exits 1 on any
loading problem, a tying mismatch, or a difference above CHECK_RTOL of the largest |logit|.

Bump FIXTURE_VERSION whenever the content or the layout changes, and set the same number in the
tests that read these files (tests/test_llama_fixtures.py, tests/test_hf_tokenizer.py, and the
model and loading tests).
"""
import argparse
import copy
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy
import tokenizers
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

FIXTURE_VERSION = 1
B, T = 2, 9
PROMPT_T, NEW_TOKENS = 5, 8
IGNORE_INDEX = -100
# The float32 results must sit this close to a float64 run of the same model, relative to the
# tensor's largest magnitude: a quarter of the tests' tightest tolerance (1e-5).
FLOAT32_FLOOR_MAX = 2.5e-6
# Greedy generation must pick each token by at least this logit margin over the runner-up, so
# that float32 round-off (about 1e-6 here) cannot flip a choice.
GREEDY_MARGIN_MIN = 1e-3
CHECK_RTOL = 1e-4
MAX_FIXTURE_BYTES = 2 * 1024 * 1024 * 3 // 4   # all four directories together

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "hf_llama"
VERDICT = HERE.parents[1] / "numgpt" / "resources" / "the-verdict.txt"

# ---------------------------------------------------------------- tokenizers

# Llama 3's pre-tokenizer split: contractions, letter runs with one leading non-letter, digit runs
# of at most three, symbol runs, newline runs, other whitespace.
LLAMA3_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TOKENIZER_TEXTS = [
    "Hello, world!",
    "I HAD always thought Jack Gisburn rather a cheap genius",
    "  two leading spaces",
    "trailing spaces   ",
    "whitespace    runs     of\u00a0spaces",
    "tabs\tand\nnewlines\r\n\n\n\tindent",
    "digits 1234567 and 3.14159, 42",
    "don't you'll I'M WE'VE",
    "héllo wörld — naïve café",
    "日本語のテキスト",
    "emoji 🙂🚀👍🏽",
    "x<|endoftext|>y <|endoftext|>",
    "<|im_start|>user\nHi<|im_end|>",
    "<|begin_of_text|>Once upon<|end_of_text|>",
    "<|begin_of_text|> and <|endoftext|> as text",
    "",
    " ",
    "\n",
]


def _byte_level_bpe(text, vocab_size, special_tokens, split_pattern=None):
    """A byte-level BPE tokenizer trained on ``text``; the special tokens come first (ids 0, 1, ...)."""
    tok = Tokenizer(models.BPE())
    if split_pattern is None:   # GPT-2 / SmolLM2: ByteLevel's own GPT-2 regex
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:                       # Llama 3: a Split regex, then bytes -> printable characters only
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def smollm2_tokenizer(text):
    """Like SmolLM2's: GPT-2 byte-level BPE, <|endoftext|> = 0 is bos and eos, no bos added."""
    tok = _byte_level_bpe(text, 400, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def llama_tokenizer(text):
    """Like Llama 3's: the Llama 3 split regex, byte-level BPE, the special tokens after the
    trained vocabulary, and a post-processor that prepends <|begin_of_text|>."""
    tok = _byte_level_bpe(text, 298, [], LLAMA3_SPLIT_PATTERN)
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    bos_id = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos_id)])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")


def tokenizer_reference(directory):
    """transformers' own ids and decodes of TOKENIZER_TEXTS, for the tokenizer saved in ``directory``."""
    tok = AutoTokenizer.from_pretrained(directory)
    cases = []
    for text in TOKENIZER_TEXTS:
        ids = tok(text)["input_ids"]
        ids_no_special = tok(text, add_special_tokens=False)["input_ids"]
        cases.append({
            "text": text,
            "ids": ids,
            "ids_no_special": ids_no_special,
            # every special token's text read as ordinary text
            "ids_split_special": tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"],
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_no_special": tok.decode(ids_no_special, skip_special_tokens=False),
        })
    return {"fixture_version": FIXTURE_VERSION, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "tokenizer_class": type(tok).__name__,
            "n_vocab": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "special_tokens": sorted(tok.all_special_tokens), "cases": cases}


# ---------------------------------------------------------------- models

# Llama 3's rope scaling, its context shrunk from 8192 to 256 so that for head_dim 8 and theta 5e5
# the four wavelengths (6.3, 167, 4443, 118140) fall in all three bands: < 256/4 kept (high
# frequency), > 256/1 divided by the factor (low), in between interpolated (medium).
# (With original_max_position_embeddings 16 the high band is empty: its bound 16/4 = 4 is below
# the shortest wavelength, 2*pi, for any theta and head_dim.)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256}


@dataclass
class Spec:
    name: str
    model_class: type
    config_class: type
    seed: int
    config: dict
    tokenizer: object = None          # text -> PreTrainedTokenizerFast, or None (random ids)
    vocab_size: int = 96              # without a tokenizer
    save_dtype: torch.dtype = torch.float32
    max_shard_size: str = None        # None: one model.safetensors
    min_shards: int = 1
    token_ids: dict = field(default_factory=dict)   # config field -> special token name


SPECS = [
    Spec("llama_tiny", LlamaForCausalLM, LlamaConfig, seed=1, tokenizer=llama_tokenizer,
         token_ids={"bos_token_id": "<|begin_of_text|>", "eos_token_id": "<|end_of_text|>"},
         config={"hidden_size": 32, "intermediate_size": 80, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 4, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
                 "rope_parameters": LLAMA3_ROPE, "max_position_embeddings": 2048}),
    Spec("smollm2_tiny", LlamaForCausalLM, LlamaConfig, seed=2, tokenizer=smollm2_tokenizer,
         token_ids={"bos_token_id": "<|endoftext|>", "eos_token_id": "<|endoftext|>"},
         config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
                 "max_position_embeddings": 64}),
    Spec("qwen3_tiny", Qwen3ForCausalLM, Qwen3Config, seed=3,
         config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
                 "attention_bias": False, "max_position_embeddings": 64}),
    Spec("qwen2_tiny", Qwen2ForCausalLM, Qwen2Config, seed=4, save_dtype=torch.bfloat16,
         max_shard_size="20KB", min_shards=3,
         config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "tie_word_embeddings": False, "rms_norm_eps": 1e-6,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
                 "max_position_embeddings": 64}),
]
SAFETENSORS_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16"}
COMMON_CONFIG = {"initializer_range": 0.2, "attention_dropout": 0.0, "pad_token_id": None, "use_cache": True}


def check_llama3_bands(config):
    """Print the rope wavelengths against the llama3 band limits; all three bands must occur."""
    rope = config.rope_parameters
    head_dim = config.head_dim
    inv_freq = rope["rope_theta"] ** (-numpy.arange(0, head_dim, 2) / head_dim)  # (head_dim/2,)
    wavelengths = 2 * math.pi / inv_freq
    low = rope["original_max_position_embeddings"] / rope["low_freq_factor"]    # longer: low frequency
    high = rope["original_max_position_embeddings"] / rope["high_freq_factor"]  # shorter: high frequency
    bands = ["high" if w < high else "low" if w > low else "medium" for w in wavelengths]
    print(f"  llama3 rope: wavelengths {numpy.round(wavelengths, 1).tolist()} vs "
          f"high-frequency limit {high:g}, low-frequency limit {low:g}: {bands}")
    assert set(bands) == {"high", "medium", "low"}, f"llama3 rope bands {bands}: all three must occur"


def make_model(spec, vocab_size, token_ids):
    """Seeded float32 model in eval mode, RMSNorm weights moved off 1 and biases off 0."""
    config = spec.config_class(vocab_size=vocab_size, **COMMON_CONFIG, **spec.config, **token_ids)
    config._attn_implementation = "eager"
    torch.manual_seed(spec.seed)
    model = spec.model_class(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):   # input/post_attention_layernorm, model.norm, q_norm, k_norm
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):       # Qwen2's q/k/v biases, zeros at init
                p.copy_(0.2 * torch.randn_like(p))
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied == spec.config["tie_word_embeddings"], f"{spec.name}: head tied {tied}"
    return model


def load_saved(directory):
    """The saved directory back as a float32 eval-mode model (bfloat16 weights widen exactly)."""
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()


def forward_backward(model, input_ids, target_ids):
    """{logits, loss, grad.<name>} as NumPy arrays in the model's dtype."""
    model.zero_grad(set_to_none=True)
    logits = model(torch.from_numpy(input_ids)).logits  # (B, T) -> (B, T, V)
    loss = torch.nn.functional.cross_entropy(  # (B*T, V), (B*T,) -> ()
        logits.flatten(0, 1), torch.from_numpy(target_ids).flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    out = {"logits": logits.detach().numpy(), "loss": loss.detach().numpy()}
    for name, p in model.named_parameters():  # a tied parameter appears once, under its first name
        out[f"grad.{name}"] = p.grad.numpy()
    return out


def greedy(model, prompt):
    """transformers' greedy generate, NEW_TOKENS steps with no eos stop, checked against a plain
    argmax loop; returns (ids, the smallest top-1 minus top-2 logit margin of any choice)."""
    no_stop = GenerationConfig(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                               eos_token_id=None, pad_token_id=None, bos_token_id=None)
    with torch.no_grad():
        prompt = torch.from_numpy(prompt)
        ids = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=no_stop).numpy()
        loop, margin = prompt, math.inf
        for _ in range(NEW_TOKENS):
            last = model(loop).logits[:, -1, :]  # (B, V)
            top2 = torch.topk(last, 2, dim=-1).values
            margin = min(margin, float((top2[:, 0] - top2[:, 1]).min()))
            loop = torch.cat([loop, last.argmax(dim=-1, keepdim=True)], dim=1)
    assert ids.shape == (prompt.shape[0], PROMPT_T + NEW_TOKENS), f"generate stopped early: {ids.shape}"
    assert numpy.array_equal(ids, loop.numpy()), "generate differs from the argmax loop"
    return ids, margin


def make_batch(seed, vocab_size):
    """input_ids, target_ids (B, T) and the prompts (1, PROMPT_T), (B, PROMPT_T), all int64."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (B, T + 1), generator=gen, dtype=torch.int64).numpy()
    tokens[1, 6] = tokens[0, 2]  # a repeated token
    input_ids, target_ids = tokens[:, :-1].copy(), tokens[:, 1:].copy()
    target_ids[1, 3] = IGNORE_INDEX
    prompts = torch.randint(0, vocab_size, (B, PROMPT_T), generator=gen, dtype=torch.int64).numpy()
    return input_ids, target_ids, prompts[:1].copy(), prompts


def float32_floor(name, got, want):
    """max |float32 - float64| / max |float64|, with a refusal above FLOAT32_FLOOR_MAX."""
    scale = float(numpy.abs(want).max())
    floor = float(numpy.abs(got.astype(numpy.float64) - want).max()) / max(scale, 1e-30)
    if floor > FLOAT32_FLOOR_MAX:
        raise SystemExit(f"ill-conditioned fixture: {name} float32 vs float64 differ by {floor:.2e} relative "
                         f"(> {FLOAT32_FLOOR_MAX:.1e}); choose another seed")
    return floor


def write_fixture(spec, text):
    print(f"{spec.name}: {spec.model_class.__name__}")
    directory = OUT_DIR / spec.name
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():   # a stale shard must not survive a re-run
        old.unlink()
    token_ids = {}
    if spec.tokenizer is not None:
        tok = spec.tokenizer(text)
        tok.save_pretrained(directory)
        vocab_size = len(tok)
        token_ids = {key: tok.convert_tokens_to_ids(token) for key, token in spec.token_ids.items()}
    else:
        vocab_size = spec.vocab_size
    model = make_model(spec, vocab_size, token_ids)
    if spec.config["rope_parameters"]["rope_type"] == "llama3":
        check_llama3_bands(model.config)
    model.to(spec.save_dtype).save_pretrained(directory, safe_serialization=True,
                                              max_shard_size=spec.max_shard_size or "5GB")
    shards = sorted(p.name for p in directory.glob("model*.safetensors"))
    assert len(shards) >= spec.min_shards, f"{spec.name}: {len(shards)} shards, want >= {spec.min_shards}"
    if spec.min_shards > 1:
        assert (directory / "model.safetensors.index.json").is_file()
    for shard in shards:
        with safe_open(str(directory / shard), framework="pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
        assert dtypes == {SAFETENSORS_DTYPE[spec.save_dtype]}, f"{shard}: {dtypes}"

    # The references come from the saved files read back (for qwen2_tiny: bfloat16 widened to float32).
    model = load_saved(directory)
    assert type(model) is spec.model_class, type(model)
    input_ids, target_ids, prompt, prompt_batch = make_batch(spec.seed, vocab_size)
    tensors = forward_backward(model, input_ids, target_ids)
    reference64 = forward_backward(copy.deepcopy(model).double(), input_ids, target_ids)
    floors = {key: float32_floor(key, tensors[key], reference64[key]) for key in tensors}
    assert all(tensors[key].dtype == numpy.float32 for key in tensors)

    generated = {}
    for key, p in (("", prompt), ("_batch", prompt_batch)):
        ids, margin = greedy(model, p)
        ids64, _ = greedy(copy.deepcopy(model).double(), p)
        assert numpy.array_equal(ids, ids64), f"greedy{key}: float32 and float64 choose differently"
        if margin < GREEDY_MARGIN_MIN:
            raise SystemExit(f"{spec.name}: greedy{key} picks a token by a margin of {margin:.1e} "
                             f"(< {GREEDY_MARGIN_MIN:.0e}); choose another seed")
        generated[f"generate_prompt{key}"], generated[f"generate_ids{key}"] = p, ids
        print(f"  greedy{key}: {ids.tolist()}, smallest margin {margin:.3f}")

    metadata = {"fixture_version": str(FIXTURE_VERSION), "transformers": transformers.__version__,
                "torch": torch.__version__, "model_class": spec.model_class.__name__}
    arrays = {"input_ids": input_ids, "target_ids": target_ids, **generated, **tensors}
    save_file({k: numpy.array(v, order="C") for k, v in arrays.items()},  # (ascontiguousarray would make loss (1,))
              str(directory / "reference.safetensors"), metadata=metadata)
    if spec.tokenizer is not None:
        document = tokenizer_reference(directory)
        assert document["n_vocab"] == vocab_size
        (directory / "tokenizer_reference.json").write_text(
            json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    worst = max(floors, key=floors.get)
    print(f"  vocab {vocab_size}, loss {float(tensors['loss']):.4f}, "
          f"max |logit| {numpy.abs(tensors['logits']).max():.2f}, "
          f"{sum(k.startswith('grad.') for k in tensors)} gradients; worst float32 floor {floors[worst]:.1e} ({worst})")
    print(f"  files: {', '.join(f'{p.name} {p.stat().st_size / 1024:.1f} KiB' for p in sorted(directory.iterdir()))}")


def content_bytes(path):
    """A file's bytes, a safetensors header re-serialised with sorted keys: safetensors writes the
    metadata keys in a varying order, so only the content can repeat byte for byte."""
    data = path.read_bytes()
    if path.suffix != ".safetensors":
        return data
    n = int.from_bytes(data[:8], "little")   # the header: 8-byte length, then JSON
    return json.dumps(json.loads(data[8:8 + n]), sort_keys=True).encode() + data[8 + n:]


def write_all():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    text = VERDICT.read_text(encoding="utf-8")
    for spec in SPECS:
        write_fixture(spec, text)
    files = sorted(p for p in OUT_DIR.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.relative_to(OUT_DIR).as_posix().encode() + b"\0" + content_bytes(p))
    print(f"fixture_version {FIXTURE_VERSION}, transformers {transformers.__version__}, torch {torch.__version__}, "
          f"tokenizers {tokenizers.__version__}: {len(files)} files, {size / 1024:.1f} KiB, "
          f"sha256 {digest.hexdigest()[:16]}")
    if size > MAX_FIXTURE_BYTES:
        raise SystemExit(f"fixtures are {size} bytes, more than {MAX_FIXTURE_BYTES}")


# ---------------------------------------------------------------- --check-export


def file_tensor(directory, key):
    """One tensor of a Hugging Face directory, single-file or sharded, as NumPy (None if absent)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shard = json.loads(index.read_text())["weight_map"].get(key)
        if shard is None:
            return None
        path = directory / shard
    else:
        path = directory / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key).float().numpy() if key in f.keys() else None  # noqa: SIM118


def check_export(directory):
    """0 if transformers loads numgpt's export cleanly and agrees with numgpt's logits."""
    torch.set_num_threads(1)
    directory = Path(directory)
    ref = load_file(str(directory / "reference.safetensors"))
    config = json.loads((directory / "config.json").read_text())
    model, info = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager",
                                                       output_loading_info=True)
    model = model.eval()
    print(f"{type(model).__name__} from {directory}")
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        found = sorted(map(str, info.get(kind, ())))
        print(f"{kind}: {found}")
        if found:
            problems.append(f"{kind} {found}")
    want_tied = config.get("tie_word_embeddings", False)
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    tied = head.data_ptr() == embed.data_ptr()
    print(f"tie_word_embeddings {want_tied}; lm_head shares embed_tokens: {tied}")
    if tied != want_tied:
        problems.append(f"head tied {tied}, config.json says tie_word_embeddings {want_tied}")
    if not tied:
        in_file = file_tensor(directory, "lm_head.weight")
        same = in_file is not None and numpy.array_equal(head.detach().numpy(), in_file)
        print(f"lm_head.weight equals the file's lm_head.weight: {same}")
        if not same:
            problems.append("lm_head.weight missing from the files or different from them")
    with torch.no_grad():
        logits = model(torch.from_numpy(ref["input_ids"])).logits.numpy()  # (B, T) -> (B, T, V)
    if logits.shape != ref["logits"].shape:
        problems.append(f"logits shape {logits.shape}, numgpt's {ref['logits'].shape}")
        diff = math.inf
    else:
        diff = float(numpy.abs(logits - ref["logits"]).max()) / float(numpy.abs(logits).max())
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: logits {logits.shape}, "
          f"max |transformers - numgpt| / max |logit| = {diff:.3e} (rtol {CHECK_RTOL:.0e})")
    if not diff <= CHECK_RTOL:
        problems.append(f"logits differ by {diff:.3e} relative > {CHECK_RTOL:.0e}")
    if problems:
        print("FAILED: " + "; ".join(problems))
        return 1
    print("OK")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check-export", metavar="DIR",
                        help="load numgpt's exported DIR with transformers and compare with DIR/reference.safetensors")
    args = parser.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    if args.check_export:
        return check_export(args.check_export)
    write_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
