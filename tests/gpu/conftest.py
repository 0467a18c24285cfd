"""Shared by the CUDA tests (marker ``gpu``, deselected by default)."""

import pytest

from testbed.datasets import load_dataset


@pytest.fixture(scope="module")
def sentences():
    """The first 48 test sentences every CUDA comparison decodes."""
    return load_dataset("test", limit=48)
