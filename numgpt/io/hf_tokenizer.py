"""The tokenizer of a Hugging Face model directory, offline, through the ``tokenizers`` library.

``HFTokenizer(directory)`` reads ``directory/tokenizer.json`` (required) and, when present,
``tokenizer_config.json``, ``special_tokens_map.json``, ``config.json`` and
``generation_config.json``. It presents what numgpt uses of a tiktoken ``Encoding``
(numgpt/io/tokenizer.py), so ``data.py``, ``train.py`` and generation take either:

    encode(text, *, allowed_special=(), disallowed_special="all", add_special_tokens=True) -> list[int]
    decode(tokens) -> str
    eot_token, n_vocab, name, special_tokens_set      (and bos_token_id, eos_token_id)

GPT-2 models keep numgpt's bundled tiktoken tokenizer (``numgpt.io.tokenizer.get_tokenizer()``).

The ids are those of transformers' ``AutoTokenizer.from_pretrained(directory)(text)["input_ids"]``
when transformers (5.x) runs tokenizer.json as it is, i.e. for tokenizer_config.json's generic
``TokenizersBackend`` / ``PreTrainedTokenizerFast`` classes. Step by step, what transformers does
on top of tokenizer.json and numgpt repeats (tokenizer.json's post-processor decides whether bos is
prepended; transformers 5 ignores tokenizer_config.json's add_bos_token / add_eos_token when
there is a tokenizer.json, and so does numgpt):
  1. truncation and padding stored in tokenizer.json are switched off, as a call without
     ``truncation=`` / ``padding=`` does;
  2. a special token that tokenizer_config.json names (bos_token, ..., extra_special_tokens) but
     the vocabulary lacks is added as a special token, after the others;
  3. decode is the library's decode; ``clean_up_tokenization_spaces`` is applied only to non-BPE
     models, because transformers 5 skips it for BPE (it would delete real spaces).
(Model-specific classes, e.g. ``Qwen2Tokenizer``, may rebuild the pipeline from the vocabulary
instead; numgpt always runs tokenizer.json.)

Special tokens follow tiktoken's contract, not transformers'. transformers always reads a special
token's text as that token; here it is read so only when ``allowed_special`` names it (or is
``"all"``). A special token's text that is neither allowed nor disallowed is ordinary text, encoded
as transformers' ``split_special_tokens=True`` does; one that is disallowed (by default, every
special token not allowed) raises ``TokenizerError``. ``add_special_tokens=False`` leaves out what
the post-processor adds (bos), as in transformers.
"""
import functools
import re
from pathlib import Path

from tokenizers import Encoding, Tokenizer

from numgpt.errors import NumgptError
from numgpt.io import safe_io

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_JSON = "special_tokens_map.json"
CONFIG_JSON = "config.json"
GENERATION_CONFIG_JSON = "generation_config.json"
MAX_TOKENIZER_BYTES = 64 * 2**20     # the largest published tokenizer.json files are about 35 MB
MAX_CONFIG_BYTES = 16 * 2**20         # tokenizer_config.json may hold a long chat template
GPT2_HINT = "GPT-2 models use numgpt's bundled tokenizer (numgpt.io.tokenizer.get_tokenizer())"
# tokenizer_config.json's named special tokens, which transformers adds when the vocabulary lacks them
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
EXTRA_SPECIAL_TOKENS = ("additional_special_tokens", "extra_special_tokens")
# transformers' clean_up_tokenization: spaces a word-piece decode leaves before punctuation and contractions
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class TokenizerError(NumgptError, ValueError):
    """A tokenizer file numgpt cannot use, text it may not encode, or ids it cannot decode."""


class TokenizerNotFoundError(NumgptError, FileNotFoundError):
    """A directory without a readable tokenizer.json."""


def _token_text(value):
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}; else None."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _first_id(value):
    """config.json's bos/eos_token_id: an int, or a list whose first entry counts; else None."""
    if isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _read_optional_json(path):
    """The JSON object in ``path``, or {} when the file does not exist."""
    if not path.exists():
        return {}
    document = safe_io.read_json(path, MAX_CONFIG_BYTES)          # a FIFO or device is refused, not read
    if not isinstance(document, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(document).__name__}")
    return document


def _load_backend(path):
    """tokenizer.json -> tokenizers.Tokenizer, with errors that name the file."""
    try:
        text = safe_io.read_limited(path, MAX_TOKENIZER_BYTES, TOKENIZER_JSON).decode("utf-8")
    except safe_io.UnsafeFileError as exc:
        raise TokenizerError(str(exc)) from None
    except FileNotFoundError:
        raise TokenizerNotFoundError(f"{path.parent}: no {TOKENIZER_JSON} (a Hugging Face model's tokenizer); "
                                     f"{GPT2_HINT}") from None
    except OSError as exc:
        raise TokenizerNotFoundError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # the tokenizers library raises plain Exception on every parse error  # noqa: BLE001
        raise TokenizerError(f"{path}: not a tokenizer.json the tokenizers library can read: {exc}") from None


