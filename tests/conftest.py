# ruff: noqa: I001  (the import order matters: bench before torch)
import bench  # noqa: F401  first: it sets the numerics mode before torch loads (bench.numerics)
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_default_dtype():
    """Tests run on a 2-core CI machine: keep torch to its defaults, restore the dtype after."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
