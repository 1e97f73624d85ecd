"""Unit tests run tiny torch models on shared cores."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread_seeded():
    """One intra-op thread (extra threads only spin-wait on tiny tensors: measured 2-7× slower), seed 0."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
