"""The offline API: ``LLM(model, enable_lora=True).generate(prompts, params, lora_request)``."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from difflib import get_close_matches
from typing import Any

from tqdm.auto import tqdm

from loraserve.config import EngineConfig
from loraserve.engine.builder import build_resolution, checked_plugins
from loraserve.engine.llm_engine import LLMEngine
from loraserve.entrypoints.vllm_options import VLLM_ONLY_OPTIONS
from loraserve.errors import InvalidRequestError, LoRANotFoundError
from loraserve.logger import configure_logging
from loraserve.lora.request import LoRARequest
from loraserve.outputs import RequestOutput
from loraserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

Prompt = str | dict[str, Any]
LoRASpec = LoRARequest | str | None
Conversation = list[dict[str, Any]]


class LLM:
    """One base model, optionally with LoRA adapters, generating for a list of prompts at once.

    ``model`` is a Hugging Face directory or a GGUF file; ``tokenizer`` a Hugging Face
    tokenizer directory to use instead of the model's own. vLLM's engine options that mean
    nothing here (``vllm_options.VLLM_ONLY_OPTIONS``) are accepted with a warning; any other
    unknown keyword is a TypeError, as in vLLM, so a misspelt option is never dropped.
    Logging is set up from vLLM's variables (``loraserve.logger``) on the ``loraserve`` logger,
    as vLLM does on import, unless the application configured logging itself.
    """

    def __init__(
        self,
        model: str,
        enable_lora: bool = False,
        max_loras: int = 1,
        max_lora_rank: int = 16,
        max_cpu_loras: int | None = None,
        served_model_name: str | None = None,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        max_num_seqs: int = 64,
        device: str = "auto",
        lora_merge: bool = True,
        tokenizer: str | None = None,
        max_num_batched_tokens: int | None = None,
        max_logprobs: int = 20,
        generation_config: str = "auto",
        override_generation_config: dict | None = None,
        block_size: int = 16,
        kv_cache_memory_bytes: int | None = None,
        lora_dtype: str = "auto",
        disable_log_stats: bool = True,
        enforce_eager: bool = False,
        **vllm_options: Any,
    ) -> None:
        configure_logging("loraserve")
        _check_vllm_options(vllm_options)
        self.config = EngineConfig(
            model=model,
            served_model_name=served_model_name,
            tokenizer=tokenizer,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            block_size=block_size,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            device=device,
            enable_lora=enable_lora,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            max_cpu_loras=max_cpu_loras,
            lora_dtype=lora_dtype,
            lora_merge=lora_merge,
            max_logprobs=max_logprobs,
            generation_config=generation_config,
            override_generation_config=override_generation_config,
            disable_log_stats=disable_log_stats,
            enforce_eager=enforce_eager,
        )
        self.engine = LLMEngine(self.config, lora_events=checked_plugins())
        if not disable_log_stats:  # off by default offline, as in vLLM's LLM
            self.engine.add_log_stats()
        self._resolution = build_resolution(
            self.config, load=lambda request: asyncio.to_thread(self.engine.load_lora, request)
        )
        self._counter = 0

    def get_tokenizer(self):
        return self.engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """``SamplingParams`` with the generation config's defaults (``generation_config``)."""
        return SamplingParams(**self.engine.sampling_defaults)

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        lora_request: LoRASpec | Sequence[LoRASpec] = None,
        use_tqdm: bool | Callable[..., tqdm] = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt; one output per prompt, in order.

        ``use_tqdm`` shows a "Processed prompts" progress bar on stderr, as vLLM does (False: none;
        a callable: the ``tqdm`` class to use).

        ``sampling_params`` is one ``SamplingParams`` for all prompts or a list, one per prompt;
        none means ``get_default_sampling_params()``.

        ``lora_request`` is one adapter for all prompts or a list with one entry (or None)
        per prompt. An entry may be a ``LoRARequest`` or the name of an adapter that is
        loaded or that a resolver plugin can find (see docs/plugins.md).
        """
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        params = self._per_prompt(sampling_params or self.get_default_sampling_params(),
                                  len(prompts), "sampling_params")
        loras = self._per_prompt(lora_request, len(prompts), "lora_request")
        ids: list[str] = []
        try:
            for prompt, lora, prompt_params in zip(prompts, loras, params):
                text, token_ids = self._tokenize(prompt)
                request_id = str(self._counter)
                self._counter += 1
                self.engine.add_request(request_id, token_ids, prompt_params, self._lora(lora), prompt=text)
                ids.append(request_id)
            return self._run(ids, use_tqdm)
        except BaseException:  # a refused prompt (or Ctrl-C) leaves none of this call's queued
            for request_id in ids:
                self.engine.abort_request(request_id)
            raise

    def chat(
        self,
        messages: Conversation | Sequence[Conversation],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        lora_request: LoRASpec | Sequence[LoRASpec] = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        use_tqdm: bool | Callable[..., tqdm] = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[RequestOutput]:
        """Generate a reply to one conversation (a list of ``{"role", "content"}`` messages) or to
        each of a list of them; one output per conversation, in order.

        Each conversation is rendered by ``chat_template`` (a template's text or name) or the
        tokenizer's own, then generated as ``generate`` does. ``continue_final_message`` leaves
        the last message open so the model continues it (instead of adding a generation prompt;
        the two cannot both be set). ``tools`` (OpenAI's function specs) reach the template.
        """
        options = {"chat_template": chat_template, "add_generation_prompt": add_generation_prompt,
                   "continue_final_message": continue_final_message, "tools": tools,
                   **(chat_template_kwargs or {})}  # the kwargs may set the others, as in vLLM
        if options["continue_final_message"] and options["add_generation_prompt"]:
            raise InvalidRequestError("continue_final_message and add_generation_prompt cannot "
                                      "both be True; pass add_generation_prompt=False")
        conversations = [messages] if _is_conversation(messages) else list(messages)
        prompts = [self._render_chat(conversation, options) for conversation in conversations]
        return self.generate(prompts, sampling_params, lora_request, use_tqdm=use_tqdm)

    def _render_chat(self, conversation: Conversation, options: dict[str, Any]) -> dict[str, Any]:
        """One conversation as ids; the template writes the special tokens itself (as vLLM).
        The rendered text is the output's ``prompt`` (vLLM leaves it None)."""
        try:
            text = self.engine.tokenizer.apply_chat_template(list(conversation), **options)
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"the chat template could not render the messages: {exc}") from exc
        ids = self.engine.tokenizer.encode(text, add_special_tokens=False)
        return {"prompt": text, "prompt_token_ids": ids}

    def _run(self, ids: list[str], use_tqdm: bool | Callable[..., tqdm]) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        with _progress_bar(use_tqdm, len(ids)) as bar:
            started = time.perf_counter()
            prompt_tokens = output_tokens = 0
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        prompt_tokens += len(output.prompt_token_ids)
                        output_tokens += sum(len(o.token_ids) for o in output.outputs)
                        elapsed = max(time.perf_counter() - started, 1e-9)
                        bar.set_postfix_str(
                            f"est. speed input: {prompt_tokens / elapsed:.2f} toks/s, "
                            f"output: {output_tokens / elapsed:.2f} toks/s", refresh=False)
                        bar.update(1)
        return [finished[i] for i in ids]

    def _tokenize(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.engine.tokenizer.encode(prompt)
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return prompt.get("prompt"), list(prompt["prompt_token_ids"])
        raise InvalidRequestError(
            f"a prompt must be a string or a {{'prompt_token_ids': [...]}} dict, got {prompt!r}"
        )

    @staticmethod
    def _per_prompt(value: Any, count: int, name: str) -> list[Any]:
        """One value for every prompt, or a list with exactly one entry per prompt."""
        if isinstance(value, (list, tuple)):
            if len(value) != count:
                raise InvalidRequestError(f"{name} has {len(value)} entries for {count} prompts")
            return list(value)
        return [value] * count

    def _lora(self, lora: LoRASpec) -> LoRARequest | None:
        if lora is None or isinstance(lora, LoRARequest):
            return lora
        manager = self.engine.lora_manager
        if manager is None:
            raise LoRANotFoundError(lora, "LoRA is not enabled; pass enable_lora=True.")
        return manager.get(lora) or asyncio.run(self._resolution.resolve(lora))


def _is_conversation(messages: Any) -> bool:
    """One conversation (a list of messages) rather than a list of conversations."""
    return not messages or not isinstance(messages[0], (list, tuple))


def _progress_bar(use_tqdm: bool | Callable[..., tqdm], total: int) -> tqdm:
    """vLLM's bar over prompts; ``use_tqdm`` may be the tqdm class to use."""
    make = use_tqdm if callable(use_tqdm) else tqdm
    return make(total=total, desc="Processed prompts", dynamic_ncols=True,
                disable=use_tqdm is False,
                postfix="est. speed input: 0.00 toks/s, output: 0.00 toks/s")


def _check_vllm_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - VLLM_ONLY_OPTIONS)
    if unknown:
        known = [*inspect.signature(LLM.__init__).parameters, *VLLM_ONLY_OPTIONS]
        hints = [f"{name!r} (did you mean {close[0]!r}?)" if (close := get_close_matches(name, known, 1))
                 else repr(name) for name in unknown]
        raise TypeError(f"LLM() got unexpected keyword argument(s): {', '.join(hints)}")
    if options:
        logger.warning("ignoring vLLM options loraserve does not use: %s", ", ".join(sorted(options)))
