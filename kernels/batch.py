"""Per-step map from tokens to adapter slots, built once and shared by every LoRA layer.

Tokens are grouped into segments of consecutive same-slot tokens after a stable sort by
slot, as Punica's SGMV does; tokens with ``NO_ADAPTER`` are in no segment at all.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import torch

NO_ADAPTER = -1
# The torch path pads every slot's tokens to the longest segment. A step that mixes a prompt
# with decode tokens would pad every slot to the prompt's length (2x the LoRA time of such a
# step, measured), so a long run of one slot's consecutive tokens is taken out ("peeled")
# and done as its own matmul when that is cheaper. Decode tokens of uneven counts per slot
# (Zipf traffic) leave a padded view that is no slice of the step: x is then gathered, the
# real rows selected and each slice scatter-added, index ops that cost about
# GATHER_COST_ROWS padded rows; cutting such a step into pieces (runs of one slot, and
# diagonals: one token per slot, slots rising by one) is then 1.2-1.6x faster at 2-5
# uneven slots among 8 (benchmarks/server_steps.py). A piece costs about PIECE_COST_ROWS
# padded rows (its dispatch) beside the rows it computes. Both measured at decode sizes on CPU.
PIECE_COST_ROWS = 8
GATHER_COST_ROWS = 24


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
    # [slot range, longest segment left] token indices, padding pointing at 0; (0, 0) when
    # peeled runs and diagonals hold every adapter token
    padded_tokens: torch.Tensor
    padded_valid: torch.Tensor | None  # flat positions in padded_tokens that are real; None if all
    # When padded_tokens is exactly tokens start, start+1, ... (sequences ordered by slot, equal
    # segment lengths, e.g. decoding), the torch path slices x and out instead of indexing.
    padded_token_start: int | None = None
    # The slot of every token when one adapter owns the whole step, else None.
    sole_slot: int | None = None
    # (slot, start, stop): runs of consecutive tokens the torch path does as one-adapter
    # matmuls on x[start:stop]; the padded_* view holds only the other tokens
    peeled: tuple[tuple[int, int, int], ...] = ()
    # (first slot, start, stop): tokens start, start+1, ... use slots first, first+1, ...;
    # the torch path does each as one token per slot on x[start:stop]
    diagonals: tuple[tuple[int, int, int], ...] = ()
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
        groups, slots, lens, sorted_tokens, starts = _segments(token_slots)
        runs, diagonals = _pieces(token_slots)
        peeled, rest = _peel_long_runs(runs, groups)
        first, padded, valid, max_len = _padded_view(rest)
        contiguous = _is_slice(padded, valid)
        gathered = _cost(peeled) + GATHER_COST_ROWS + len(padded)
        if padded and not contiguous and _cost(runs) + _cost(diagonals) < gathered:
            peeled, (first, padded, valid, max_len) = runs, _padded_view({})  # cut into pieces
        else:
            diagonals = []
        all_valid = len(valid) == len(padded)

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
            max_seg_len=max(lens, default=0),
            padded_first_slot=first,
            padded_tokens=views[5].view(len(padded) // max_len if max_len else 0, max_len),
            padded_valid=None if all_valid else views[6],
            padded_token_start=padded[0] if contiguous else None,
            sole_slot=slots[0] if len(slots) == 1 and lens[0] == len(token_slots) else None,
            peeled=tuple(peeled),
            diagonals=tuple(diagonals),
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


def _segments(token_slots: list[int]) -> tuple[dict[int, list[int]], list[int], list[int],
                                                 list[int], list[int]]:
    """Each slot's tokens in order (base-model tokens in none), the slots in order, their
    segment lengths, the tokens grouped by slot and each segment's start in them (the
    kernels' layout)."""
    groups: dict[int, list[int]] = {}
    for token, slot in enumerate(token_slots):
        if slot != NO_ADAPTER:
            groups.setdefault(slot, []).append(token)
    slots = sorted(groups)
    lens = [len(groups[s]) for s in slots]
    sorted_tokens: list[int] = []
    starts: list[int] = []
    for slot in slots:
        starts.append(len(sorted_tokens))
        sorted_tokens.extend(groups[slot])
    return groups, slots, lens, sorted_tokens, starts


