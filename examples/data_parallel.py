"""The seed's training loop, data-parallel over MPI: run it as

    mpiexec -n 2 python examples/data_parallel.py

(or plain ``python examples/data_parallel.py``: one process, the same code).
The only changes from the seed's script: ``world=numgpt.training.distributed.world()``
passed to train_model_simple, and printing on rank 0 only. Every process
builds the same model and loader from the same seed; each takes its share of
every global batch, and the gradients are averaged after each backward pass.

A loop of your own does the averaging with a GradientAverager: arm it before
the backward pass that completes a step, finish it after.

    averager = world.gradient_averager(model.parameters())   # None in one process
    averager.arm(); loss.backward(); averager.finish()
"""
import numgpt

world = numgpt.training.distributed.world()
numgpt.manual_seed(123)
cfg = dict(numgpt.GPT_CONFIG_124M, emb_dim=64, n_heads=4, n_layers=2, context_length=64)
model = numgpt.GPTModel(cfg)
tokenizer = numgpt.get_tokenizer()
train_text, val_text = numgpt.split_text(numgpt.load_the_verdict(), 0.9)
train_loader = numgpt.create_dataloader_v1(train_text, batch_size=2, max_length=64, stride=64)
val_loader = numgpt.create_dataloader_v1(val_text, batch_size=2, max_length=64, stride=64, shuffle=False,
                                         drop_last=False)
optimizer = numgpt.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
train_losses, val_losses, tokens_seen = numgpt.train_model_simple(
    model, train_loader, val_loader, optimizer, "cpu", num_epochs=1, eval_freq=4, eval_iter=2,
    start_context="Every effort moves you", tokenizer=tokenizer, max_steps=8, world=world)
if world.is_main:
    print(f"{world.size} process(es): global batch {2 * world.size} x 64 tokens, "
          f"last validation loss {val_losses[-1]:.3f}, {tokens_seen[-1]} tokens seen")
