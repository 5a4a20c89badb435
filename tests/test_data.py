"""Datasets, loaders and the corpus: the seed's numbers on "The Verdict",
windows checked against the raw token stream, shuffling, resuming, and the
bundled corpus read with no network."""
import hashlib
import json
import socket

import numpy
import pytest

from numgpt import backend
from numgpt.data import (VERDICT_SHA256, DataError, DataLoader, GPTDatasetV1,
                         create_dataloader_v1, load_the_verdict, read_text, split_text)

VERDICT_N_CHARS = 20479
CONTEXT_LENGTH = 256  # the seed's GPT_CONFIG_124M["context_length"]
SEED_BATCH_SIZE = 2
SEED_TRAIN_BATCHES = 9
SEED_TRAIN_TOKENS = 4608
SEED_VAL_TOKENS = 512


class IndexDataset:
    """Item i is (i, i, ..., i) and (-i, ...): a batch shows which items it holds."""

    def __init__(self, n_items, length=3):
        self.n_items, self.length = n_items, length

    def __len__(self):
        return self.n_items

    def __getitem__(self, items):  # items: an array of indices, as DataLoader asks
        inputs = numpy.repeat(numpy.asarray(items, dtype=numpy.int64)[:, None], self.length, axis=1)
        return inputs, -inputs


def item_order(batches):
    return [int(i) for inputs, _ in batches for i in inputs[:, 0]]


# ---------------------------------------------------------------- the seed's corpus


@pytest.fixture(scope="module")
def seed_loaders(verdict_text, tokenizer):
    train_text, val_text = split_text(verdict_text, train_ratio=0.9)
    backend.manual_seed(123)
    train_loader = create_dataloader_v1(train_text, batch_size=SEED_BATCH_SIZE, max_length=CONTEXT_LENGTH,
                                        stride=CONTEXT_LENGTH, drop_last=True, shuffle=True,
                                        num_workers=0, tokenizer=tokenizer)
    val_loader = create_dataloader_v1(val_text, batch_size=SEED_BATCH_SIZE, max_length=CONTEXT_LENGTH,
                                      stride=CONTEXT_LENGTH, drop_last=False, shuffle=False,
                                      num_workers=0, tokenizer=tokenizer)
    return train_loader, val_loader


def test_corpus_size_and_split(verdict_text):
    assert len(verdict_text) == VERDICT_N_CHARS
    train_text, val_text = split_text(verdict_text, train_ratio=0.9)
    assert len(train_text) == int(0.9 * VERDICT_N_CHARS) == 18431
    assert train_text + val_text == verdict_text


def test_seed_loader_shapes_and_token_counts(seed_loaders):
    train_loader, val_loader = seed_loaders
    train_batches, val_batches = list(train_loader), list(val_loader)
    assert len(train_loader) == len(train_batches) == SEED_TRAIN_BATCHES
    assert len(val_loader) == len(val_batches) == 1
    for inputs, targets in train_batches + val_batches:
        assert inputs.shape == targets.shape == (SEED_BATCH_SIZE, CONTEXT_LENGTH)
        assert inputs.dtype == targets.dtype == numpy.int64
    assert sum(inputs.size for inputs, _ in train_batches) == SEED_TRAIN_TOKENS
    assert sum(inputs.size for inputs, _ in val_batches) == SEED_VAL_TOKENS


@pytest.mark.parametrize("max_length, stride", [(4, 1), (4, 3), (4, 4), (5, 7), (256, 128)])
def test_windows_match_the_raw_token_stream(verdict_text, tokenizer, max_length, stride):
    ids = tokenizer.encode(verdict_text)
    dataset = GPTDatasetV1(verdict_text, tokenizer, max_length, stride)
    starts = range(0, len(ids) - max_length, stride)
    assert len(dataset) == len(starts)
    assert dataset.input_ids.dtype == dataset.target_ids.dtype == numpy.int64
    for k in (0, 1, len(starts) // 2, len(starts) - 1):
        inputs, targets = dataset[k]
        assert inputs.tolist() == ids[starts[k]:starts[k] + max_length]
        assert targets.tolist() == ids[starts[k] + 1:starts[k] + max_length + 1]
    assert dataset.target_ids[-1, -1] == ids[starts[-1] + max_length]


def test_loader_batches_hold_dataset_windows(verdict_text, tokenizer):
    dataset = GPTDatasetV1(verdict_text, tokenizer, max_length=8, stride=8)
    loader = DataLoader(dataset, batch_size=3, shuffle=False, drop_last=False)
    inputs = numpy.concatenate([x for x, _ in loader])
    targets = numpy.concatenate([y for _, y in loader])
    numpy.testing.assert_array_equal(inputs, dataset.input_ids)
    numpy.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])


