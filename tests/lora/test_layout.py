"""How B slices are stacked: consecutive equal widths share one tensor."""

from __future__ import annotations

import pytest

from loraserve.lora.layout import slice_stacks


@pytest.mark.parametrize(
    ("widths", "stacks"),
    [
        ((512, 512, 512), [(3, 512)]),  # q/k/v without GQA: one stack
        ((512, 128, 128), [(1, 512), (2, 128)]),  # with GQA: q, then k and v
        ((1376, 1376), [(2, 1376)]),  # gate/up
        ((512,), [(1, 512)]),  # o, down
        ((8, 16, 8), [(1, 8), (1, 16), (1, 8)]),  # only consecutive slices stack
    ],
)
def test_slice_stacks(widths, stacks):
    assert slice_stacks(widths) == stacks
