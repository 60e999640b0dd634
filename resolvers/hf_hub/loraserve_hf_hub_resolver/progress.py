"""huggingface_hub's download progress, reported to the download cache's byte budget."""

from __future__ import annotations

import threading

from loraserve.resolution import ProgressCallback


def byte_meter(progress: ProgressCallback) -> type:
    """A silent tqdm class for ``snapshot_download`` that reports its bytes to ``progress``.

    huggingface_hub updates its byte bars before it writes each chunk, so ``progress``
    raising stops the download with nothing more written. Two bars count the same bytes
    (network and disk): only the furthest one's advance is reported.
    """
    from tqdm.auto import tqdm

    lock = threading.Lock()
    furthest = [0]

    class ByteMeter(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            self.counted, self.counts_bytes = 0, kwargs.get("unit") == "B"
            super().__init__(*args, **{**kwargs, "disable": True})

        def update(self, n: int | float | None = 1) -> bool | None:
            if self.counts_bytes and n:
                with lock:
                    self.counted += int(n)
                    ahead = self.counted - furthest[0]
                    furthest[0] = max(furthest[0], self.counted)
                if ahead > 0:
                    progress(ahead)
            return super().update(n)

    return ByteMeter
