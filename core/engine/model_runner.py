"""Owns the model and the KV cache; turns a scheduled step into tensors and logits.

It also picks the weights each step runs on: the base layers, plus the adapter slots' LoRA
operands when a token uses an adapter, or a merged copy for steps one adapter owns alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate

import torch

from loraserve.engine.decode_graphs import DecodeGraphs
from loraserve.engine.scheduler import ScheduledStep
from loraserve.kernels import NO_ADAPTER, LoRABatch, paged_decode_available
from loraserve.lora.merge import AdapterMerger, adapter_merger_for
from loraserve.lora.slots import AdapterSlots
from loraserve.model.decoder import DecoderModel, LayerLoRA, LayerWeights
from loraserve.model.forward_batch import (
    AttentionGroup,
    ForwardBatch,
    attention_group,
    padded_tables,
)


@dataclass
class StepLogits:
    """A forward pass's logits, float32. Row i of ``next_token`` [B, vocab] belongs to the
    step's i-th sequence; ``prompt`` maps such a row to its prompt's logits [prompt_len - 1,
    vocab] (position p predicts prompt token p + 1), for sequences that asked for prompt
    logprobs and were prefilled from the start this step."""

    next_token: torch.Tensor
    prompt: dict[int, torch.Tensor] = field(default_factory=dict)


class ModelRunner:
    def __init__(
        self,
        model: DecoderModel,
        num_blocks: int,
        block_size: int,
        lora_slots: AdapterSlots | None = None,
        merge_adapters: bool = False,
    ) -> None:
        """``merge_adapters``: run steps one adapter owns alone on merged weights, where that
        suits the model (``adapter_merger_for``)."""
        spec = model.spec
        weights = model.weights
        self.model = model
        self.lora_slots = lora_slots
        self.merger: AdapterMerger | None = None
        if lora_slots is not None and merge_adapters:
            self.merger = adapter_merger_for(model, lora_slots)
        self.block_size = block_size
        self.device = weights.embed.device
        self.paged_decode = paged_decode_available(self.device)  # decode attention reads blocks in place
        self.num_blocks = num_blocks
        # [K/V, layers, blocks, block_size, kv_heads, head_dim]; one block more than the block
        # manager hands out: a captured decode step's padding rows write there
        self.kv_cache = torch.zeros(
            2, spec.num_layers, num_blocks + 1, block_size, spec.num_kv_heads, spec.head_dim,
            dtype=weights.embed.dtype, device=self.device,
        )
        self.decode_graphs: DecodeGraphs | None = None

    def enable_decode_graphs(self, max_num_seqs: int, max_model_len: int, capture: bool) -> None:
        """Run decode steps through ``DecodeGraphs``: CUDA graphs, or with ``capture=False``
        the same static buffers replayed eagerly. A graph runs the slots' LoRA operands, so
        merged weights are off."""
        self.merger = None
        self.decode_graphs = DecodeGraphs(
            self.model, self.kv_cache, scratch_slot=self.num_blocks * self.block_size,
            max_num_seqs=max_num_seqs, max_blocks=-(-max_model_len // self.block_size),
            lora=self.lora_slots.layers if self.lora_slots is not None else None,
            paged_decode=self.paged_decode, capture=capture,
        )

    def run(self, step: ScheduledStep) -> StepLogits:
        """One forward pass over every scheduled sequence; returns its logits.

        The step's sequences are reordered by LoRA slot first, so each adapter's tokens are
        contiguous and the LoRA path can slice instead of gather; logits rows follow that
        new order of ``step.seqs``.
        """
        order = sorted(range(len(step.seqs)), key=lambda i: _slot_key(step.seqs[i]))
        step.seqs[:] = [step.seqs[i] for i in order]
        step.query_lens[:] = [step.query_lens[i] for i in order]
        starts = list(accumulate(step.query_lens, initial=0))  # each sequence's first flat index
        scored = {  # row -> its first token's flat index, for prompts scored this step
            row: starts[row] for row, seq in enumerate(step.seqs)
            if seq.wants_prompt_logprobs and seq.num_cached_tokens == 0
        }
        prompt_rows = [
            torch.arange(start, start + len(step.seqs[row].prompt_token_ids) - 1, device=self.device)
            for row, start in scored.items()
        ]
        graphs = self.decode_graphs
        if graphs is not None and not scored and graphs.supports(step):
            logits = graphs.run(step, [_slot_key(seq) for seq in step.seqs])
            for seq in step.seqs:
                seq.num_cached_tokens = seq.num_tokens
            return StepLogits(logits)
        batch = self._prepare(step, prompt_rows)
        layers, lora = self._weights_for(batch.lora)
        logits = self.model.forward(batch, self.kv_cache, layers, lora)  # [B + prompt rows, vocab]
        for seq in step.seqs:
            seq.num_cached_tokens = seq.num_tokens
        result = StepLogits(logits[: len(step.seqs)])
        offset = len(step.seqs)
        for row, rows in zip(scored, prompt_rows):
            result.prompt[row] = logits[offset : offset + len(rows)]
            offset += len(rows)
        return result

    def _weights_for(
        self, lora_batch: LoRABatch | None
    ) -> tuple[list[LayerWeights], list[LayerLoRA | None] | None]:
        """The layers this step runs on and each one's LoRA operands (None: no LoRA)."""
        use_lora = self.lora_slots is not None and lora_batch is not None
        if self.merger is not None:  # called every step: a step without the adapter ends its run
            merged = self.merger.weights_for(lora_batch if use_lora else None)
            if merged is not None:
                return merged
        return self.model.weights.layers, self.lora_slots.layers if use_lora else None

    def _prepare(self, step: ScheduledStep, extra_logits_rows: list[torch.Tensor]) -> ForwardBatch:
        """Flatten the step's tokens and build positions, cache slots, masks and the LoRA map.

        Logits are computed for each sequence's last token, then for ``extra_logits_rows``
        (flat token indices), in that order.
        """
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        token_slots: list[int] = []
        for seq, q_len in zip(step.seqs, step.query_lens):
            start = seq.num_cached_tokens
            input_ids.extend(seq.token_slice(start, start + q_len))
            table = seq.block_table
            for pos in range(start, start + q_len):
                positions.append(pos)
                slot_mapping.append(table[pos // bs] * bs + pos % bs)
            lora_slot = NO_ADAPTER if seq.lora_slot is None else seq.lora_slot
            token_slots.extend([lora_slot] * q_len)

        device = self.device
        kv_lens = [s.num_tokens for s in step.seqs]
        block_tables = padded_tables([s.block_table for s in step.seqs], device)
        paged_decode = max(step.query_lens) == 1 and self.paged_decode  # the kernel needs no mask
        attention = () if paged_decode else self._attention_groups(step, kv_lens)
        q_lens = torch.tensor(step.query_lens, device=device)
        use_lora = any(s != NO_ADAPTER for s in token_slots)
        return ForwardBatch(
            input_ids=torch.tensor(input_ids, device=device),
            positions=torch.tensor(positions, device=device),
            slot_mapping=torch.tensor(slot_mapping, device=device),
            block_tables=block_tables,
            attention=attention,
            logits_indices=torch.cat([torch.cumsum(q_lens, 0) - 1, *extra_logits_rows]),
            lora=LoRABatch.build(token_slots, device) if use_lora else None,
            kv_lens=torch.tensor(kv_lens, device=device),
            paged_decode=paged_decode,
        )

    def _attention_groups(self, step: ScheduledStep, kv_lens: list[int]) -> tuple[AttentionGroup, ...]:
        """One group for the step, or two when it mixes decode tokens with prompts: padding
        every decode row to a prompt's length would multiply their attention work by it."""
        window = self.model.spec.sliding_window
        q_lens = step.query_lens
        decode = [i for i, n in enumerate(q_lens) if n == 1]
        members = [range(len(q_lens))]
        if 0 < len(decode) < len(q_lens):
            members = [decode, [i for i, n in enumerate(q_lens) if n > 1]]
        starts = list(accumulate(q_lens, initial=0))
        return tuple(
            attention_group(
                [step.seqs[i].block_table for i in seqs], [kv_lens[i] for i in seqs],
                [q_lens[i] for i in seqs], self.block_size, window, self.device,
                tokens=None if len(members) == 1 else [
                    t for i in seqs for t in range(starts[i], starts[i + 1])],
            )
            for seqs in members
        )


def _slot_key(seq) -> int:
    return NO_ADAPTER if seq.lora_slot is None else seq.lora_slot
