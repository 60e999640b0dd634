"""Decode steps replayed from CUDA graphs, one graph per batch-size bucket.

A decode step launches a few hundred small kernels, and on a GPU launching them costs more
than running them. A captured step launches as one graph, but it reads only the buffers it
was captured with: every step refills those static buffers (tokens, positions, cache slots,
block tables, context lengths, the LoRA segment table) with one host-to-device copy each,
and pads the batch up to its bucket with rows that write a scratch KV slot and use no
adapter. Adapters change between replays through the slot tensors and the segment table,
never through the graph. Without CUDA (``capture=False``) the same buffers, padding and
refill run with eager replay: that is how CPU tests check them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence

import torch

from loraserve.engine.scheduler import ScheduledStep
from loraserve.kernels import NO_ADAPTER, LoRABatch, segment_table
from loraserve.model.decoder import DecoderModel, LayerLoRA
from loraserve.model.forward_batch import ForwardBatch, decode_group

_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def bucket_sizes(max_num_seqs: int) -> list[int]:
    """The batch sizes graphs are captured for: powers of two, then steps of half of one,
    and ``max_num_seqs`` itself, so padding wastes at most a third of a bucket above 4."""
    return [b for b in _BUCKETS if b < max_num_seqs] + [max_num_seqs]


class DecodeGraphs:
    def __init__(
        self,
        model: DecoderModel,
        kv_cache: torch.Tensor,  # [2, layers, blocks, block_size, kv_heads, head_dim]
        scratch_slot: int,  # a KV row no sequence owns: padding rows write there
        max_num_seqs: int,
        max_blocks: int,  # block-table width: the blocks of the longest context
        lora: Sequence[LayerLoRA] | None,  # the slots' per-layer operands (None: no LoRA)
        paged_decode: bool,
        capture: bool,
    ) -> None:
        self.model, self.kv_cache, self.lora = model, kv_cache, lora
        self.scratch_slot, self.max_blocks = scratch_slot, max_blocks
        self.paged_decode, self.capture = paged_decode, capture
        self.buckets = bucket_sizes(max_num_seqs)
        n, device = self.buckets[-1], kv_cache.device
        self.device = device
        # rows: token ids, positions, slot_mapping, kv_lens; and the block tables. Each has a
        # host mirror, written in place (numpy) and copied over whole (the rows) or by the
        # bucket's rows (the tables: columns past a row's blocks are masked out or never read).
        pinned = device.type == "cuda"
        self._rows = torch.zeros(4, n, dtype=torch.long, device=device)
        self._tables = torch.zeros(n, max_blocks, dtype=torch.long, device=device)
        self._host_rows = torch.zeros(4, n, dtype=torch.long, device="cpu", pin_memory=pinned)
        self._host_tables = torch.zeros(n, max_blocks, dtype=torch.long, device="cpu",
                                        pin_memory=pinned)
        self._ids, self._pos, self._slots, self._lens = self._rows.unbind(0)
        # [token_slots | sorted_tokens | seg_slots | seg_starts | seg_lens], n each
        self._lora_table = torch.zeros(5 * n, dtype=torch.long, device=device)
        self._logits_rows = torch.arange(n, device=device)
        self._graphs: dict[tuple[int, bool], Callable[[], torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def supports(self, step: ScheduledStep) -> bool:
        """A decode step (one token per sequence) that fits the largest bucket and table."""
        return (
            len(step.seqs) <= self.max_batch
            and all(q == 1 for q in step.query_lens)
            and all(len(s.block_table) <= self.max_blocks for s in step.seqs)
        )

    def run(self, step: ScheduledStep, token_slots: list[int]) -> torch.Tensor:
        """Logits [B, vocab] float32 of a supported step, rows in ``step.seqs`` order.

        ``token_slots``: each sequence's LoRA slot (NO_ADAPTER: base), grouped by slot.
        The rows are a view of the graph's output: read them before the next step.
        """
        count = len(step.seqs)
        bucket = self.buckets[bisect_left(self.buckets, count)]
        self._fill_inputs(step, bucket)
        use_lora = self.lora is not None and any(s != NO_ADAPTER for s in token_slots)
        if use_lora:
            self._fill_lora(token_slots)
        key = (bucket, use_lora)
        replay = self._graphs.get(key)
        if replay is None:
            replay = self._graphs[key] = self._record(self._forward_fn(bucket, use_lora))
        return replay()[:count]

    def _fill_inputs(self, step: ScheduledStep, bucket: int) -> None:
        bs, count = self.kv_cache.shape[3], len(step.seqs)
        rows, tables = self._host_rows.numpy(), self._host_tables.numpy()
        columns = []
        for row, seq in enumerate(step.seqs):
            pos, table = seq.num_tokens - 1, seq.block_table
            columns.append((seq.token_slice(pos, pos + 1)[0], pos,
                            table[pos // bs] * bs + pos % bs, seq.num_tokens))
            tables[row, : len(table)] = table
        rows[:, :count] = list(zip(*columns))
        # padding rows: token 0 at position 0, one visible key (a block left from an earlier
        # step, or 0: any is a valid index), K/V written to the scratch slot
        rows[:, count:bucket] = [[0], [0], [self.scratch_slot], [1]]
        self._rows.copy_(self._host_rows)
        self._tables[:bucket].copy_(self._host_tables[:bucket])

    def _fill_lora(self, token_slots: list[int]) -> None:
        table = segment_table(token_slots, self.max_batch)
        self._lora_table.copy_(torch.tensor(table, dtype=torch.long, device="cpu"))

    def _forward_fn(self, bucket: int, use_lora: bool) -> Callable[[], torch.Tensor]:
        """The step as a function of the static buffers alone: what a graph captures."""
        lens = self._lens[:bucket]
        lora_batch = None
        if use_lora:
            segments = min(bucket, len(self.lora[0].qkv.a))  # at most one per slot
            lora_batch = LoRABatch.fixed(self._lora_table, bucket, segments)
        tables, block_size = self._tables[:bucket], self.kv_cache.shape[3]
        window = self.model.spec.sliding_window

        def forward() -> torch.Tensor:
            attention = ()
            if not self.paged_decode:
                attention = (decode_group(tables, lens, block_size, window),)
            batch = ForwardBatch(
                input_ids=self._ids[:bucket], positions=self._pos[:bucket],
                slot_mapping=self._slots[:bucket], block_tables=tables, attention=attention,
                logits_indices=self._logits_rows[:bucket], lora=lora_batch, kv_lens=lens,
                paged_decode=self.paged_decode,
            )
            return self.model.forward(batch, self.kv_cache, None, self.lora if use_lora else None)

        return forward

    def _record(self, forward: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """A CUDA graph of ``forward`` (warmed up eagerly first: kernels compiled, caches filled),
        or ``forward`` itself with eager replay."""
        if not self.capture:
            return forward
        forward()  # the current step, computed for real; capturing runs nothing
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = forward()

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay
