"""Research tests share the CI's 2 cores with the product's: one torch thread, as tests/conftest.py sets."""
import torch

torch.set_num_threads(1)
