"""Test-wide settings."""

import torch

# Tiny models run fastest on one thread; two threads on two busy cores are ~20x slower per matmul.
torch.set_num_threads(1)
