"""Datasets, loaders and the corpus: the seed's numbers on "The Verdict",
windows checked against the raw token stream, shuffling, resuming, any
map-style dataset (lists, user classes, dict items, Subset) collated like
torch's default collate, and the bundled corpus read with no network."""
import hashlib
import json
import socket

import numpy
import pytest

from numgpt import backend
from numgpt.data.datasets import (VERDICT_SHA256, DataError, DataLoader, GPTDatasetV1, Subset, create_dataloader_v1,
                                  default_collate, load_the_verdict, read_text, split_text)

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

    def __getitem__(self, i):  # one integer index, as DataLoader asks a dataset with no get_batch
        if not isinstance(i, int):
            raise TypeError(f"IndexDataset takes one int index, got {type(i).__name__}")
        inputs = numpy.full(self.length, i)
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


# ---------------------------------------------------------------- any map-style dataset


def token_pairs(n_items, length, seed=0):
    """n_items (inputs, targets) int64 pairs cut from one random token stream, targets one token later."""
    tokens = numpy.random.default_rng(seed).integers(0, 50257, n_items + length)
    return [(tokens[i:i + length], tokens[i + 1:i + length + 1]) for i in range(n_items)]


def stacked(pairs, items):
    """The batch of ``pairs`` at ``items``, stacked by hand."""
    return (numpy.stack([pairs[i][0] for i in items]), numpy.stack([pairs[i][1] for i in items]))


@pytest.mark.parametrize("pair", [tuple, list], ids=["tuple-items", "list-items"])
def test_a_list_of_pairs_batches_like_numpy_stack(pair):
    pairs = [pair(item) for item in token_pairs(7, length=5)]
    batches = list(DataLoader(pairs, batch_size=3))
    assert all(type(batch) is tuple and len(batch) == 2 for batch in batches)  # a record of two fields
    assert [len(inputs) for inputs, _ in batches] == [3, 3, 1]
    for k, (inputs, targets) in enumerate(batches):
        expected_inputs, expected_targets = stacked(pairs, range(3 * k, min(3 * k + 3, 7)))
        assert inputs.dtype == targets.dtype == numpy.int64
        numpy.testing.assert_array_equal(inputs, expected_inputs)
        numpy.testing.assert_array_equal(targets, expected_targets)


def test_a_list_of_pairs_shuffles_and_resumes_exactly():
    pairs = token_pairs(11, length=4)
    backend.manual_seed(3)
    whole = iter(DataLoader(pairs, batch_size=2, shuffle=True, drop_last=True))
    epoch = list(whole)
    order = whole.state_dict()["epoch_order"]
    assert sorted(order) != order and sorted(order) == list(range(11))
    for k, (inputs, targets) in enumerate(epoch):  # each batch holds the recorded order's items
        expected_inputs, expected_targets = stacked(pairs, order[2 * k:2 * k + 2])
        numpy.testing.assert_array_equal(inputs, expected_inputs)
        numpy.testing.assert_array_equal(targets, expected_targets)

    backend.manual_seed(3)
    batches = iter(DataLoader(pairs, batch_size=2, shuffle=True, drop_last=True))
    done = [next(batches) for _ in range(2)]
    resumed = DataLoader(pairs, batch_size=2, shuffle=True, drop_last=True)
    resumed.load_state_dict(json.loads(json.dumps(batches.state_dict())))
    for (inputs, targets), (expected_inputs, expected_targets) in zip(done + list(resumed), epoch, strict=True):
        numpy.testing.assert_array_equal(inputs, expected_inputs)
        numpy.testing.assert_array_equal(targets, expected_targets)


class ListWindows:
    """A user's dataset: only __len__ and an integer __getitem__, items a tuple of two rows."""

    def __init__(self, rows, as_array):
        self.rows, self.as_array = rows, as_array

    def __len__(self):
        return len(self.rows) - 1

    def __getitem__(self, i):
        if not isinstance(i, int):
            raise TypeError(f"ListWindows takes one int index, got {type(i).__name__}")
        inputs, targets = self.rows[i], self.rows[i + 1]
        if self.as_array:
            return numpy.array(inputs, dtype=numpy.int32), numpy.array(targets, dtype=numpy.int32)
        return inputs, targets


@pytest.mark.parametrize("as_array", [False, True], ids=["python-lists", "int32-arrays"])
def test_a_user_dataset_with_only_len_and_integer_getitem(as_array):
    rows = [[10 * r + c for c in range(4)] for r in range(6)]
    inputs, targets = next(iter(DataLoader(ListWindows(rows, as_array), batch_size=3)))
    assert inputs.dtype == targets.dtype == numpy.int64  # int lists and int32 rows both come out int64
    assert inputs.tolist() == rows[0:3]
    assert targets.tolist() == rows[1:4]


def test_dict_items_collate_to_a_dict_of_stacks_recursively():
    items = [{"pair": (numpy.arange(3) + i, [i, i]), "mask": numpy.full(3, i / 2, dtype=numpy.float32),
              "weight": 0.5 * i} for i in range(5)]
    batch = next(iter(DataLoader(items, batch_size=4)))
    assert set(batch) == {"pair", "mask", "weight"}
    inputs, pairs = batch["pair"]
    assert inputs.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]] and inputs.dtype == numpy.int64
    assert pairs.tolist() == [[0, 0], [1, 1], [2, 2], [3, 3]] and pairs.dtype == numpy.int64
    assert batch["mask"].dtype == numpy.float32 and batch["mask"].shape == (4, 3)
    numpy.testing.assert_array_equal(batch["mask"][:, 0], [0.0, 0.5, 1.0, 1.5])
    assert batch["weight"].dtype == numpy.float64 and batch["weight"].tolist() == [0.0, 0.5, 1.0, 1.5]


@pytest.mark.parametrize("items, message", [
    ([(numpy.arange(4), numpy.arange(4)), (numpy.arange(4), numpy.arange(3))],
     r"field \[1\] of item 1 has shape \(3,\) but field \[1\] of item 0 has \(4,\)"),
    ([{"ids": [1, 2]}, {"ids": [1, 2]}, {"ids": [[1, 2]]}],
     r"field \['ids'\] of item 2 has shape \(1, 2\) but field \['ids'\] of item 0 has \(2,\)"),
    ([numpy.zeros((2, 3)), numpy.zeros((3, 2))], r"^item 1 has shape \(3, 2\) but item 0 has \(2, 3\)"),
    ([([1, 2], 0), ([[1, 2], [3]], 1)], r"field \[0\] of item 1 is not a rectangular array"),
    ([(1, 2), (1, 2, 3)], r"^item 1 is a tuple of 3 fields; item 0 has 2 fields"),
    ([{"a": 1}, {"b": 1}], r"^item 1 is a dict with keys \['b'\]; item 0 is a dict with keys \['a'\]"),
])
def test_items_that_cannot_be_stacked_name_the_field_the_item_and_the_shapes(items, message):
    loader = DataLoader(items, batch_size=len(items))
    batches = iter(loader)
    with pytest.raises(DataError, match=message):
        next(batches)
    assert batches.state_dict()["batches_yielded"] == 0  # the failed batch is not counted as yielded


def test_default_collate_names_dataset_indices_and_needs_items():
    with pytest.raises(DataError, match=r"^item 17 has shape \(1,\) but item 4 has \(2,\)"):
        default_collate([numpy.zeros(2), numpy.zeros(1)], indices=[4, 17])
    with pytest.raises(DataError, match="at least one item"):
        default_collate([])


def test_a_generator_is_not_a_dataset_but_its_list_is():
    def pairs():
        for i in range(4):
            yield numpy.arange(2) + i, numpy.arange(2) + i + 1

    with pytest.raises(DataError, match=r"__len__ and __getitem__.*generator.*list\("):
        DataLoader(pairs(), batch_size=2)
    with pytest.raises(DataError, match="generator"):
        Subset(pairs(), [0])
    inputs, targets = next(iter(DataLoader(list(pairs()), batch_size=4)))
    assert inputs.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert targets.tolist() == [[1, 2], [2, 3], [3, 4], [4, 5]]


# ---------------------------------------------------------------- Subset and the fast path


class BatchOnly:
    """A dataset with a get_batch fast path whose __getitem__ must never be used by a loader."""

    def __init__(self, n_items):
        self.n_items, self.calls = n_items, []

    def __len__(self):
        return self.n_items

    def __getitem__(self, i):
        raise AssertionError("the loader fetched one item although the dataset has get_batch")

    def get_batch(self, indices):
        self.calls.append([int(i) for i in indices])
        return numpy.asarray(indices)[:, None] * 10  # (B, 1)


