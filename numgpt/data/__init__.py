"""Data (as ``torch.utils.data``): datasets and loaders (datasets.py), the token store
(token_store.py), other trainers' token files (token_files.py) and ``numgpt prepare`` (prepare.py)."""
from numgpt.data.datasets import (FEISTEL_ROUNDS, LITERAL_ORDER_LIMIT, VERDICT_SHA256, DataError, DataLoader,
                                  GPTDatasetV1, KeyedPermutation, LoaderIterator, RandomWindowIterator,
                                  RandomWindowLoader, Subset, TokenWindows, TooFewTokens, create_dataloader_v1,
                                  default_collate, fetch_batch, load_the_verdict, read_text, split_text)

__all__ = ["FEISTEL_ROUNDS", "LITERAL_ORDER_LIMIT", "VERDICT_SHA256", "DataError", "DataLoader", "GPTDatasetV1",
           "KeyedPermutation", "LoaderIterator", "RandomWindowIterator", "RandomWindowLoader", "Subset",
           "TokenWindows", "TooFewTokens", "create_dataloader_v1", "default_collate", "fetch_batch",
           "load_the_verdict", "read_text", "split_text"]
