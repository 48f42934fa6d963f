"""The suite's own rule (tests/conftest.py): every test starts from the same random state, so a model a
test builds without a seed does not depend on what ran before it on the same worker."""

import random

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("draws", [1000, 0])  # the first moves every generator on; the second must not see it
def test_each_test_starts_from_seed_zero(draws):
    expected = (torch.rand(3, generator=torch.Generator().manual_seed(0)), np.random.RandomState(0).rand(3),
                random.Random(0).random())
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    torch.rand(draws), np.random.rand(draws), [random.random() for _ in range(draws)]
