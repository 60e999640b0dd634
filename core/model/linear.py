"""Dense projections, with weights prepacked for oneDNN on CPU.

On CPU, oneDNN's GEMM on a prepacked weight is markedly faster than the default
``F.linear`` for the small batches of decoding (the same kernel torch.compile's freezing
pass uses). Packing is checked against ``F.linear`` once; anything unusual falls back.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_PACKABLE = (torch.float32, torch.bfloat16)


class Projection:
    """y = x @ W^T + b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        self.packed = _prepack(weight, bias)
        self.weight = None if self.packed is not None else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, in] -> [T, out]
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def merged_with(self, delta: torch.Tensor) -> Projection:
        """A new projection computing x @ (W + delta)^T + b; this one is left as it is.

        When W is prepacked, delta is packed and added in the packed layout (the layout is a
        fixed permutation for a given shape, so the sum is exact): cheaper than unpacking W,
        and with no new check, since packing this shape was checked when W was packed.
        """
        merged = copy.copy(self)
        if self.packed is not None:
            merged.packed = _reorder(delta).add_(self.packed)
        else:
            merged.weight = self.weight + delta
        return merged

    @property
    def nbytes(self) -> int:
        weight = self.packed if self.packed is not None else self.weight
        return self.out_features * self.in_features * weight.element_size()


def _prepack(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    if weight.device.type != "cpu" or weight.dtype not in _PACKABLE:
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = _reorder(weight)
        probe = torch.randn(3, weight.shape[1], dtype=weight.dtype, device=weight.device)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, bias, "none", [], "")
    except (RuntimeError, AttributeError) as exc:  # an older torch or an unusual CPU
        logger.info("oneDNN prepacking unavailable (%s); using F.linear", exc)
        return None
    expected = F.linear(probe, weight, bias)
    if not torch.allclose(got, expected, rtol=1e-2, atol=1e-2):
        logger.warning("oneDNN prepacked GEMM disagrees with F.linear; using F.linear")
        return None
    return packed


def _reorder(weight: torch.Tensor) -> torch.Tensor:
    """oneDNN's blocked layout for W, tuned for batches of about 16 rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, 16)
