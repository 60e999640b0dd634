"""LoRA shrink/expand in plain torch: the CPU default and the reference for the Triton kernels.

Shapes (one LoRA group of one layer, e.g. fused q/k/v with three slices):
    x       [T, in]
    lora_a  [slots, in, n_slices * R]   A of every slice side by side, rank zero-padded to R
    lora_b  n_slices x [slots, R, out_i] B of each slice, already multiplied by its scale
    out     [T, sum(out_i)]             base projection output, accumulated into
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from loraserve.kernels.batch import LoRABatch


def shrink(x: torch.Tensor, lora_a: torch.Tensor, batch: LoRABatch) -> torch.Tensor:
    """y[t] = x[t] @ A[slot(t)]; rows of base-model tokens are zero."""
    y = x.new_zeros(x.shape[0], lora_a.shape[-1])  # [T, n_slices * R]
    if batch.is_empty:
        return y
    tokens = batch.sorted_tokens
    a = lora_a[batch.token_slots[tokens]]  # [T_lora, in, n_slices * R]
    y[tokens] = torch.bmm(x[tokens].unsqueeze(1), a).squeeze(1)
    return y


def expand(
    out: torch.Tensor, y: torch.Tensor, lora_b: Sequence[torch.Tensor], batch: LoRABatch
) -> None:
    """out[t, slice i] += y[t, slice i] @ B_i[slot(t)], in place."""
    if batch.is_empty:
        return
    tokens = batch.sorted_tokens
    slots = batch.token_slots[tokens]
    rank = lora_b[0].shape[1]
    offset = 0
    for i, b in enumerate(lora_b):
        y_i = y[tokens, i * rank : (i + 1) * rank].unsqueeze(1)  # [T_lora, 1, R]
        delta = torch.bmm(y_i, b[slots]).squeeze(1)  # [T_lora, out_i]
        out[:, offset : offset + b.shape[-1]].index_add_(0, tokens, delta)
        offset += b.shape[-1]


def add_lora(
    out: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: Sequence[torch.Tensor],
    batch: LoRABatch,
) -> None:
    """Fast CPU path: one batched matmul over the range of slots the step uses.

    Tokens are padded per slot to the longest segment, and the slot tensors are sliced, not
    gathered, so no adapter weights are copied. When the step's tokens are already grouped
    by slot (the model runner orders sequences so), x and out are sliced too, and one
    adapter is a plain matmul.
    """
    if batch.is_empty:
        return
    num_rows, seg_len = batch.padded_tokens.shape
    rank = lora_b[0].shape[1]
    slots = slice(batch.padded_first_slot, batch.padded_first_slot + num_rows)
    start = batch.padded_token_start
    if start is None:
        _add_lora_gathered(out, x, lora_a[slots], [b[slots] for b in lora_b], batch, rank)
        return
    rows = slice(start, start + num_rows * seg_len)
    if num_rows == 1:  # one adapter: plain matmuls, on x and out themselves when it covers all
        slot = slots.start
        whole = seg_len == x.shape[0]
        y = torch.mm(x if whole else x[rows], lora_a[slot])  # [L, n_slices * R]
        outs = (out if whole else out[rows]).split([b.shape[-1] for b in lora_b], dim=1)
        for y_i, b, out_i in zip(y.split(rank, dim=1), lora_b, outs, strict=True):
            out_i.addmm_(y_i, b[slot])
        return
    y = _shrink_rows(x[rows].view(num_rows, seg_len, -1), lora_a[slots])  # [rows, L, n_slices * R]
    offset = 0
    for i, b in enumerate(lora_b):
        width = b.shape[-1]
        delta = torch.bmm(y[..., i * rank : (i + 1) * rank], b[slots])  # [rows, L, out_i]
        # (bmm then add: baddbmm_ into this strided view of out is several times slower)
        out[rows, offset : offset + width].add_(delta.view(-1, width))
        offset += width


_GEMV_MAX_TOKENS = 4  # measured: up to here the A-major form reads A about 1.7x faster


def _shrink_rows(x: torch.Tensor, lora_a: torch.Tensor) -> torch.Tensor:
    """x [rows, L, in] @ A [rows, in, n] for a few tokens per row (decoding) or many.

    A is a transposed view of row-major [n, in] storage. With one to a few tokens per row the
    product is memory-bound, and computing (A_rows @ x^T)^T walks each adapter's rows in
    storage order, which streams A markedly faster than the x @ A form.
    """
    if x.shape[1] > _GEMV_MAX_TOKENS or not lora_a.transpose(-1, -2).is_contiguous():
        return torch.bmm(x, lora_a)
    return torch.bmm(lora_a.transpose(-1, -2), x.transpose(1, 2)).transpose(1, 2)


def _add_lora_gathered(
    out: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,  # [rows, in, n_slices * R], the used slot range
    lora_b: list[torch.Tensor],
    batch: LoRABatch,
    rank: int,
) -> None:
    """Tokens in any order: gather them into padded per-slot rows, scatter-add the result."""
    y = _shrink_rows(x[batch.padded_tokens], lora_a)  # [rows, L, n_slices * R]
    tokens = batch.padded_tokens.view(-1)
    if batch.padded_valid is not None:
        tokens = tokens[batch.padded_valid]
    offset = 0
    for i, b in enumerate(lora_b):
        width = b.shape[-1]
        delta = torch.bmm(y[..., i * rank : (i + 1) * rank], b).view(-1, width)  # [rows*L, out_i]
        if batch.padded_valid is not None:
            delta = delta[batch.padded_valid]
        out[:, offset : offset + width].index_add_(0, tokens, delta)
        offset += width
