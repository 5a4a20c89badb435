"""Generation: greedy and sampled, batch-safe top-k and eos, the KV cache
against full recomputation, cropping and sliding past the window."""
import numpy as np
import pytest

import numgpt
from numgpt.models.generate import generate, generate_text_simple, next_token_logits, sample_next

CFG = {"vocab_size": 30, "context_length": 8, "emb_dim": 16, "n_heads": 4, "n_layers": 2,
       "drop_rate": 0.1, "qkv_bias": True}
# float32 logits of a cached step against a full recomputation of the same window
CACHE_LOGITS_ATOL = 1e-5


@pytest.fixture
def model():
    numgpt.manual_seed(11)
    return numgpt.GPTModel(CFG).eval()


def seed_style_greedy(model, idx, max_new_tokens, context_size):
    """The seed's cache-less loop, written out with NumPy: the reference."""
    for _ in range(max_new_tokens):
        with numgpt.no_grad():
            logits = model(idx[:, -context_size:]).data[:, -1, :]
        idx = np.concatenate([idx, logits.argmax(axis=-1)[:, None]], axis=1)
    return idx


@pytest.mark.parametrize("prompt_len", [1, 3, 8, 11])
def test_cached_logits_equal_full_recomputation_including_past_the_window(model, prompt_len):
    idx = np.random.default_rng(0).integers(0, 30, size=(2, prompt_len))
    cached = next_token_logits(model, idx, 8, use_cache=True)
    full = next_token_logits(model, idx, 8, use_cache=False)
    a, b = next(cached), next(full)
    worst = np.abs(a - b).max()
    for _ in range(12):  # runs past context_length: the window slides
        ids = a.argmax(axis=-1)[:, None]
        a, b = cached.send(ids), full.send(ids)
        worst = max(worst, np.abs(a - b).max())
        assert a.dtype == np.float32
    print(f"worst |cached - full| logits: {worst:.2e}")
    assert worst < CACHE_LOGITS_ATOL


def test_greedy_matches_the_seeds_loop_with_and_without_cache(model):
    idx = np.array([[1, 2, 3], [4, 5, 6]])
    reference = seed_style_greedy(model, idx, 12, 8)
    np.testing.assert_array_equal(generate_text_simple(model, idx, 12, 8), reference)
    np.testing.assert_array_equal(generate_text_simple(model, idx, 12, 8, use_cache=False), reference)
    assert reference.dtype == np.int64 and reference.shape == (2, 15)


def test_context_size_crops_the_window(model):
    idx = np.array([[1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(generate(model, idx, 5, context_size=3), seed_style_greedy(model, idx, 5, 3))


def test_sampling_is_seeded_and_temperature_zero_is_greedy(model):
    idx = np.array([[1, 2, 3]])
    numgpt.manual_seed(5)
    a = generate(model, idx, 10, 8, temperature=1.4, top_k=25)
    numgpt.manual_seed(5)
    b = generate(model, idx, 10, 8, temperature=1.4, top_k=25)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(generate(model, idx, 10, 8, temperature=0.0, top_k=5),
                                  generate_text_simple(model, idx, 10, 8))


def test_top_k_is_per_row():
    logits = np.array([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]], dtype=np.float32)
    draws = np.concatenate([sample_next(logits, temperature=10.0, top_k=2, generator=np.random.default_rng(s))
                            for s in range(200)], axis=1)
    assert set(draws[0]) == {0, 1} and set(draws[1]) == {3, 4}


def test_sampling_follows_the_softmax():
    logits = np.log(np.array([[0.5, 0.3, 0.2]], dtype=np.float32))
    rng = np.random.default_rng(0)
    draws = np.array([sample_next(logits, 1.0, generator=rng)[0, 0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    print(freq)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.03)


def test_eos_stops_each_row_and_the_batch(model):
    idx = np.array([[1, 2, 3], [7, 8, 9]])
    greedy = generate_text_simple(model, idx, 10, 8)
    eos = int(greedy[0, 4])                                  # row 0's second new token
    out = generate(model, idx, 10, 8, eos_id=eos)
    first_eos = [int(np.argmax(row[3:] == eos)) if (row[3:] == eos).any() else None for row in greedy]
    if first_eos[1] is None or first_eos[1] > first_eos[0]:
        assert (out[0, 3 + first_eos[0]:] == eos).all()       # row 0 padded with eos after it stopped
    single = generate(model, idx[:1], 10, 8, eos_id=eos)
    assert single.shape[1] == 3 + first_eos[0]               # the seed: eos not appended, generation ends


def test_bad_arguments(model):
    idx = np.array([[1, 2]])
    with pytest.raises(ValueError, match="temperature"):
        generate(model, idx, 3, 8, temperature=-0.5)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, idx, 3, 8, top_k=0)
    with pytest.raises(ValueError, match="shape"):
        generate(model, np.array([1, 2]), 3, 8)


def test_cached_attention_refuses_to_run_under_grad(model):
    cache = model.new_kv_cache(1)
    with pytest.raises(RuntimeError, match="no_grad"):
        model.train()(np.array([[1, 2]]), kv_cache=cache)


def test_a_suspended_generation_leaves_grad_mode_alone(model):
    steps = next_token_logits(model, np.array([[1, 2]]), 8)
    next(steps)
    assert numgpt.is_grad_enabled()
    steps.close()