def test_a_get_batch_method_is_the_fast_path_and_subset_keeps_it():
    dataset = BatchOnly(10)
    batches = list(DataLoader(Subset(Subset(dataset, [9, 7, 5, 3, 1]), range(1, 5)), batch_size=3))
    assert dataset.calls == [[7, 5, 3], [1]]  # one call per batch, subset positions mapped twice
    assert [b.tolist() for b in batches] == [[[70], [50], [30]], [[10]]]


def test_gpt_dataset_batches_come_from_one_get_batch_call(verdict_text, tokenizer, monkeypatch):
    dataset = GPTDatasetV1(verdict_text, tokenizer, max_length=4, stride=4)
    calls, get_batch = [], dataset.get_batch

    def counted_get_batch(indices):
        calls.append(len(indices))
        return get_batch(indices)

    monkeypatch.setattr(dataset, "get_batch", counted_get_batch)
    loader = DataLoader(dataset, batch_size=64, drop_last=True)
    assert len(list(loader)) == len(calls) == len(dataset) // 64 and set(calls) == {64}


def test_a_subset_of_windows_is_the_windows_at_its_indices(verdict_text, tokenizer):
    ids = tokenizer.encode(verdict_text)
    max_length, stride = 6, 5
    dataset = GPTDatasetV1(verdict_text, tokenizer, max_length, stride)
    picks = [40, 0, 7, 7, len(dataset) - 1]
    subset = Subset(dataset, picks)
    assert len(subset) == len(picks)
    inputs, targets = subset[0]
    assert inputs.tolist() == ids[40 * stride:40 * stride + max_length]
    batches = list(DataLoader(subset, batch_size=2))
    assert len(batches) == 3
    inputs = numpy.concatenate([x for x, _ in batches])
    targets = numpy.concatenate([y for _, y in batches])
    assert inputs.tolist() == [ids[p * stride:p * stride + max_length] for p in picks]
    assert targets.tolist() == [ids[p * stride + 1:p * stride + max_length + 1] for p in picks]


def test_a_subset_of_a_list_collates_its_items():
    pairs = token_pairs(6, length=3)
    subset = Subset(pairs, numpy.array([5, 2]))
    assert subset[1] is pairs[2]
    inputs, targets = next(iter(DataLoader(subset, batch_size=2)))
    expected_inputs, expected_targets = stacked(pairs, [5, 2])
    numpy.testing.assert_array_equal(inputs, expected_inputs)
    numpy.testing.assert_array_equal(targets, expected_targets)
    assert len(Subset(pairs, [])) == len(DataLoader(Subset(pairs, []))) == 0


@pytest.mark.parametrize("indices, message", [
    ([0, 6], r"index 6 is outside the dataset's 6 items; expected indices in \[0, 6\)"),
    ([-1], r"index -1 is outside"),
    ([[0, 1]], r"1-D sequence of integers.*shape \(1, 2\)"),
    ([0.5], r"1-D sequence of integers.*float64"),
])
def test_subset_rejects_bad_indices(indices, message):
    with pytest.raises(DataError, match=message):
        Subset(token_pairs(6, length=3), indices)


@pytest.mark.parametrize("indices", [range(1), [0]], ids=["range(1)", "[0]"])
def test_one_window_loaders_as_the_reference_train_test(seed_loaders, verdict_text, tokenizer, indices):
    """The reference package's train_model_simple test: one-window loaders from Subset."""
    train_text, val_text = split_text(verdict_text, train_ratio=0.9)
    for loader, text in zip(seed_loaders, (train_text, val_text)):
        one_batch_loader = DataLoader(Subset(loader.dataset, indices), batch_size=1)
        ids = tokenizer.encode(text)[:CONTEXT_LENGTH + 1]  # the first window, from the raw stream
        batches = list(one_batch_loader)
        assert len(one_batch_loader) == len(batches) == 1
        inputs, targets = batches[0]
        assert inputs.shape == targets.shape == (1, CONTEXT_LENGTH)
        assert inputs.dtype == targets.dtype == numpy.int64
        assert inputs.tolist() == [ids[:-1]] and targets.tolist() == [ids[1:]]
        assert [x.tolist() for x, _ in one_batch_loader] == [[ids[:-1]]]  # every epoch the same one batch


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
