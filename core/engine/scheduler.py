"""Continuous batching: which sequences run in the next step.

Every step decodes one token for each running sequence and admits waiting ones (their
whole prompt as prefill) while the token budget, free KV blocks, ``max_num_seqs`` and
free LoRA slots allow. A step's first prompt goes in whatever the budget: with no chunked
prefill, a prompt longer than the budget could otherwise never run. A waiting request whose
adapter has no free slot is skipped, not dropped: later requests may go ahead and it is
retried next step. When the cache runs out of blocks, the newest running sequence is
preempted and recomputed later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from loraserve.engine.block_manager import BlockManager
from loraserve.engine.sequence import Sequence, SequenceStatus
from loraserve.engine.stats import BatchState, adapter_names
from loraserve.lora.manager import LoRAManager


@dataclass
class ScheduledStep:
    seqs: list[Sequence]
    query_lens: list[int]  # tokens each sequence feeds this step (whole uncached part)

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        lora_manager: LoRAManager | None,
    ) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.lora_manager = lora_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0  # since the start; the engine reports the increase per step

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> ScheduledStep | None:
        step = ScheduledStep([], [])
        self._schedule_running(step)
        self._admit_waiting(step)
        return step if step.seqs else None

    def _schedule_running(self, step: ScheduledStep) -> None:
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted below while making room for an older sequence
            while not self.blocks.can_allocate(seq, seq.num_tokens):
                victim = self.running[-1]
                self.preempt(victim)
                if victim is seq:
                    break
            else:
                self.blocks.allocate(seq, seq.num_tokens)
                step.seqs.append(seq)
                step.query_lens.append(seq.num_tokens - seq.num_cached_tokens)

    def _admit_waiting(self, step: ScheduledStep) -> None:
        budget = self.max_num_batched_tokens - step.num_tokens
        first = True  # the step's first prompt is admitted over the budget
        skipped: list[Sequence] = []
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            tokens = seq.num_tokens
            if (tokens > budget and not first) or not self.blocks.can_allocate(seq, tokens):
                break
            if seq.lora is not None and not self._take_slot(seq):
                skipped.append(self.waiting.popleft())
                continue
            self.waiting.popleft()
            self.blocks.allocate(seq, tokens)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            step.seqs.append(seq)
            step.query_lens.append(tokens - seq.num_cached_tokens)
            budget -= tokens
            first = False
        self.waiting.extendleft(reversed(skipped))

    def _take_slot(self, seq: Sequence) -> bool:
        assert self.lora_manager is not None and seq.lora is not None
        seq.lora_slot = self.lora_manager.acquire_slot(seq.lora)
        return seq.lora_slot is not None

    def _release(self, seq: Sequence) -> None:
        self.blocks.free(seq)
        if seq.lora_slot is not None and self.lora_manager is not None:
            self.lora_manager.release_slot(seq.lora_slot)
            seq.lora_slot = None

    def preempt(self, seq: Sequence) -> None:
        """Give back a running sequence's blocks and slot; it is recomputed when readmitted."""
        self.running.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence, reason: str) -> None:
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def batch_state(self) -> BatchState:
        """What is running and waiting now (call it from the thread that steps)."""
        return BatchState(
            running=len(self.running),
            waiting=len(self.waiting),
            kv_cache_usage=self.blocks.usage,
            running_adapters=adapter_names([seq.lora_name for seq in self.running]),
            waiting_adapters=adapter_names([seq.lora_name for seq in self.waiting]),
        )
