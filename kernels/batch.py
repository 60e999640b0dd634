"""Per-step map from tokens to adapter slots, built once and shared by every LoRA layer.

Tokens are grouped into segments of consecutive same-slot tokens after a stable sort by
slot, as Punica's SGMV does; tokens with ``NO_ADAPTER`` are in no segment at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NO_ADAPTER = -1


@dataclass(frozen=True)
class LoRABatch:
    num_tokens: int
    token_slots: torch.Tensor  # [T] int64, NO_ADAPTER for base-model tokens
    sorted_tokens: torch.Tensor  # [T_lora] int64 token indices, grouped by slot
    seg_slots: torch.Tensor  # [S] int64 slot of each segment
    seg_starts: torch.Tensor  # [S] int64 offset of each segment in sorted_tokens
    seg_lens: torch.Tensor  # [S] int64
    max_seg_len: int
    # The torch path's view: one row per slot from padded_first_slot to the last used slot,
    # so it can take a slice of the slot tensors instead of gathering each adapter's weights.
    padded_first_slot: int
    padded_tokens: torch.Tensor  # [slot range, max_seg_len] token indices; padding points at 0
    padded_valid: torch.Tensor | None  # flat positions in padded_tokens that are real; None if all
    # When padded_tokens is exactly tokens start, start+1, ... (sequences ordered by slot, equal
    # segment lengths, e.g. decoding), the torch path slices x and out instead of indexing.
    padded_token_start: int | None = None
    # The slot of every token when one adapter owns the whole step, else None.
    sole_slot: int | None = None
    # A captured decode step's batch (``fixed``): the tensors are static buffers refilled
    # between replays, num_tokens and max_seg_len are upper bounds, segments past the last
    # real one have length 0, and the padded_* fields are unused.
    fixed_shape: bool = False

    @property
    def num_segments(self) -> int:
        return int(self.seg_slots.numel())

    @property
    def is_empty(self) -> bool:
        """True when no token in the step uses an adapter."""
        return self.num_segments == 0

    @classmethod
    def build(cls, token_slots: list[int], device: torch.device | str = "cpu") -> LoRABatch:
        """Group token indices by slot; cheap host work, done once per engine step."""
        groups: dict[int, list[int]] = {}
        for token, slot in enumerate(token_slots):
            if slot != NO_ADAPTER:
                groups.setdefault(slot, []).append(token)
        slots = sorted(groups)
        lens = [len(groups[s]) for s in slots]
        max_len = max(lens, default=0)
        sorted_tokens: list[int] = []
        starts: list[int] = []
        for slot in slots:
            starts.append(len(sorted_tokens))
            sorted_tokens.extend(groups[slot])
        first = slots[0] if slots else 0
        slot_range = range(first, slots[-1] + 1) if slots else range(0)
        padded: list[int] = []
        valid: list[int] = []
        for row, slot in enumerate(slot_range):
            tokens = groups.get(slot, [])
            padded.extend(tokens + [0] * (max_len - len(tokens)))
            valid.extend(range(row * max_len, row * max_len + len(tokens)))

        all_valid = len(valid) == len(padded)
        contiguous = all_valid and bool(padded) and padded == list(range(padded[0], padded[0] + len(padded)))
        # every table in one tensor: one host-to-device copy per step, then views
        parts = [token_slots, sorted_tokens, slots, starts, lens, padded, [] if all_valid else valid]
        packed = torch.tensor([v for part in parts for v in part], dtype=torch.long, device=device)
        views = packed.split([len(part) for part in parts])
        return cls(
            num_tokens=len(token_slots),
            token_slots=views[0],
            sorted_tokens=views[1],
            seg_slots=views[2],
            seg_starts=views[3],
            seg_lens=views[4],
            max_seg_len=max_len,
            padded_first_slot=first,
            padded_tokens=views[5].view(len(slot_range), max_len),
            padded_valid=None if all_valid else views[6],
            padded_token_start=padded[0] if contiguous else None,
            sole_slot=slots[0] if len(slots) == 1 and lens[0] == len(token_slots) else None,
        )

    @classmethod
    def fixed(cls, table: torch.Tensor, num_tokens: int, num_segments: int) -> LoRABatch:
        """A batch of ``num_tokens`` tokens and room for ``num_segments`` segments, viewing
        ``table`` (``segment_table``'s layout, refilled in place): its launch shapes depend
        on these two numbers alone, as a CUDA graph's must."""
        rows = table.view(5, -1)
        return cls(
            num_tokens=num_tokens, token_slots=rows[0, :num_tokens],
            sorted_tokens=rows[1, :num_tokens], seg_slots=rows[2, :num_segments],
            seg_starts=rows[3, :num_segments], seg_lens=rows[4, :num_segments],
            max_seg_len=num_tokens, padded_first_slot=0, padded_tokens=rows[1, :num_tokens].view(1, -1),
            padded_valid=None, fixed_shape=True,
        )


def segment_table(token_slots: list[int], size: int) -> list[int]:
    """A fixed batch's table, flat: token_slots, sorted_tokens, seg_slots, seg_starts and
    seg_lens (``LoRABatch.build``'s segments), each padded to ``size`` (rows past the tokens
    use NO_ADAPTER; segments past the last have length 0)."""
    host = LoRABatch.build(token_slots, device="cpu")
    parts = [token_slots, *(t.tolist() for t in (host.sorted_tokens, host.seg_slots,
                                                  host.seg_starts, host.seg_lens))]
    pads = [NO_ADAPTER, 0, 0, 0, 0]
    return [v for part, pad in zip(parts, pads) for v in part + [pad] * (size - len(part))]
