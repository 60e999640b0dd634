"""The synchronous engine: requests in, one batched step at a time, outputs out.

``builder.build_parts`` makes the model, KV cache and LoRA wiring it runs on.

Not thread-safe by itself: ``AsyncLLMEngine`` calls it from one step thread, and ``LLM``
from the caller's thread.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass

import torch

from loraserve import metrics
from loraserve.config import EngineConfig
from loraserve.engine.admission import PreparedRequest, check_prompt, truncate_prompt
from loraserve.engine.builder import build_parts
from loraserve.engine.detokenizer import IncrementalDetokenizer, update_text
from loraserve.engine.logging_stat_logger import LoggingStatLogger, log_stats_interval
from loraserve.engine.sampler import SampledToken, prompt_logprobs, sample
from loraserve.engine.scheduler import ScheduledStep
from loraserve.engine.sequence import Sequence
from loraserve.engine.stats import FinishedRequest, SequenceTimes, StatLogger, StepStats
from loraserve.engine.structured_output import CompiledGrammar, GrammarCompiler
from loraserve.errors import InvalidRequestError, LoRAAlreadyLoadedError
from loraserve.logprobs import Logprob
from loraserve.lora.ids import next_lora_id
from loraserve.lora.manager import LoRAEvents, LoRAManager
from loraserve.lora.request import LoRARequest
from loraserve.outputs import CompletionOutput, RequestOutput
from loraserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

@dataclass
class _Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    seqs: list[Sequence]
    lora: LoRARequest | None

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)

    def summary(self) -> FinishedRequest:
        return FinishedRequest(len(self.seqs), max(len(s.output_token_ids) for s in self.seqs))


class LLMEngine:
    def __init__(self, config: EngineConfig, lora_events: LoRAEvents | None = None) -> None:
        self.config = config
        parts = build_parts(config, lora_events)
        self.device, self.spec, self.dtype = parts.device, parts.spec, parts.dtype
        self.tokenizer, self.context = parts.tokenizer, parts.context
        self.max_model_len = parts.context.max_model_len
        self.model, self.eos_token_ids = parts.model, parts.eos_token_ids
        self.sampling_defaults, self.max_logprobs = parts.sampling_defaults, parts.max_logprobs
        self.lora_manager = parts.lora_manager
        self.runner, self.scheduler = parts.runner, parts.scheduler
        self.grammars = GrammarCompiler(self.tokenizer.tokenizer_json, self.spec.vocab_size,
                                        sorted(self.eos_token_ids))
        self.detokenize_every_step = False  # streaming callers want text as it grows
        self._requests: dict[str, _Request] = {}
        # who hears about every step: the server's vllm:* series, the periodic log line
        self.stat_loggers: list[StatLogger] = []
        self._preemptions_seen = 0
        self._rng = random.Random(config.seed)
        self._next_seq_id = 0

    # ---- requests ----------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        lora_request: LoRARequest | None = None,
        prompt: str | None = None,
    ) -> None:
        """Prepare and queue a request; validation errors are raised here, before anything is
        queued (the offline API's way: an adapter not loaded yet is loaded)."""
        prompt_token_ids = self.check_prompt(prompt_token_ids, params)
        grammar = self.compile_grammar(params)
        prepared = PreparedRequest(prompt_token_ids, params, self.pin_lora(lora_request), prompt,
                                   grammar=grammar)
        try:
            self.admit(request_id, prepared)
        except BaseException:
            self.unpin_lora(prepared.lora)
            raise

    def check_prompt(self, prompt_token_ids: list[int], params: SamplingParams) -> list[int]:
        """Admission's checks (vocabulary, the context limit); run once per request. Returns
        the prompt the request runs on (its last ``truncate_prompt_tokens`` tokens); tokenizes
        ``bad_words``."""
        prompt_token_ids = truncate_prompt(prompt_token_ids, params, self.max_model_len)
        if params.bad_words:
            params.update_from_tokenizer(self.tokenizer)
        check_prompt(prompt_token_ids, params, self.spec.vocab_size, self.context,
                     self.max_logprobs)
        return prompt_token_ids

    def compile_grammar(self, params: SamplingParams) -> CompiledGrammar | None:
        """The request's structured-outputs constraint, compiled (cached by spec), or None;
        slow for a new spec, so the server calls it off the step thread."""
        spec = params.structured_outputs
        return None if spec is None else self.grammars.compile(spec)

    def admit(self, request_id: str, prepared: PreparedRequest) -> None:
        """Queue a request that passed ``check_prompt`` and holds its adapter pinned."""
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        params, lora = prepared.params, prepared.lora
        prompt_token_ids = prepared.prompt_token_ids
        now = time.monotonic()
        seqs = [
            Sequence(
                seq_id=self._next_seq_id + index,
                request_id=request_id,
                index=index,
                prompt_token_ids=list(prompt_token_ids),
                params=params,
                lora=lora,
                generator=self._generator(params, index),
                times=SequenceTimes(arrival=prepared.arrival_time, queued=now),
                detokenizer=IncrementalDetokenizer(params.skip_special_tokens),
                matcher=prepared.grammar.new_matcher() if prepared.grammar else None,
            )
            for index in range(params.n)
        ]
        self._next_seq_id += params.n
        self._requests[request_id] = _Request(
            request_id, prepared.prompt, list(prompt_token_ids), seqs, lora
        )
        for seq in seqs:
            self.scheduler.add(seq)
        self._series(metrics.PROMPT_TOKENS, lora).inc(len(prompt_token_ids))

    def pin_lora(
        self, lora_request: LoRARequest | None, register: bool = True
    ) -> LoRARequest | None:
        """Make an adapter host-resident for one more request (parsing it if needed).

        With ``register`` an adapter not loaded yet is loaded (the offline API's way);
        without it, an unknown name is a LoRANotFoundError (the server's way).
        Thread-safe: the server calls it off the step thread so parsing never stalls a step.
        """
        if lora_request is None:
            return None
        manager = self._lora_manager(lora_request.lora_name)
        if not register:  # whatever is registered under the name now, pinned in one step
            return manager.pin(lora_request.lora_name)
        lora = manager.add(lora_request)  # another path under a known name is refused
        manager.ensure_host(lora)
        return lora

    def load_lora(self, lora_request: LoRARequest) -> LoRARequest:
        """Load and register an adapter under a fresh, never reused id; the name must be new
        (one of several concurrent loads of a name wins, the others get LoRAAlreadyLoadedError)."""
        name = lora_request.lora_name
        manager = self._lora_manager(name)
        if name == self.config.served_model_name:
            raise LoRAAlreadyLoadedError(name)
        request = dataclasses.replace(lora_request, lora_int_id=next_lora_id())
        return manager.add(request, exclusive=True)

    def _lora_manager(self, lora_name: str) -> LoRAManager:
        if self.lora_manager is None:
            raise InvalidRequestError(
                f"LoRA adapter '{lora_name}' requested but LoRA is not enabled; "
                "start with enable_lora=True (--enable-lora)"
            )
        return self.lora_manager

    def unpin_lora(self, lora: LoRARequest | None) -> None:
        if lora is not None and self.lora_manager is not None:
            self.lora_manager.release_host(lora)

    def _generator(self, params: SamplingParams, index: int) -> torch.Generator | None:
        if params.greedy:
            return None
        seed = params.seed + index if params.seed is not None else self._rng.getrandbits(63)
        return torch.Generator(device=self.device).manual_seed(seed % 2**64)  # torch's range

    def abort_request(self, request_id: str) -> None:
        request = self._requests.pop(request_id, None)
        if request is None:
            return
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")
        self.unpin_lora(request.lora)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def unfinished_request_ids(self) -> list[str]:
        return list(self._requests)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    # ---- the step ----------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one batched forward pass; return a snapshot of each request that advanced.

        A failure in one sequence's sampling or bookkeeping ends that sequence alone with
        finish_reason "error"; every other sequence of the step goes on unchanged.
        """
        scheduled = self.scheduler.schedule()
        if scheduled is None:
            return []
        stats = self._begin_step(scheduled)
        logits = self.runner.run(scheduled)
        for row, prompt_rows in logits.prompt.items():
            seq = scheduled.seqs[row]
            try:
                self._record_prompt_logprobs(seq, prompt_rows)
            except Exception as exc:  # noqa: BLE001 - this sequence's failure alone
                self._fail(seq, exc, stats)
        sampled = sample(logits.next_token, scheduled.seqs, self.eos_token_ids)
        now = time.monotonic()
        touched: dict[str, _Request] = {}
        for seq, choice in zip(scheduled.seqs, sampled):
            touched[seq.request_id] = self._requests[seq.request_id]
            if seq.is_finished:  # failed above
                continue
            try:
                if choice.error is not None:
                    raise choice.error
                self._advance(seq, choice, now, stats)
            except Exception as exc:  # noqa: BLE001 - likewise
                self._fail(seq, exc, stats)
        outputs = [self._snapshot(r) for r in touched.values()]
        for request in touched.values():
            if request.finished:
                stats.finished_requests.append(request.summary())
                del self._requests[request.request_id]
                self.unpin_lora(request.lora)
        self._record(stats)
        return outputs

    def record_state(self) -> None:
        """Tell the stat loggers the batch as it is now (the step thread, when going idle)."""
        self._record(None)

    def _record(self, stats: StepStats | None) -> None:
        if self.stat_loggers:
            state = self.scheduler.batch_state()
            for stat_logger in self.stat_loggers:
                stat_logger.record(state, stats)

    def add_log_stats(self) -> LoggingStatLogger:
        """Log the periodic statistics line (unless ``disable_log_stats``)."""
        adapters = self.lora_manager.usage if self.lora_manager is not None else None
        stat_logger = LoggingStatLogger(log_stats_interval(), adapters)
        self.stat_loggers.append(stat_logger)
        return stat_logger

    def _begin_step(self, scheduled: ScheduledStep) -> StepStats:
        """A sequence scheduled for the first time leaves the queue now; the step's stats."""
        now = time.monotonic()
        for seq in scheduled.seqs:
            if seq.times.scheduled is None:
                seq.times.scheduled = now
        preemptions = self.scheduler.num_preemptions - self._preemptions_seen
        self._preemptions_seen = self.scheduler.num_preemptions
        return StepStats(num_tokens=scheduled.num_tokens, preemptions=preemptions)

    def _advance(self, seq: Sequence, choice: SampledToken, now: float, stats: StepStats) -> None:
        """Append the sampled token, record its logprobs and metrics, finish if it is done."""
        token = choice.token_id
        seq.output_token_ids.append(token)
        if seq.matcher is not None and not seq.matcher.consume_token(token):
            raise RuntimeError(f"structured output refused token {token}: {seq.matcher.get_error()}")
        if choice.logprobs is not None:
            self._record_logprobs(seq, choice)
        self._count_token(seq, now, stats)
        reason = self._finish_reason(seq, token)
        if reason is not None:
            self._finish(seq, reason, now, stats)

    def _count_token(self, seq: Sequence, now: float, stats: StepStats) -> None:
        since_previous = seq.times.token(now)
        self._series(metrics.GENERATION_TOKENS, seq.lora).inc()
        stats.generation_tokens += 1
        if since_previous is not None:
            stats.inter_token_latency.append(since_previous)
            return
        # the prompt is processed: vLLM counts its tokens now
        time_to_first_token = now - seq.times.arrival
        self._series(metrics.TIME_TO_FIRST_TOKEN, seq.lora).observe(time_to_first_token)
        stats.time_to_first_token.append(time_to_first_token)
        stats.prompt_tokens += len(seq.prompt_token_ids)

    def _finish(self, seq: Sequence, reason: str, now: float, stats: StepStats) -> None:
        self.scheduler.finish(seq, reason)
        self._series(metrics.REQUESTS, seq.lora, finish_reason=reason).inc()
        stats.finished_sequences.append(seq.times.finished(
            now, reason, len(seq.prompt_token_ids), len(seq.output_token_ids), seq.params.max_tokens
        ))

    def _fail(self, seq: Sequence, exc: BaseException, stats: StepStats) -> None:
        """End one sequence with finish_reason "error"; the rest of the batch is untouched."""
        logger.error(
            "request %r (sample %d, adapter %r) failed and was stopped alone: %s",
            seq.request_id, seq.index, seq.lora_name, exc, exc_info=exc,
        )
        seq.error = f"{type(exc).__name__}: {exc}"
        self._finish(seq, "error", time.monotonic(), stats)

    def _record_prompt_logprobs(self, seq: Sequence, logits: torch.Tensor) -> None:
        scored = prompt_logprobs(logits, seq.prompt_token_ids, seq.params.prompt_logprobs)
        for entries in scored[1:]:
            self._decode_logprobs(entries)
        seq.prompt_logprobs = scored

    def _record_logprobs(self, seq: Sequence, choice: SampledToken) -> None:
        self._decode_logprobs(choice.logprobs)
        seq.output_logprobs.append(choice.logprobs)
        seq.cumulative_logprob += choice.logprobs[choice.token_id].logprob

    def _decode_logprobs(self, entries: dict[int, Logprob]) -> None:
        for token_id, logprob in entries.items():
            logprob.decoded_token = self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        params = seq.params  # below min_tokens the sampler masked EOS and the stop ids
        if token in params.stop_token_ids:
            update_text(seq, self.tokenizer, drop_last=True)
            seq.stop_reason = token
            return "stop"
        if not params.ignore_eos and token in self.eos_token_ids:
            update_text(seq, self.tokenizer, drop_last=True)
            return "stop"
        text_each_step = bool(params.stop) or self.detokenize_every_step
        if text_each_step:
            # as in vLLM, stop strings count once more than min_tokens tokens are out
            find_stop = len(seq.output_token_ids) > params.min_tokens
            if (stop := update_text(seq, self.tokenizer, find_stop=find_stop)) is not None:
                seq.stop_reason = stop
                return "stop"
        if seq.matcher is not None and seq.matcher.is_stopped():  # the grammar is complete
            update_text(seq, self.tokenizer, find_stop=False, final=True)
            return "stop"
        return self._length_reason(seq)

    def _length_reason(self, seq: Sequence) -> str | None:
        """Finish as "length" at max_tokens or the context limit, bringing the text up to date."""
        max_tokens = seq.params.max_tokens
        if (max_tokens is not None and len(seq.output_token_ids) >= max_tokens) or (
            seq.num_tokens >= self.max_model_len
        ):
            update_text(seq, self.tokenizer, find_stop=False, final=True)
            return "length"
        return None

    def _snapshot(self, request: _Request) -> RequestOutput:
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt,
            prompt_token_ids=request.prompt_token_ids,
            prompt_logprobs=request.seqs[0].prompt_logprobs,
            outputs=[_completion(s) for s in request.seqs],
            finished=request.finished,
            lora_name=request.lora.lora_name if request.lora else None,
            lora_request=request.lora,
        )

    def _series(self, metric, lora: LoRARequest | None, **labels: str):  # noqa: ANN001, ANN202
        """A per-model loraserve_* series: the base model's, or the adapter's (bounded)."""
        name = lora.lora_name if lora else None
        base = str(self.config.served_model_name)
        return metrics.ADAPTER_LABELS.labels(metric, name, base, **labels)


def _completion(seq: Sequence) -> CompletionOutput:
    text = seq.text
    if not seq.is_finished and (holdback := seq.params.stop_holdback):
        text = text[: max(0, len(text) - holdback)]  # may be the start of a stop string
    asked = seq.params.logprobs is not None
    return CompletionOutput(
        seq.index, text, list(seq.output_token_ids), seq.finish_reason, seq.stop_reason,
        logprobs=list(seq.output_logprobs) if asked else None,
        cumulative_logprob=seq.cumulative_logprob if asked else None,
        error=seq.error,
    )

