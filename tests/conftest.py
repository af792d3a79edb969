"""Fixtures shared by the test modules."""
import pytest
import torch


@pytest.fixture
def float64():
    """float64 as the default dtype for one test (exact comparisons with hand evaluations)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