def test_load_the_verdict_from_a_path(verdict_path, verdict_text):
    assert load_the_verdict(path=verdict_path) == verdict_text


# ---------------------------------------------------------------- dataset arguments


def test_text_too_short_names_both_numbers(tokenizer):
    with pytest.raises(ValueError, match=r"3 tokens.*max_length \+ 1 = 4"):
        GPTDatasetV1("Hello, world", tokenizer, max_length=3, stride=1)
    assert len(GPTDatasetV1("Hello, world", tokenizer, max_length=2, stride=1)) == 1


@pytest.mark.parametrize("max_length, stride", [(0, 1), (4, 0), (-1, -1)])
def test_bad_window_arguments(tokenizer, max_length, stride):
    with pytest.raises(ValueError, match="must be >= 1"):
        GPTDatasetV1("Every effort moves you forward", tokenizer, max_length, stride)


def test_create_dataloader_rejects_workers_and_defaults_the_tokenizer():
    with pytest.raises(ValueError, match="num_workers=2"):
        create_dataloader_v1("Every effort moves you", num_workers=2)
    loader = create_dataloader_v1("Every effort moves you forward", batch_size=1,
                                  max_length=3, stride=1, shuffle=False)
    assert [x.tolist() for x, _ in loader] == [[[6109, 3626, 6100]], [[3626, 6100, 345]]]


# ---------------------------------------------------------------- loader


@pytest.mark.parametrize("n_items, batch_size, drop_last, expected", [
    (5, 2, True, 2), (5, 2, False, 3), (4, 2, True, 2), (4, 2, False, 2), (1, 2, True, 0), (1, 2, False, 1),
])
def test_len_as_torch(n_items, batch_size, drop_last, expected):
    loader = DataLoader(IndexDataset(n_items), batch_size=batch_size, drop_last=drop_last)
    batches = list(loader)
    assert len(loader) == len(batches) == expected
    if not drop_last and n_items % batch_size:
        assert batches[-1][0].shape == (n_items % batch_size, 3)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(IndexDataset(3), batch_size=0)


def test_unshuffled_order_and_int64():
    batches = list(DataLoader(IndexDataset(5), batch_size=2))
    assert item_order(batches) == [0, 1, 2, 3, 4]
    for inputs, targets in batches:
        assert inputs.dtype == targets.dtype == numpy.int64
        numpy.testing.assert_array_equal(targets, -inputs)


def test_shuffle_follows_the_global_seed():
    loader = DataLoader(IndexDataset(20), batch_size=3, shuffle=True)
    backend.manual_seed(123)
    first = item_order(loader)
    backend.manual_seed(123)
    again = item_order(loader)
    backend.manual_seed(124)
    other = item_order(loader)
    assert first == again
    assert other != first
    assert sorted(first) == sorted(other) == list(range(20))  # every item once per epoch


def test_each_epoch_draws_a_new_permutation():
    loader = DataLoader(IndexDataset(20), batch_size=4, shuffle=True, drop_last=True)
    backend.manual_seed(0)
    epoch1, epoch2 = item_order(loader), item_order(loader)
    assert epoch1 != epoch2
    assert len(set(epoch1)) == len(epoch1) == 20


def test_permutation_is_drawn_when_iteration_starts():
    loader = DataLoader(IndexDataset(20), batch_size=4, shuffle=True)
    backend.manual_seed(7)
    expected = item_order(loader)
    backend.manual_seed(7)
    batches = iter(loader)
    backend.manual_seed(8)  # too late: the order was drawn by iter()
    assert item_order(batches) == expected


def test_explicit_generator_leaves_the_global_one_alone():
    backend.manual_seed(5)
    state = backend.get_rng_state()
    orders = [item_order(DataLoader(IndexDataset(20), batch_size=4, shuffle=True,
                                    generator=numpy.random.default_rng(42))) for _ in range(2)]
    assert orders[0] == orders[1]
    assert backend.get_rng_state() == state


