"""LoRA shrink/expand in plain torch: the CPU default and the reference for the Triton kernels.

Shapes (one LoRA group of one layer, e.g. fused q/k/v with three slices):
    x       [T, in]
    lora_a  [slots, in, n_slices * R]   A of every slice side by side, rank zero-padded to R
    lora_b  stacks [slots, k, R, w]     B of k consecutive slices of equal width w, each
                                        already multiplied by its scale; the stacks cover
                                        the slices in order (see ``slices``)
    out     [T, sum(out_i)]             base projection output, accumulated into
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from loraserve.kernels.batch import LoRABatch


def slices(lora_b: Sequence[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor, int]]:
    """(slice index, B_i [slots, R, out_i], first column of slice i in out) for every slice."""
    index = offset = 0
    for stack in lora_b:
        for b in stack.unbind(1):
            yield index, b, offset
            index += 1
            offset += b.shape[-1]


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
    rank = lora_b[0].shape[2]
    for i, b, offset in slices(lora_b):
        y_i = y[tokens, i * rank : (i + 1) * rank].unsqueeze(1)  # [T_lora, 1, R]
        delta = torch.bmm(y_i, b[slots]).squeeze(1)  # [T_lora, out_i]
        out[:, offset : offset + b.shape[-1]].index_add_(0, tokens, delta)


def add_lora(
    out: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: Sequence[torch.Tensor],
    batch: LoRABatch,
) -> None:
    """Fast CPU path: batched matmuls over the range of slots the step uses.

    Tokens are padded per slot to the longest segment, and the slot tensors are sliced, not
    gathered, so no adapter weights are copied. When the step's tokens are already grouped
    by slot (the model runner orders sequences so), x and out are sliced too; one adapter
    is then a plain matmul, and one token per slot (decoding) a pair of batched matmuls.
    Long runs the batch peeled off (a prompt among decode tokens, ``LoRABatch.peeled``) are
    plain matmuls of their own, so the other slots are not padded to a prompt's length; a
    step cut into runs and diagonals (``LoRABatch.diagonals``) has no padded view at all.
    Slicing is skipped where it would select everything: at decode batch sizes each op's
    dispatch costs about as much as its arithmetic. Slots in another dtype than out (float32
    for a bfloat16 model on CPU, ``dispatch.lora_dtype``) get x converted, and each delta is
    computed in the slots' dtype and added into out (``_accumulate``).
    """
    if batch.is_empty:
        return
    x = x.to(lora_a.dtype)  # float32 slots of a half model: x is small, the slots are not
    for slot, start, stop in batch.peeled:  # long runs (prompts) beside short segments
        _add_one_adapter(out[start:stop], x[start:stop], lora_a[slot : slot + 1],
                         [b[slot : slot + 1] for b in lora_b])
    for first, start, stop in batch.diagonals:  # one token per slot, slots first, first + 1, ...
        slots = slice(first, first + stop - start)
        _add_one_token_per_slot(out[start:stop], x[start:stop], lora_a[slots],
                                [b[slots] for b in lora_b])
    num_rows, seg_len = batch.padded_tokens.shape
    if num_rows == 0:
        return
    first = batch.padded_first_slot
    if first != 0 or num_rows != lora_a.shape[0]:
        lora_a = lora_a[first : first + num_rows]
        lora_b = [b[first : first + num_rows] for b in lora_b]
    start = batch.padded_token_start
    if start is None:
        _add_lora_gathered(out, x, lora_a, lora_b, batch)
        return
    if num_rows * seg_len != x.shape[0]:  # base-model tokens too: take the adapters' rows
        rows = slice(start, start + num_rows * seg_len)
        x, out = x[rows], out[rows]
    if num_rows == 1:
        _add_one_adapter(out, x, lora_a, lora_b)
    elif seg_len == 1:
        _add_one_token_per_slot(out, x, lora_a, lora_b)
    else:
        _add_segments(out, x.view(num_rows, seg_len, -1), lora_a, lora_b)


def _add_one_adapter(
    out: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: list[torch.Tensor]
) -> None:
    """Every row uses the one slot of lora_a [1, in, n] and the B stacks [1, k, R, w]."""
    y = torch.mm(x, lora_a[0])  # [L, n_slices * R]
    rank = lora_b[0].shape[2]
    for i, b, offset in slices(lora_b):
        y_i, columns = y[:, i * rank : (i + 1) * rank], out[:, offset : offset + b.shape[-1]]
        if out.dtype == b.dtype:
            columns.addmm_(y_i, b[0])
        else:
            columns.add_(torch.mm(y_i, b[0]))


def _add_one_token_per_slot(
    out: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: list[torch.Tensor]
) -> None:
    """Decoding: row i of x and out belongs to slot i of lora_a and the B stacks.

    Memory-bound: every adapter's weights are read for one token. At 16 rows a tensor op's
    dispatch costs about a microsecond, a fifth of the matmul it serves, so views are
    taken only where needed.
    """
    rows = x.shape[0]
    y = _shrink_rows(x.unsqueeze(1), lora_a)  # [rows, 1, n_slices * R]
    if len(lora_b) == 1 and out.is_contiguous():  # one stack spans out: add in place
        stack = lora_b[0]
        _, count, rank, width = stack.shape
        pairs = rows * count
        _accumulate(out.view(pairs, 1, width), y.view(pairs, 1, rank), stack.reshape(pairs, rank, width))
        return
    y = y.view(rows, -1)
    col = offset = 0
    for stack in lora_b:
        count, rank, width = stack.shape[1:]
        pairs = rows * count
        y_k = y[:, col : col + count * rank].reshape(pairs, 1, rank)
        delta = torch.bmm(y_k, stack.reshape(pairs, rank, width))  # [rows * k, 1, w]
        out[:, offset : offset + count * width].add_(delta.view(rows, count * width))
        col += count * rank
        offset += count * width


def _add_segments(
    out: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: list[torch.Tensor]
) -> None:
    """Several tokens per slot (prefill): x [rows, L, in], out [rows * L, sum(out_i)].

    Each slice accumulates straight into its columns of out: with a rank this small the
    expand is bound by writing out, and a temporary delta would double that traffic.
    """
    rows, seg_len = x.shape[:2]
    y = _shrink_rows(x, lora_a)  # [rows, L, n_slices * R]
    out = out.view(rows, seg_len, -1)
    rank = lora_b[0].shape[2]
    for i, b, offset in slices(lora_b):
        _accumulate(out[..., offset : offset + b.shape[-1]], y[..., i * rank : (i + 1) * rank], b)


def _accumulate(out: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> None:
    """out += y @ b, batched; in place when the dtypes agree, else through one temporary."""
    if out.dtype == b.dtype:
        out.baddbmm_(y, b)
    else:
        out.add_(torch.bmm(y, b))


_GEMV_MAX_TOKENS = 4  # measured: up to here the A-major form reads A about 1.7x faster


def _shrink_rows(x: torch.Tensor, lora_a: torch.Tensor) -> torch.Tensor:
    """x [rows, L, in] @ A [rows, in, n] for a few tokens per row (decoding) or many.

    A is a transposed view of row-major [n, in] storage. With one to a few tokens per row the
    product is memory-bound, and computing (A_rows @ x^T)^T walks each adapter's rows in
    storage order, which streams A markedly faster than the x @ A form. x^T must stay a
    transposed view: a contiguous [rows, in, 1] x^T sends MKL down a GEMM path several
    times slower.
    """
    if x.shape[1] > _GEMV_MAX_TOKENS or not lora_a.mT.is_contiguous():
        return torch.bmm(x, lora_a)
    return torch.bmm(lora_a.mT, x.mT).mT


def _add_lora_gathered(
    out: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,  # [rows, in, n_slices * R], the used slot range
    lora_b: list[torch.Tensor],  # stacks [rows, k, R, w]
    batch: LoRABatch,
) -> None:
    """Tokens in any order: gather them into padded per-slot rows, scatter-add the result."""
    y = _shrink_rows(x[batch.padded_tokens], lora_a)  # [rows, L, n_slices * R]
    tokens = batch.padded_tokens.view(-1)
    if batch.padded_valid is not None:
        tokens = tokens[batch.padded_valid]
    rank = lora_b[0].shape[2]
    for i, b, offset in slices(lora_b):
        width = b.shape[-1]
        delta = torch.bmm(y[..., i * rank : (i + 1) * rank], b).view(-1, width)  # [rows*L, out_i]
        if batch.padded_valid is not None:
            delta = delta[batch.padded_valid]
        out[:, offset : offset + width].index_add_(0, tokens, delta.to(out.dtype))


def add_lora_per_token(
    out: torch.Tensor,
    x: torch.Tensor,  # [T, in]
    lora_a: torch.Tensor,  # [slots, in, n_slices * R]
    lora_b: Sequence[torch.Tensor],
    token_slots: torch.Tensor,  # [T], NO_ADAPTER rows get no delta
) -> None:
    """Each token's own A and B gathered by slot: shapes follow T alone, so a captured decode
    step replays it for any adapters (the path of a fixed-shape batch without Triton)."""
    x = x.to(lora_a.dtype)  # float32 slots of a half model, as in add_lora
    use = (token_slots >= 0).to(x.dtype).unsqueeze(1)  # [T, 1]
    slots = token_slots.clamp(min=0)
    y = torch.bmm(x.unsqueeze(1), lora_a[slots]).squeeze(1).mul_(use)  # [T, n_slices * R]
    rank = lora_b[0].shape[-2]
    for i, b, offset in slices(lora_b):
        delta = torch.bmm(y[:, i * rank : (i + 1) * rank].unsqueeze(1), b[slots]).squeeze(1)
        out[:, offset : offset + b.shape[-1]] += delta
