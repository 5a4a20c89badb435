"""The seed's pretraining walkthrough, ported to numgpt with mechanical changes
only (see the table in README.md): imports, device names, and torch helpers
replaced by their numgpt or NumPy counterparts. The seed's own helper
functions (generate_text_simple, calc_loss_batch, train_model_simple, ...)
are imported from numgpt under the same names.

Run it where the-verdict.txt is (or can be downloaded): python seed_port.py
"""
import os
import time
import urllib.request

import numpy as np                                            # torch -> numpy

import numgpt
from numgpt import GPTModel                                   # previous_chapters -> numgpt
from numgpt import (calc_loss_loader, create_dataloader_v1, generate, generate_text_simple, plot_losses,
                    text_to_token_ids, token_ids_to_text, train_model_simple)

GPT_CONFIG_124M = {
    "vocab_size": 50257,     # Vocabulary size
    "context_length": 256,   # Shortened context length (orig: 1024)
    "emb_dim": 768,          # Embedding dimension
    "n_heads": 12,           # Number of attention heads
    "n_layers": 12,          # Number of layers
    "drop_rate": 0.1,        # Dropout rate
    "qkv_bias": False,       # Query-key-value bias
}
num_epochs = 10
if os.environ.get("SEED_PORT_SMOKE"):   # not in the seed: numgpt's test suite runs this at a smoke-test size
    GPT_CONFIG_124M.update(emb_dim=64, n_heads=2, n_layers=2)
    num_epochs = 1

numgpt.manual_seed(123)                                       # torch.manual_seed
model = GPTModel(GPT_CONFIG_124M)
model.eval()  # Disable dropout during inference

file_path = "the-verdict.txt"
url = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt"
if not os.path.exists(file_path):
    with urllib.request.urlopen(url) as response:
        text_data = response.read().decode('utf-8')
    with open(file_path, "w", encoding="utf-8") as file:
        file.write(text_data)
else:
    with open(file_path, "r", encoding="utf-8") as file:
        text_data = file.read()

start_context = "Every effort moves you"
tokenizer = numgpt.get_tokenizer()                            # tiktoken.get_encoding("gpt2"), offline
token_ids = generate_text_simple(
    model=model,
    idx=text_to_token_ids(start_context, tokenizer),
    max_new_tokens=10,
    context_size=GPT_CONFIG_124M["context_length"]
)
print("Output text:\n", token_ids_to_text(token_ids, tokenizer))

# Train/validation ratio
train_ratio = 0.90
split_idx = int(train_ratio * len(text_data))
train_data = text_data[:split_idx]
val_data = text_data[split_idx:]
numgpt.manual_seed(123)
train_loader = create_dataloader_v1(
    train_data,
    batch_size=2,
    max_length=GPT_CONFIG_124M["context_length"],
    stride=GPT_CONFIG_124M["context_length"],
    drop_last=True,
    shuffle=True,
    num_workers=0
)
val_loader = create_dataloader_v1(
    val_data,
    batch_size=2,
    max_length=GPT_CONFIG_124M["context_length"],
    stride=GPT_CONFIG_124M["context_length"],
    drop_last=False,
    shuffle=False,
    num_workers=0
)

print("Train loader:")
for x, y in train_loader:
    print(x.shape, y.shape)
print("\nValidation loader:")
for x, y in val_loader:
    print(x.shape, y.shape)

train_tokens = 0
for input_batch, _target_batch in train_loader:
    train_tokens += input_batch.size                          # .numel() -> .size
val_tokens = 0
for input_batch, _target_batch in val_loader:
    val_tokens += input_batch.size
print("Training tokens:", train_tokens)
print("Validation tokens:", val_tokens)
print("All tokens:", train_tokens + val_tokens)

# torch.device("cuda" if torch.cuda.is_available() else "cpu")
device = "cuda" if numgpt.cuda.is_available() else "cpu"
model.to(device)
numgpt.manual_seed(123)
with numgpt.no_grad():                                        # torch.no_grad
    train_loss = calc_loss_loader(train_loader, model, device)
    val_loss = calc_loss_loader(val_loader, model, device)
print("Training loss:", train_loss)
print("Validation loss:", val_loss)

start_time = time.time()
numgpt.manual_seed(123)
model = GPTModel(GPT_CONFIG_124M)
model.to(device)
optimizer = numgpt.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1)   # torch.optim.AdamW
train_losses, val_losses, tokens_seen = train_model_simple(
    model, train_loader, val_loader, optimizer, device,
    num_epochs=num_epochs, eval_freq=5, eval_iter=5,
    start_context="Every effort moves you", tokenizer=tokenizer
)
end_time = time.time()
execution_time_minutes = (end_time - start_time) / 60
print(f"Training completed in {execution_time_minutes:.2f} minutes.")

epochs_tensor = np.linspace(0, num_epochs, len(train_losses))   # torch.linspace
plot_losses(epochs_tensor, tokens_seen, train_losses, val_losses)   # saves loss-plot.pdf

model.to("cpu")
model.eval()
token_ids = generate_text_simple(
    model=model,
    idx=text_to_token_ids("Every effort moves you", tokenizer),
    max_new_tokens=25,
    context_size=GPT_CONFIG_124M["context_length"]
)
print("Output text:\n", token_ids_to_text(token_ids, tokenizer))

numgpt.manual_seed(123)
token_ids = generate(
    model=model,
    idx=text_to_token_ids("Every effort moves you", tokenizer),
    max_new_tokens=15,
    context_size=GPT_CONFIG_124M["context_length"],
    top_k=25,
    temperature=1.4
)
print("Output text:\n", token_ids_to_text(token_ids, tokenizer))

numgpt.save_checkpoint("model_and_optimizer", model, optimizer)     # torch.save({...}, "....pth")
checkpoint = numgpt.load_checkpoint("model_and_optimizer")          # torch.load(..., weights_only=True)
model = GPTModel(GPT_CONFIG_124M)
model.load_state_dict(checkpoint.model_state)                       # checkpoint["model_state_dict"]
optimizer = numgpt.AdamW(model.parameters(), lr=0.0005, weight_decay=0.1)
optimizer.load_state_dict(checkpoint.optimizer_state)               # checkpoint["optimizer_state_dict"]
model.train()
