"""Token stores (numgpt prepare, numgpt.data.token_store) and other tools' token files
(numgpt.data.token_files): what is written, that it reads back as the tokenizer's ids,
that hostile files give one clear StoreError naming the file and the offset, and
that a prepare killed mid-way resumes to the same bytes."""
import gzip
import hashlib
import json
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_process import ENV, assert_usage_error, numgpt_cli
from hypothesis import HealthCheck, given, settings, strategies as st
from token_file_writers import write_llmc, write_megatron, write_nanogpt

import numgpt.data.datasets as numgpt_data
from numgpt.data.datasets import DataError, KeyedPermutation, RandomWindowLoader, TokenWindows
from numgpt.data.prepare import PrepareError, in_validation, prepare
from numgpt.data.token_files import open_token_file, open_token_files, read_llmc_header, read_megatron_index
from numgpt.data.token_store import MANIFEST, StoreError, TokenSequence, TokenStore, check_manifest

GPT2_VOCAB = 50257
EOT = 50256
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def books(directory, verdict_text, count, size=3000):
    """``count`` text files, each a different ``size``-character stretch of the-verdict."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        start = (i * 1700) % (len(verdict_text) - size)
        (directory / f"book-{i:03d}.txt").write_text(verdict_text[start:start + size], encoding="utf-8")
    return directory


def store_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def ordinary(tokenizer, text):
    return tokenizer.encode(text, allowed_special=set(), disallowed_special=())


# ---------------------------------------------------------------- prepare and read back


def test_a_store_of_one_text_file_holds_the_seeds_split(tmp_path, verdict_path, verdict_text, tokenizer):
    manifest = prepare([verdict_path], tmp_path / "store", workers=1)
    store = TokenStore(tmp_path / "store", verify=True)
    train_text, val_text = verdict_text[:int(0.9 * len(verdict_text))], verdict_text[int(0.9 * len(verdict_text)):]
    train, val = store.split("train"), store.split("val")
    assert train.slice(0, len(train)).tolist() == ordinary(tokenizer, train_text)
    assert val.slice(0, len(val)).tolist() == ordinary(tokenizer, val_text)
    assert manifest["dtype"] == "uint16" and manifest["documents"] == 1
    assert manifest["validation"] == {"how": "characters", "train_ratio": 0.9}
    assert isinstance(train.parts[0], np.memmap) and not train.parts[0].flags.writeable
    assert store.manifest_sha256 == hashlib.sha256((tmp_path / "store" / MANIFEST).read_bytes()).hexdigest()


def test_documents_are_joined_by_end_of_text_and_split_by_the_evenly_spread_rule(tmp_path, verdict_text, tokenizer):
    corpus = books(tmp_path / "books", verdict_text, 12, size=400)
    (corpus / "notes.md").write_text("not a source")        # a directory takes .txt, .jsonl(.gz), .parquet only
    prepare([corpus], tmp_path / "store", workers=1, val_fraction=0.25, shard_tokens=300)
    store = TokenStore(tmp_path / "store")
    texts = [p.read_text() for p in sorted(corpus.glob("*.txt"))]
    val_index = [i for i in range(12) if in_validation(i, None, 0.25)]
    assert val_index == [3, 7, 11]
    for split, chosen in (("val", val_index), ("train", [i for i in range(12) if i not in val_index])):
        expected = []
        for k, i in enumerate(chosen):
            expected += ([EOT] if k else []) + ordinary(tokenizer, texts[i])
        sequence = store.split(split)
        assert sequence.slice(0, len(sequence)).tolist() == expected, split
    shards = store.manifest["splits"]["train"]["shards"]
    assert len(shards) > 1 and all(s["n_tokens"] >= 300 for s in shards[:-1])  # a shard closes at a document end


def test_jsonl_and_gzip_sources_through_a_glob(tmp_path, tokenizer):
    records = [{"text": f"document number {i} <|endoftext|> inside", "id": i} for i in range(5)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records[3:]))
    prepare([str(tmp_path / "*.jsonl*")], tmp_path / "store", workers=1, val_docs=1)
    store = TokenStore(tmp_path / "store")
    val = store.split("val")
    assert val.slice(0, len(val)).tolist() == ordinary(tokenizer, records[0]["text"])   # special text stays text
    assert EOT not in ordinary(tokenizer, records[0]["text"])
    prepare([tmp_path / "a.jsonl"], tmp_path / "special", workers=1, val_docs=0, allow_special=True)
    train = TokenStore(tmp_path / "special").split("train")
    assert train.slice(0, len(train)).tolist().count(EOT) == 3 + 2    # 3 in the texts, 2 joins
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "no"}\n')
    with pytest.raises(DataError, match="bad.jsonl line 2"):
        prepare([tmp_path / "bad.jsonl"], tmp_path / "bad", workers=1)


def test_a_parquet_column_is_a_source(tmp_path):
    records = [{"text": f"document number {i} <|endoftext|> inside", "id": i} for i in range(5)]
    pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'numgpt[parquet]')")
    import pyarrow.parquet
    pyarrow.parquet.write_table(pyarrow.table({"body": [r["text"] for r in records]}), tmp_path / "c.parquet")
    prepare([tmp_path / "c.parquet"], tmp_path / "pq", workers=1, val_docs=0, text_field="body")
    train = TokenStore(tmp_path / "pq").split("train")
    assert train.slice(0, len(train)).tolist().count(EOT) == 4
    with pytest.raises(DataError, match="no column 'text'"):
        prepare([tmp_path / "c.parquet"], tmp_path / "pq2", workers=1)


def test_a_saved_hugging_face_dataset_is_a_source(tmp_path, tokenizer):
    datasets = pytest.importorskip("datasets")
    texts = [f"row {i} of a saved dataset" for i in range(4)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": texts}),
                          "test": datasets.Dataset.from_dict({"content": ["held out"]})}).save_to_disk(tmp_path / "ds")
    manifest = prepare([tmp_path / "ds"], tmp_path / "store", workers=1, val_docs=1, text_field="content")
    store = TokenStore(tmp_path / "store")
    train = store.split("train")
    expected = ordinary(tokenizer, texts[1]) + [EOT] + ordinary(tokenizer, texts[2]) + [EOT] + \
        ordinary(tokenizer, texts[3])
    assert train.slice(0, len(train)).tolist() == expected
    assert manifest["sources"][0]["split"] == "train" and len(manifest["sources"][0]["sha256"]) == 64
    with pytest.raises(DataError, match="no split 'dev'"):
        prepare([tmp_path / "ds"], tmp_path / "dev", workers=1, split="dev", text_field="content")


def test_a_long_document_encoded_in_pieces_gives_the_ids_of_the_whole(tmp_path, verdict_text, tokenizer,
                                                                     monkeypatch):
    import numgpt.data.prepare
    text = verdict_text + " 1½ x  y\n\nit's   done " + verdict_text[::-1]
    cut = list(numgpt.data.prepare.pieces(text, 300))
    assert len(cut) > 100 and "".join(cut) == text
    assert sum((ordinary(tokenizer, piece) for piece in cut), []) == ordinary(tokenizer, text)
    monkeypatch.setattr(numgpt.data.prepare, "CHUNK_CHARS", 300)
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.txt").write_text(verdict_text[:5000])
    prepare([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "store", workers=1, val_docs=0, shard_tokens=100)
    train = TokenStore(tmp_path / "store").split("train")
    assert train.slice(0, len(train)).tolist() == ordinary(tokenizer, text) + [EOT] + \
        ordinary(tokenizer, verdict_text[:5000])
    assert len(TokenStore(tmp_path / "store").manifest["splits"]["train"]["shards"]) == 2   # one per document


def test_two_workers_write_the_same_bytes_as_one(tmp_path, verdict_text):
    corpus = books(tmp_path / "books", verdict_text, 10)
    prepare([corpus], tmp_path / "one", workers=1, shard_tokens=1000)
    prepare([corpus], tmp_path / "two", workers=2, shard_tokens=1000)
    assert store_bytes(tmp_path / "one") == store_bytes(tmp_path / "two")


def test_prepare_refuses_a_finished_store_and_missing_sources(tmp_path, verdict_path):
    prepare([verdict_path], tmp_path / "store", workers=1)
    with pytest.raises(PrepareError, match="already holds a token store"):
        prepare([verdict_path], tmp_path / "store", workers=1)
    assert_usage_error(numgpt_cli("prepare", tmp_path / "nothing-here", "--out", tmp_path / "x"), "nothing-here")


def test_prepare_shows_its_progress_on_a_terminal_only(tmp_path, verdict_text, capsys):
    corpus = books(tmp_path / "books", verdict_text, 3)
    prepare([corpus], tmp_path / "quiet", workers=1)                  # stderr is no terminal here
    assert capsys.readouterr().err == ""
    prepare([corpus], tmp_path / "shown", workers=1, progress=True)
    bar = capsys.readouterr().err
    print(bar)
    assert "9.00k/9.00k" in bar and "B/s" in bar and "tokens/s" in bar    # 3 books of 3,000 bytes


def test_prepare_flags_that_do_not_go_together_are_one_line_errors(tmp_path, verdict_path, capsys):
    from numgpt.cli import main
    for flags, fragment in ((["--tokenizer-train"], "--vocab-size"), (["--vocab-size", "300"], "--tokenizer-train"),
                            (["--tokenizer-train", "--vocab-size", "300", "--tokenizer", "x"], "--tokenizer"),
                            (["--val-fraction", "1.5"], "--val-fraction")):
        try:
            code = main(["prepare", str(verdict_path), "--out", str(tmp_path / "s"), *flags])
        except SystemExit as stop:                     # argparse's own refusal of a value
            code = stop.code
        assert code == 2
        error = capsys.readouterr().err
        assert len(error.strip().splitlines()) == 1 and fragment in error, error
    assert not (tmp_path / "s" / MANIFEST).exists()


def test_a_killed_prepare_resumes_to_the_same_bytes(tmp_path, verdict_text):
    corpus = books(tmp_path / "books", verdict_text, 150)
    args = ["--shard-tokens", "3000", "--workers", "1"]
    process = subprocess.Popen([sys.executable, "-m", "numgpt", "prepare", str(corpus), "--out",
                                str(tmp_path / "cut"), *args], env=ENV, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (tmp_path / "cut" / ".prepare-state.json").exists():
        assert process.poll() is None and time.time() < deadline, process.stderr.read()
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "cut" / MANIFEST).exists()            # it was stopped part-way
    state = json.loads((tmp_path / "cut" / ".prepare-state.json").read_text())
    print("killed after", state["items"], "of", 150, "documents")
    assert 0 < state["items"] < 150
    stale = tmp_path / "cut" / ".prepare-state.json.0123456789ab.tmp"  # as a kill inside atomic_write leaves
    stale.write_bytes(b'{"settings": ')
    numgpt_cli("prepare", corpus, "--out", tmp_path / "cut", *args, check=0)
    assert not stale.exists()
    prepare([corpus], tmp_path / "whole", workers=2, shard_tokens=3000)
    cut, whole = store_bytes(tmp_path / "cut"), store_bytes(tmp_path / "whole")
    assert sorted(cut) == sorted(whole) and len(cut) > 10
    for name in whole:
        assert cut[name] == whole[name], name
    TokenStore(tmp_path / "cut", verify=True)


def test_an_interrupted_prepare_of_other_inputs_is_refused(tmp_path, verdict_text):
    corpus = books(tmp_path / "books", verdict_text, 3)
    out = tmp_path / "store"
    out.mkdir()
    (out / ".prepare-state.json").write_text(json.dumps({"settings": {"sources": []}, "items": 0, "writers": {}}))
    with pytest.raises(PrepareError, match="interrupted prepare of other sources"):
        prepare([corpus], out, workers=1)


# ---------------------------------------------------------------- hostile stores


@pytest.fixture
def small_store(tmp_path, verdict_text):
    prepare([books(tmp_path / "books", verdict_text, 4, size=500)], tmp_path / "store", workers=1, val_docs=1)
    return tmp_path / "store"


def test_a_store_checks_sizes_ids_offsets_and_sha256(small_store):
    shard = small_store / "train-00000.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-2])
    with pytest.raises(StoreError, match=r"train-00000.bin: .* truncated at byte offset") as raised:
        TokenStore(small_store)
    print(raised.value)
    shard.write_bytes(data + b"\0\0")
    with pytest.raises(StoreError, match="oversized"):
        TokenStore(small_store)
    shard.write_bytes(data[:10] + struct.pack("<H", 60000) + data[12:])
    with pytest.raises(StoreError, match=r"token id 60000 at byte offset 10 is outside the vocabulary of 50257"):
        TokenStore(small_store)
    shard.write_bytes(data[:10] + struct.pack("<H", 7) + data[12:])   # a valid id, another sha256
    TokenStore(small_store)                                       # sizes and ids hold...
    with pytest.raises(StoreError, match="sha256 .* disagrees with the manifest"):
        TokenStore(small_store, verify=True)                      # ...the sha256 does not
    shard.write_bytes(data)
    docs = small_store / "train-00000.docs"
    offsets = np.frombuffer(docs.read_bytes(), "<u8").copy()
    offsets[1] = offsets[2] + 1
    docs.write_bytes(offsets.tobytes())
    with pytest.raises(StoreError, match=r"train-00000.docs: document offset .* at byte offset 16"):
        TokenStore(small_store)


@given(st.recursive(st.none() | st.booleans() | st.integers(-2, 2**70) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                                  max_size=4), max_leaves=20))
@settings(max_examples=100, deadline=None)
def test_fuzzed_manifests_give_only_store_errors(value):
    try:
        check_manifest(value, "manifest.json")
    except StoreError:
        pass


@FUZZ
@given(st.data())
def test_fuzzed_fields_of_a_real_manifest_give_only_store_errors(small_store, data):
    manifest = json.loads((small_store / MANIFEST).read_text())
    path = []
    node = manifest
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    replacement = data.draw(st.none() | st.integers(-5, 2**66) | st.text(max_size=70) | st.just([]) | st.just({}))
    target = manifest
    for key in path[:-1]:
        target = target[key]
    if path:
        target[path[-1]] = replacement
    else:
        manifest = replacement
    try:
        check_manifest(manifest, "manifest.json")
    except StoreError:
        pass


def test_a_manifest_that_is_not_json_names_the_file(small_store):
    (small_store / MANIFEST).write_bytes(b'{"format": ')
    with pytest.raises(StoreError, match="manifest.json.*not valid JSON"):
        TokenStore(small_store)


# ---------------------------------------------------------------- other tools' files


def test_nanogpt_llmc_and_megatron_files_read_as_their_ids(tmp_path):
    ids = [5, 50256, 17, 0, 42, 9, 1000]
    for name, write in (("nano", lambda d, s, x: write_nanogpt(d / f"{s}.bin", x)),
                        ("llmc1", lambda d, s, x: write_llmc(d / f"shakespeare_{s}_000000.bin", x, 1)),
                        ("llmc7", lambda d, s, x: write_llmc(d / f"edu_{s}_000000.bin", x, 7)),
                        ("megatron", lambda d, s, x: write_megatron(d / s, [[x[:3], x[3:5]], [x[5:]]]))):
        directory = tmp_path / name
        directory.mkdir()
        write(directory, "train", ids)
        write(directory, "val", ids[::-1])
        splits, digest = open_token_files(directory, GPT2_VOCAB)
        assert splits["train"].slice(0, 7).tolist() == ids and splits["val"].slice(0, 7).tolist() == ids[::-1], name
        assert len(digest) == 64


def test_several_llmc_shards_are_one_stream(tmp_path):
    write_llmc(tmp_path / "fw_train_000001.bin", [1, 2, 3])
    write_llmc(tmp_path / "fw_train_000002.bin", [4, 5])
    write_llmc(tmp_path / "fw_val_000000.bin", [6, 7, 8])
    splits, _ = open_token_files(tmp_path, GPT2_VOCAB)
    assert splits["train"].gather([0, 1, 2], 3).tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5]]


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-2]), r"header \(byte offset 8\) says 4 tokens.*truncated"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0\0"), r"oversized"),
    (lambda p: p.write_bytes(struct.pack("<i", 20240521) + p.read_bytes()[4:]),
     r"token id 55433 at byte offset 0 .* no llm.c magic 20240520 at byte offset 0, found 20240521"),
    (lambda p: p.write_bytes(p.read_bytes()[:4] + struct.pack("<i", 3) + p.read_bytes()[8:]),
     r"version 3 at byte offset 4"),
    (lambda p: p.write_bytes(p.read_bytes()[:1024] + struct.pack("<H", 50257) + p.read_bytes()[1026:]),
     r"token id 50257 at byte offset 1024"),
    (lambda p: p.write_bytes(p.read_bytes()[:100]), r"truncated at byte offset 100"),
])
def test_hostile_llmc_shards(tmp_path, damage, message):
    path = tmp_path / "x_train.bin"
    write_llmc(path, [1, 2, 3, 4])
    damage(path)
    with pytest.raises(StoreError, match=message) as raised:
        open_token_file(path, GPT2_VOCAB, hashlib.sha256())
    assert str(path) in str(raised.value)


def test_hostile_nanogpt_and_megatron_files(tmp_path):
    digest = hashlib.sha256()
    write_nanogpt(tmp_path / "train.bin", [1, 2, 50300])
    with pytest.raises(StoreError, match=r"train.bin: token id 50300 at byte offset 4"):
        open_token_file(tmp_path / "train.bin", GPT2_VOCAB, digest)
    (tmp_path / "train.bin").write_bytes(b"\1\0\2")
    with pytest.raises(StoreError, match=r"odd number: truncated at byte offset 2"):
        open_token_file(tmp_path / "train.bin", GPT2_VOCAB, digest)
    write_megatron(tmp_path / "m", [[[1, 2, 3]], [[4, 5]]])
    data = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "m.bin").write_bytes(data[:-2])
    with pytest.raises(StoreError, match=r"m.bin: 8 bytes, truncated at byte offset 8.*m.idx says 5"):
        open_token_file(tmp_path / "m.bin", GPT2_VOCAB, digest)
    (tmp_path / "m.bin").write_bytes(data)
    index = (tmp_path / "m.idx").read_bytes()
    pointers_at = 34 + 2 * 4
    (tmp_path / "m.idx").write_bytes(index[:pointers_at + 8] + struct.pack("<q", 4) + index[pointers_at + 16:])
    with pytest.raises(StoreError, match=r"sequence 1 .* pointer 4; expected the pointer 6"):
        read_megatron_index(tmp_path / "m.idx")
    (tmp_path / "m.idx").write_bytes(index[:17] + b"\x06" + index[18:])
    with pytest.raises(StoreError, match=r"dtype code 6 at byte offset 17"):
        read_megatron_index(tmp_path / "m.idx")
    (tmp_path / "m.idx").write_bytes(index[:-8])
    with pytest.raises(StoreError, match=r"m.idx: .* truncated"):
        read_megatron_index(tmp_path / "m.idx")


@FUZZ
@given(head=st.binary(max_size=40), body=st.binary(max_size=64), version=st.sampled_from([1, 7, 2, -1]),
       count=st.integers(-2**31, 2**31 - 1), valid_prefix=st.booleans())
def test_fuzzed_llmc_headers_give_only_store_errors(tmp_path, head, body, version, count, valid_prefix):
    path = tmp_path / "f_train.bin"
    header = struct.pack("<3i", 20240520, version, count) if valid_prefix else head
    path.write_bytes(header + bytes(1024 - len(header)) * valid_prefix + body)
    try:
        read_llmc_header(path)
        open_token_file(path, GPT2_VOCAB, hashlib.sha256())
    except StoreError:
        pass


@FUZZ
@given(code=st.integers(0, 255), version=st.integers(0, 3), n_sequences=st.integers(0, 2**64 - 1),
       n_documents=st.integers(0, 2**64 - 1), tail=st.binary(max_size=80), small=st.booleans())
def test_fuzzed_megatron_indexes_give_only_store_errors(tmp_path, code, version, n_sequences, n_documents, tail,
                                                        small):
    if small:
        n_sequences, n_documents = n_sequences % 5, n_documents % 5
    path = tmp_path / "m.idx"
    path.write_bytes(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", version, code, n_sequences, n_documents) + tail)
    (tmp_path / "m.bin").write_bytes(tail)
    try:
        read_megatron_index(path)
        open_token_file(tmp_path / "m.bin", GPT2_VOCAB, hashlib.sha256())
    except StoreError:
        pass


# ---------------------------------------------------------------- windows over a stream


def test_windows_across_shard_borders_equal_windows_of_one_array():
    tokens = np.arange(100, dtype=np.int64) * 7 % 50257
    split = TokenSequence([tokens[:13].astype(np.uint16), tokens[13:14].astype(np.uint16),
                           tokens[14:].astype(np.uint16)])
    one, many = TokenWindows(tokens, 8, 5), TokenWindows(split, 8, 5)
    assert len(one) == len(many) == len(range(0, 100 - 8, 5))
    for a, b in zip(one.get_batch(np.arange(len(one))), many.get_batch(np.arange(len(one)))):
        assert a.dtype == b.dtype == np.int64 and np.array_equal(a, b)
    inputs, targets = one[3]
    assert inputs.tolist() == tokens[15:23].tolist() and targets.tolist() == tokens[16:24].tolist()


def test_random_windows_resume_with_the_same_offsets():
    tokens = np.arange(1000) % 97
    loader = RandomWindowLoader(tokens, 16, 4, generator=np.random.default_rng(5))
    assert len(loader) == len(TokenWindows(tokens, 16, 16)) // 4
    batches = iter(loader)
    first = [next(batches) for _ in range(3)]
    state = batches.state_dict()
    rest = list(batches)
    for inputs, targets in first + rest:
        assert np.array_equal(targets[:, :-1], inputs[:, 1:])               # windows of the stream
        assert np.array_equal((inputs[:, :1] + np.arange(16)) % 97, inputs)
    resumed = RandomWindowLoader(tokens, 16, 4)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    again = list(iter(resumed))
    assert len(again) == len(rest) and all(np.array_equal(a[0], b[0]) for a, b in zip(again, rest))
    with pytest.raises(DataError, match="epoch_key"):
        resumed.load_state_dict({"epoch_key": -1, "batches_yielded": 0})


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097, 65537])
def test_a_keyed_permutation_is_a_permutation_that_its_key_decides(n):
    order = KeyedPermutation(n, 2024)
    items = order[0:n]
    assert items.dtype == np.int64 and sorted(items.tolist()) == list(range(n))
    assert order[5:9].tolist() == items[5:9].tolist() and order[np.array([n - 1])].tolist() == [items[-1]]
    if n >= 1000:
        assert items.tolist() != list(range(n)) and items.tolist() != KeyedPermutation(n, 2025)[0:n].tolist()


def test_a_large_dataset_is_shuffled_by_a_key_and_resumes_from_it(monkeypatch):
    monkeypatch.setattr(numgpt_data, "LITERAL_ORDER_LIMIT", 50)
    windows = TokenWindows(np.arange(2000) % 50257, 4, 4)                    # 499 windows > the limit
    loader = numgpt_data.DataLoader(windows, batch_size=8, shuffle=True, generator=np.random.default_rng(1))
    batches = iter(loader)
    done = [next(batches) for _ in range(5)]
    state = json.loads(json.dumps(batches.state_dict()))
    assert state["epoch_order"] is None and isinstance(state["epoch_key"], int)
    rest = list(batches)
    firsts = np.concatenate([inputs[:, 0] for inputs, _ in done + rest]) // 4
    assert sorted(firsts.tolist()) == list(range(len(windows)))             # every window once
    resumed = numgpt_data.DataLoader(windows, batch_size=8, shuffle=True)
    resumed.load_state_dict(state)
    again = list(resumed)
    assert len(again) == len(rest) and all(np.array_equal(a[0], b[0]) for a, b in zip(again, rest))
    with pytest.raises(DataError, match="epoch_key"):
        numgpt_data.DataLoader(TokenWindows(np.arange(100), 4, 4), shuffle=True).load_state_dict(state)