def _peel_long_runs(
    runs: list[tuple[int, int, int]], groups: dict[int, list[int]],
) -> tuple[list[tuple[int, int, int]], dict[int, list[int]]]:
    """The longest runs to take out of the padded view, as many as give the lowest cost (rows
    padded, plus each peeled run's rows and ``PIECE_COST_ROWS``), and the groups left."""
    longest_first = sorted(runs, key=lambda run: run[1] - run[2])
    best_cost, best_count, best_rest = _padded_rows(groups), 0, groups
    rest, peeled_cost = groups, 0
    for count, (slot, start, stop) in enumerate(longest_first, 1):
        tokens = rest[slot]  # ascending: the run is one slice of it
        left = tokens[: bisect_left(tokens, start)] + tokens[bisect_left(tokens, stop):]
        rest = {s: t for s, t in rest.items() if s != slot} | ({slot: left} if left else {})
        peeled_cost += stop - start + PIECE_COST_ROWS
        cost = _padded_rows(rest) + peeled_cost
        if cost < best_cost:
            best_cost, best_count, best_rest = cost, count, rest
    return longest_first[:best_count], best_rest


def _padded_view(groups: dict[int, list[int]]) -> tuple[int, list[int], list[int], int]:
    """The padded view of these groups: its first slot, token indices (one row per slot in the
    range, padded with token 0 to the longest), the flat positions that are real, row length."""
    if not groups:
        return 0, [], [], 0
    first, last = min(groups), max(groups)
    max_len = max(len(tokens) for tokens in groups.values())
    padded: list[int] = []
    valid: list[int] = []
    for row, slot in enumerate(range(first, last + 1)):
        tokens = groups.get(slot, [])
        padded.extend(tokens + [0] * (max_len - len(tokens)))
        valid.extend(range(row * max_len, row * max_len + len(tokens)))
    return first, padded, valid, max_len


def _is_slice(padded: list[int], valid: list[int]) -> bool:
    """The padded view is tokens t, t+1, ... with no padding: the torch path slices x."""
    return (bool(padded) and len(valid) == len(padded)
            and padded == list(range(padded[0], padded[0] + len(padded))))


def _pieces(token_slots: list[int]) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Every adapter token in a run of one slot (two tokens or more) or a diagonal (single
    tokens in a row whose slots rise by one): (slot or first slot, start, stop) each."""
    runs: list[tuple[int, int, int]] = []
    diagonals: list[tuple[int, int, int]] = []
    start = 0
    for token in range(1, len(token_slots) + 1):
        if token < len(token_slots) and token_slots[token] == token_slots[start]:
            continue
        slot = token_slots[start]
        if slot != NO_ADAPTER and token - start > 1:
            runs.append((slot, start, token))
        elif slot != NO_ADAPTER:
            last = diagonals[-1] if diagonals else None
            if last and last[2] == start and last[0] + start - last[1] == slot:
                diagonals[-1] = (last[0], last[1], token)
            else:
                diagonals.append((slot, start, token))
        start = token
    return runs, diagonals


def _cost(pieces: list[tuple[int, int, int]]) -> int:
    """Padded rows' worth of work of these runs or diagonals, each done on its own."""
    return sum(stop - start + PIECE_COST_ROWS for _, start, stop in pieces)


def _padded_rows(groups: dict[int, list[int]]) -> int:
    """Rows of the padded view: one per slot in the range, each as long as the longest."""
    if not groups:
        return 0
    return (max(groups) - min(groups) + 1) * max(len(tokens) for tokens in groups.values())


def segment_table(token_slots: list[int], size: int) -> list[int]:
    """A fixed batch's table, flat: token_slots, sorted_tokens, seg_slots, seg_starts and
    seg_lens (``LoRABatch.build``'s segments, without its torch-path plan), each padded to
    ``size`` (rows past the tokens use NO_ADAPTER; segments past the last have length 0)."""
    _, slots, lens, sorted_tokens, starts = _segments(token_slots)
    parts = [token_slots, sorted_tokens, slots, starts, lens]
    pads = [NO_ADAPTER, 0, 0, 0, 0]
    return [v for part, pad in zip(parts, pads) for v in part + [pad] * (size - len(part))]