def test_resume_mid_epoch_yields_exactly_the_rest():
    dataset = IndexDataset(23)
    backend.manual_seed(123)
    reference = DataLoader(dataset, batch_size=4, shuffle=True, drop_last=False)
    epoch1, epoch2 = list(reference), list(reference)

    backend.manual_seed(123)
    interrupted = DataLoader(dataset, batch_size=4, shuffle=True, drop_last=False)
    batches = iter(interrupted)
    done = [next(batches) for _ in range(2)]
    loader_state = json.loads(json.dumps(batches.state_dict()))
    rng_state = json.loads(json.dumps(backend.get_rng_state()))
    list(interrupted)  # an evaluation pass in the middle of the epoch leaves the epoch alone
    assert item_order([next(batches)]) == item_order(epoch1[2:3])
    assert loader_state["batches_yielded"] == 2
    assert sorted(loader_state["epoch_order"]) == list(range(23))

    backend.manual_seed(999)  # a new process: whatever the generator holds
    resumed = DataLoader(dataset, batch_size=4, shuffle=True, drop_last=False)
    resumed.load_state_dict(loader_state)
    backend.set_rng_state(rng_state)
    rest = list(resumed)
    assert item_order(done) == item_order(epoch1[:2])
    assert item_order(rest) == item_order(epoch1[2:])
    assert item_order(resumed) == item_order(epoch2)  # the next epoch is fresh again


def test_resuming_a_finished_epoch_yields_nothing_then_a_new_epoch():
    loader = DataLoader(IndexDataset(6), batch_size=2)
    batches = iter(loader)
    list(batches)
    assert batches.state_dict() == {"epoch_order": None, "batches_yielded": 3}
    resumed = DataLoader(IndexDataset(6), batch_size=2)
    resumed.load_state_dict(batches.state_dict())
    assert item_order(resumed) == []
    assert item_order(resumed) == [0, 1, 2, 3, 4, 5]


def test_unshuffled_resume():
    loader = DataLoader(IndexDataset(7), batch_size=2)
    loader.load_state_dict({"epoch_order": None, "batches_yielded": 2})
    assert item_order(loader) == [4, 5, 6]
    assert item_order(loader) == list(range(7))


@pytest.mark.parametrize("state, message", [
    ({"epoch_order": [0, 1, 1], "batches_yielded": 0}, "permutation"),
    ({"epoch_order": [0, 1], "batches_yielded": 0}, "permutation"),
    ({"epoch_order": None, "batches_yielded": 0}, "shuffles"),
    ({"epoch_order": [2, 0, 1], "batches_yielded": 3}, "batches_yielded"),
])
def test_bad_state_is_rejected(state, message):
    loader = DataLoader(IndexDataset(3), batch_size=2, shuffle=True)
    with pytest.raises(ValueError, match=message):
        loader.load_state_dict(state)


# ---------------------------------------------------------------- reading text


def test_read_text_missing_file(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="nope.txt") as raised:
        read_text(missing)
    assert isinstance(raised.value, ValueError)


def test_read_text_non_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf".encode() + b"\xe9 au lait")
    with pytest.raises(DataError, match=r"latin1\.txt.*byte offset 3"):
        read_text(path)


def test_read_text_normalises_newlines_like_text_mode(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"one\r\ntwo\rthree\n")
    assert read_text(path) == "one\ntwo\nthree\n"


def test_split_text_rejects_bad_ratio():
    with pytest.raises(ValueError, match="train_ratio"):
        split_text("abc", train_ratio=1.5)


# ---------------------------------------------------------------- the bundled corpus


def test_load_the_verdict_is_the_bundled_copy_with_no_network(monkeypatch, verdict_text):
    def no_network(*args, **kwargs):
        raise AssertionError("load_the_verdict tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    text = load_the_verdict()
    assert text == verdict_text and len(text) == VERDICT_N_CHARS
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == VERDICT_SHA256


# ---------------------------------------------------------------- special tokens
def test_a_literal_endoftext_in_training_text_is_ordinary_text_by_default(tokenizer):
    text = "one two three <|endoftext|> four five six seven eight"
    plain = GPTDatasetV1(text, tokenizer, max_length=4, stride=4)
    assert 50256 not in plain.input_ids and 50256 not in plain.target_ids
    assert tokenizer.decode(list(plain.input_ids[0]) + list(plain.input_ids[1])).startswith("one two three <|")
    special = GPTDatasetV1(text, tokenizer, max_length=4, stride=4, allowed_special={"<|endoftext|>"})
    assert 50256 in numpy.concatenate([special.input_ids.ravel(), special.target_ids.ravel()])
