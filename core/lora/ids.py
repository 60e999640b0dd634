"""Unique ``lora_int_id`` values for the life of the process.

Ids are counted, never hashed from names, so two adapters can never collide; an id is
never reused after its adapter is unloaded, so a stale id cannot reach a new adapter.
"""

from __future__ import annotations

import threading


class LoRAIdAllocator:
    """Hands out 1, 2, 3, ..., skipping ids that callers claimed for themselves."""

    def __init__(self, start: int = 1) -> None:
        if start < 1:
            raise ValueError(f"lora_int_id values start at 1 or more, got {start}")
        self._next = start
        self._taken: set[int] = set()
        self._lock = threading.Lock()

    def allocate(self) -> int:
        """A fresh id that no earlier ``allocate`` or ``claim`` returned or took."""
        with self._lock:
            while self._next in self._taken:
                self._taken.discard(self._next)
                self._next += 1
            lora_int_id = self._next
            self._next += 1
            return lora_int_id

    def claim(self, lora_int_id: int) -> bool:
        """Mark a caller-chosen id as used; False if it was already handed out or claimed."""
        if lora_int_id < 1:
            raise ValueError(f"lora_int_id must be >= 1, got {lora_int_id}")
        with self._lock:
            if lora_int_id < self._next or lora_int_id in self._taken:
                return False
            self._taken.add(lora_int_id)
            return True


_PROCESS_IDS = LoRAIdAllocator()


def next_lora_id() -> int:
    """A process-wide unique ``lora_int_id`` (from one shared allocator)."""
    return _PROCESS_IDS.allocate()
