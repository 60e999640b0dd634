"""lora_int_id allocation: unique for the process's life, no hashing, claims respected."""

from __future__ import annotations

import threading

import pytest

from loraserve.lora.ids import LoRAIdAllocator, next_lora_id


def test_ids_count_up_and_skip_claimed():
    ids = LoRAIdAllocator()
    assert ids.allocate() == 1
    assert ids.claim(3) is True
    assert ids.claim(3) is False
    assert ids.claim(1) is False  # already handed out
    assert [ids.allocate() for _ in range(3)] == [2, 4, 5]


def test_ids_are_unique_across_threads():
    ids = LoRAIdAllocator()
    out: list[int] = []

    def take() -> None:
        out.extend(ids.allocate() for _ in range(1000))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 8000 and min(out) == 1


def test_process_wide_ids_are_positive_and_fresh():
    a, b = next_lora_id(), next_lora_id()
    assert 0 < a < b


def test_invalid_ids_are_refused():
    with pytest.raises(ValueError):
        LoRAIdAllocator(start=0)
    with pytest.raises(ValueError):
        LoRAIdAllocator().claim(0)