class HFTokenizer:
    """The tokenizer in a Hugging Face model directory, with tiktoken's ``Encoding`` interface."""

    def __init__(self, directory):
        directory = Path(directory)
        if not directory.is_dir():
            raise TokenizerNotFoundError(f"{directory}: not a directory (expected a Hugging Face model directory "
                                         f"holding {TOKENIZER_JSON}); {GPT2_HINT}")
        self.directory = directory
        backend = _load_backend(directory / TOKENIZER_JSON)
        config = _read_optional_json(directory / TOKENIZER_CONFIG_JSON)
        special_map = _read_optional_json(directory / SPECIAL_TOKENS_MAP_JSON)
        model_config = _read_optional_json(directory / CONFIG_JSON)
        generation_config = _read_optional_json(directory / GENERATION_CONFIG_JSON)

        # 1. no truncation, no padding
        backend.no_truncation()
        backend.no_padding()
        # 2. named special tokens the vocabulary lacks become special tokens, appended
        named = [_token_text(config.get(key)) for key in NAMED_SPECIAL_TOKENS]
        for key in EXTRA_SPECIAL_TOKENS:
            extra = config.get(key)
            extra = list(extra.values()) if isinstance(extra, dict) else extra if isinstance(extra, list) else []
            named += [_token_text(token) for token in extra]
        missing = [token for token in dict.fromkeys(named) if token is not None and backend.token_to_id(token) is None]
        if missing:
            backend.add_special_tokens(missing)

        def named_id(key):
            """The id of the special token tokenizer_config.json (or special_tokens_map.json) names."""
            for source in (config, special_map):
                token = _token_text(source.get(key))
                if token is not None and backend.token_to_id(token) is not None:
                    return backend.token_to_id(token)
            return None

        def model_id(key):
            """config.json's (or generation_config.json's) id, for a tokenizer that names none."""
            for source in (model_config, generation_config):
                if _first_id(source.get(key)) is not None:
                    return _first_id(source.get(key))
            return None

        self.bos_token_id = named_id("bos_token")
        if self.bos_token_id is None:
            self.bos_token_id = model_id("bos_token_id")
        self.eos_token_id = named_id("eos_token")
        if self.eos_token_id is None:
            self.eos_token_id = model_id("eos_token_id")
        # 3. transformers 5 cleans up decoded spaces for non-BPE models only
        self._clean_up = bool(config.get("clean_up_tokenization_spaces")) and (
            type(backend.model).__name__ != "BPE"
            or bool(config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")))

        self._backend = backend
        added = backend.get_added_tokens_decoder()  # {id: AddedToken}
        self._special_tokens = {token.content: token for token in added.values() if token.special}
        self.n_vocab = max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        self.name = self._name_of(directory)

    @staticmethod
    def _name_of(directory):
        """The directory's name; for a Hugging Face cache snapshot (models--ORG--NAME/snapshots/REV), ORG/NAME."""
        directory = directory.resolve()
        if directory.parent.name == "snapshots" and directory.parent.parent.name.startswith("models--"):
            return directory.parent.parent.name.removeprefix("models--").replace("--", "/")
        return directory.name

    def __repr__(self):
        return f"<HFTokenizer {self.name!r} n_vocab={self.n_vocab} from {str(self.directory)!r}>"

    @property
    def eot_token(self):
        """The end-of-text id generation stops at: the eos id (None if the files name none)."""
        return self.eos_token_id

    @property
    def special_tokens_set(self):
        """The texts of the special tokens (those the vocabulary marks special), as tiktoken's."""
        return set(self._special_tokens)

    @functools.cached_property
    def _literal(self):
        """A second backend that reads every special token's text as ordinary text."""
        literal = Tokenizer.from_str(self._backend.to_str())
        literal.encode_special_tokens = True
        return literal

    def encode(self, text, *, allowed_special=frozenset(), disallowed_special="all", add_special_tokens=True):
        """``text`` -> ids. A special token's text becomes that token only if ``allowed_special``
        names it (or is "all"); if ``disallowed_special`` names it (by default: all not allowed)
        it raises TokenizerError; otherwise it is ordinary text. ``add_special_tokens=False``:
        nothing from the post-processor (no bos)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        specials = set(self._special_tokens)
        allowed = specials if allowed_special == "all" else set(allowed_special)
        disallowed = specials - allowed if disallowed_special == "all" else set(disallowed_special)
        found = {token for token in specials if token in text}
        for token in sorted(found & disallowed):
            raise TokenizerError(
                f"the text contains the disallowed special token {token!r}. To encode it as that token, pass "
                f"allowed_special={{{token!r}}} (or \"all\"); to encode it as ordinary text, pass "
                f"disallowed_special=() or a set without it")
        as_text = found - allowed
        if not as_text:   # every special token's text in it is allowed: the library's own encode
            return self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        as_tokens = found & allowed
        if not as_tokens:
            return self._literal.encode(text, add_special_tokens=add_special_tokens).ids
        # Both kinds: cut the text at the allowed tokens (with the whitespace an lstrip/rstrip token
        # takes), read the pieces between them with every special as text, join, then post-process.
        cut = re.compile("|".join(
            (r"\s*" if self._special_tokens[t].lstrip else "") + re.escape(t)
            + (r"\s*" if self._special_tokens[t].rstrip else "")
            for t in sorted(as_tokens, key=len, reverse=True)))
        pieces, start = [], 0
        for match in cut.finditer(text):
            pieces.append(self._literal.encode(text[start:match.start()], add_special_tokens=False))
            pieces.append(self._backend.encode(match.group(), add_special_tokens=False))
            start = match.end()
        pieces.append(self._literal.encode(text[start:], add_special_tokens=False))
        joined = Encoding.merge([p for p in pieces if p.ids], growing_offsets=True)
        return self._backend.post_process(joined, add_special_tokens=add_special_tokens).ids

    def decode(self, tokens):
        """ids -> text, special tokens written out (transformers' skip_special_tokens=False)."""
        ids = [int(i) for i in tokens]
        unknown = sorted({i for i in ids if i < 0 or self._backend.id_to_token(i) is None})
        if unknown:
            raise TokenizerError(f"{self.name}: no token has id {unknown[0]}"
                                 + (f" (nor {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                                 + f"; ids run from 0 to {self.n_vocab - 1}")
        text = self._backend.decode(ids, skip_special_tokens=False)
        if self._clean_up:
            for before, after in CLEAN_UP:
                text = text.replace(before, after)
        return text
