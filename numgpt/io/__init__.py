"""Files in and out: safetensors read safely (safe_io.py), checkpoints (checkpoint.py), Hugging
Face sharded weights and the hub (hf_weights.py, hub.py), GPT-2's downloads and weights
(download.py, pretrained.py), the families' loaders (families.py), tokenizers (tokenizer.py,
hf_tokenizer.py) and the bundled resources (bundled.py). Nothing read executes code."""
