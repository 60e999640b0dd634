"""The engine for servers: the step loop runs on its own thread, callers await outputs.

The event loop never runs a model step. Requests reach the step thread through an inbox
drained before each step; outputs come back through per-request asyncio queues. Adapter
files are parsed in a worker thread before a request is queued, so a cold adapter never
stalls the batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from loraserve import metrics
from loraserve.config import EngineConfig
from loraserve.engine.admission import PreparedRequest
from loraserve.engine.builder import build_resolution, checked_plugins
from loraserve.engine.llm_engine import LLMEngine
from loraserve.engine.stat_logger import PrometheusStatLogger
from loraserve.errors import LoRAAlreadyLoadedError, LoRANotFoundError
from loraserve.lora.manager import LoRAEvents
from loraserve.lora.request import LoRARequest
from loraserve.outputs import RequestOutput
from loraserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

_STOP = object()
_PIN_ATTEMPTS = 3  # an adapter unloaded between lookup and pin is resolved again, this often


class AsyncLLMEngine:
    def __init__(self, config: EngineConfig, lora_events: LoRAEvents | None = None) -> None:
        self.config = config
        plugins = checked_plugins()
        self.engine = LLMEngine(config, lora_events=lora_events or plugins)
        self.engine.detokenize_every_step = True
        self.engine.stat_loggers.append(PrometheusStatLogger(
            config, self.engine.max_model_len, self.engine.scheduler.blocks.num_blocks
        ))
        self._log_stats = None if config.disable_log_stats else self.engine.add_log_stats()
        self.served_model_name = str(config.served_model_name)
        self.model_path = config.model
        self.max_model_len = self.engine.max_model_len
        self.context = self.engine.context
        self.tokenizer = self.engine.tokenizer
        self.sampling_defaults = self.engine.sampling_defaults  # the generation config's
        self.max_logprobs = self.engine.max_logprobs
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._thread: threading.Thread | None = None
        self._resolution = build_resolution(config, self._load_resolved)

    # ---- requests ----------------------------------------------------------------------
    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        lora_request: LoRARequest | None = None,
        prompt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield cumulative snapshots until the request finishes; closing early aborts it.

        The request is prepared once here (checked, adapter pinned off the step thread); the
        step thread only queues it.
        """
        arrival = time.monotonic()
        prompt_token_ids = self.engine.check_prompt(prompt_token_ids, params)
        grammar = None
        if params.structured_outputs is not None:  # compiled off the loop and the step thread
            grammar = await asyncio.to_thread(self.engine.compile_grammar, params)
        lora = await self._pin(lora_request)
        prepared = PreparedRequest(prompt_token_ids, params, lora, prompt, arrival_time=arrival,
                                   grammar=grammar)
        outputs: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), outputs)
        self._send("add", (request_id, prepared))
        finished = False
        try:
            while not finished:
                item = await outputs.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._send("abort", request_id)

    async def _pin(self, lora_request: LoRARequest | None) -> LoRARequest | None:
        """Pin whatever is registered under the adapter's name now. If it was unloaded since
        the name was resolved, resolve it again (when resolvers may): a name a resolver
        still finds is served, and only a name that is really gone is a 404."""
        if lora_request is None:
            return None
        for attempt in range(_PIN_ATTEMPTS):
            try:
                return await asyncio.to_thread(self.engine.pin_lora, lora_request, False)
            except LoRANotFoundError:
                if not self.config.allow_runtime_lora_updating or attempt == _PIN_ATTEMPTS - 1:
                    raise
            lora_request = await self.resolve_model(lora_request.lora_name, allow_resolvers=True)
        raise AssertionError("unreachable")

    def _send(self, command: str, payload: Any) -> None:
        self._ensure_thread()
        self._inbox.put((command, payload))
        self._wake.set()

    # ---- adapters ----------------------------------------------------------------------
    async def resolve_model(self, name: str, allow_resolvers: bool) -> LoRARequest | None:
        """None for the base model; the adapter's request otherwise (resolving it if allowed)."""
        if name == self.served_model_name:
            return None
        manager = self.engine.lora_manager
        known = manager.get(name) if manager else None
        if known is not None:
            return known
        if manager is None or not allow_resolvers:
            raise LoRANotFoundError(name)
        start = time.perf_counter()
        try:
            resolved = await self._resolution.resolve(name)
        except LoRANotFoundError:
            metrics.LORA_RESOLUTIONS.labels(outcome="not_found").inc()
            raise
        metrics.LORA_RESOLUTION_SECONDS.observe(time.perf_counter() - start)
        return resolved

    async def _load_resolved(self, request: LoRARequest) -> LoRARequest:
        try:
            loaded = await self.add_lora(request)
        except LoRAAlreadyLoadedError:  # another load of the name (the load route) won: use it
            loaded = await asyncio.to_thread(self.engine.lora_manager.wait_loaded, request.lora_name)
            if loaded is None:  # that load failed or was unloaded at once
                raise
        metrics.LORA_RESOLUTIONS.labels(outcome="loaded").inc()
        return loaded

    async def add_lora(self, lora_request: LoRARequest) -> LoRARequest:
        """Load and register an adapter under a fresh unique id; the name must be new."""
        loaded = await asyncio.to_thread(self.engine.load_lora, lora_request)
        self._resolution.forget(loaded.lora_name)
        return loaded

    async def remove_lora(self, name: str) -> LoRARequest:
        manager = self.engine.lora_manager
        if manager is None or manager.get(name) is None:
            raise LoRANotFoundError(name, f"The lora adapter '{name}' cannot be found.")
        return manager.remove(name)

    def list_loras(self) -> list[LoRARequest]:
        manager = self.engine.lora_manager
        return manager.list() if manager else []

    # ---- the step thread -----------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="loraserve-step", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            if self._drain_inbox() is _STOP:
                return
            if not self.engine.has_unfinished_requests():
                self._publish_gauges()  # aborts may have emptied the engine since the last step
                self.engine.record_state()
                self._wake.wait(self._idle_wait())
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a bug in a step must fail its requests, not hang them
                logger.exception("engine step failed")
                self._fail_all(exc)
                continue
            self._publish_gauges()
            for output in outputs:
                self._deliver(output.request_id, output)

    def _idle_wait(self) -> float | None:
        """How long the idle step thread sleeps: until the stats line still owed is due."""
        if self._log_stats is not None and self._log_stats.pending:
            return self._log_stats.seconds_until_due()
        return None

    def _publish_gauges(self) -> None:
        metrics.QUEUE_LENGTH.set(self.engine.num_waiting)
        metrics.RUNNING.set(self.engine.num_running)

    def _drain_inbox(self) -> object | None:
        while True:
            try:
                command, payload = self._inbox.get_nowait()
            except queue.Empty:
                return None
            if command == "stop":
                return _STOP
            if command == "abort":
                self.engine.abort_request(payload)
                continue
            request_id, prepared = payload
            try:
                self.engine.admit(request_id, prepared)
            except Exception as exc:
                self.engine.unpin_lora(prepared.lora)
                self._deliver(request_id, exc)

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is None:
            return
        loop, outputs = stream
        try:
            loop.call_soon_threadsafe(outputs.put_nowait, item)
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            self._streams.pop(request_id, None)

    def _fail_all(self, exc: BaseException) -> None:
        for request_id in self.engine.unfinished_request_ids():
            self.engine.abort_request(request_id)
            self._deliver(request_id, RuntimeError(f"engine step failed: {exc}"))

    async def shutdown(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put(("stop", None))
            self._wake.set()
            await asyncio.to_thread(self._thread.join)
