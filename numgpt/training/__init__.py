"""Training: the loop, losses and evaluation (train.py), the run directory (run.py),
data-parallel training over MPI (distributed.py) and the loss plot (plot.py)."""
