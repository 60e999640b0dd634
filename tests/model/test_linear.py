"""Projection.merged_with: x @ (W + delta)^T + b, packed or not, leaving W untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loraserve.model.linear import Projection


@pytest.mark.parametrize("packed", [True, False], ids=["prepacked", "plain"])
def test_merged_with_adds_delta_and_keeps_the_original(packed):
    torch.manual_seed(0)
    weight, bias = torch.randn(40, 24), torch.randn(40)
    delta, x = torch.randn(40, 24), torch.randn(5, 24)
    projection = Projection(weight, bias)
    if not packed:
        projection.packed, projection.weight = None, weight
    assert (projection.packed is not None) == packed or not torch.backends.mkldnn.is_available()
    before = projection(x)
    merged = projection.merged_with(delta)
    torch.testing.assert_close(merged(x), F.linear(x, weight + delta, bias), rtol=1e-5, atol=1e-5)
    assert torch.equal(projection(x), before)
