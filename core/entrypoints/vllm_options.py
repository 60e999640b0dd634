"""vLLM options loraserve accepts and ignores, so that vLLM scripts and launch lines run
unchanged: the one list behind ``LLM(**kwargs)`` (the engine options) and ``loraserve serve``
(all of them). Each entry says how its flag parses, as vLLM's does (a boolean flag takes no
value, a valued flag consumes its value), and why loraserve has no use for it; the warning
names both. Options loraserve implements are not here: they are real ``LLM`` parameters and
real flags.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

# How a flag parses, as in vLLM: VALUE takes one value; BOOL is --x / --no-x; FLAG is --x
# alone; VALUES takes one or more; OPTIONAL takes zero or one; APPEND takes one, repeatable.
VALUE, BOOL, FLAG, VALUES, OPTIONAL, APPEND = "value", "bool", "flag", "values", "optional", "append"


@dataclass(frozen=True)
class IgnoredOption:
    name: str  # vLLM's keyword; the flag is --name with dashes
    takes: str
    reason: str  # why it means nothing here, said in the warning
    engine: bool = True  # one of vLLM's engine arguments, so LLM(...) accepts it too
    aliases: tuple[str, ...] = ()  # vLLM's short flags (-tp)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _group(reason: str, takes_names: str, engine: bool = True) -> list[IgnoredOption]:
    """Entries from ``"kind name[/alias] kind name ..."`` (one reason for all)."""
    words = takes_names.split()
    entries = []
    for kind, spec in zip(words[::2], words[1::2]):
        name, *aliases = spec.split("/")
        entries.append(IgnoredOption(name, kind, reason, engine, tuple(aliases)))
    return entries


IGNORED_OPTIONS: tuple[IgnoredOption, ...] = tuple([
    *_group("loraserve runs one engine on one device", """
        value tensor_parallel_size/-tp value pipeline_parallel_size/-pp
        value data_parallel_size/-dp value data_parallel_size_local/-dpl
        value data_parallel_rank/-dpn value data_parallel_start_rank/-dpr
        value data_parallel_address/-dpa value data_parallel_rpc_port/-dpp
        value data_parallel_backend/-dpb bool data_parallel_hybrid_lb bool data_parallel_external_lb
        value decode_context_parallel_size/-dcp value distributed_executor_backend
        bool enable_expert_parallel bool enable_eplb value eplb_config
        value expert_placement_strategy value max_parallel_loading_workers
        bool ray_workers_use_nsight bool disable_custom_all_reduce value worker_cls
        value worker_extension_cls bool enable_dbo value nnodes value node_rank
        value master_addr value master_port value kv_transfer_config value kv_events_config
        value ec_transfer_config bool fully_sharded_loras"""),
    *_group("the KV cache takes 80% of free GPU memory (2 GiB on CPU); "
            "--kv-cache-memory-bytes sets its size", """
        value gpu_memory_utilization value swap_space value cpu_offload_gb
        value num_gpu_blocks_override value kv_offloading_size value kv_offloading_backend"""),
    *_group("the KV cache is kept in the model's dtype", """
        value kv_cache_dtype bool calculate_kv_scales value mamba_cache_dtype
        value mamba_ssm_cache_dtype"""),
    *_group("loraserve has no prefix cache: every prompt is prefilled", """
        bool enable_prefix_caching value prefix_caching_hash_algo bool kv_sharing_fast_prefill
        bool disable_hybrid_kv_cache_manager"""),
    *_group("loraserve captures CUDA graphs for decode steps at its own batch-size buckets, "
            "for any context length, without torch.compile (--enforce-eager turns them off)", """
        value max_seq_len_to_capture values cuda_graph_sizes
        value max_cudagraph_capture_size value compilation_config/-O
        bool disable_cascade_attn value override_attention_dtype value attention_backend
        value additional_config"""),
    *_group("prompts are prefilled whole and scheduled first come, first served", """
        bool enable_chunked_prefill value max_num_partial_prefills
        value max_long_partial_prefills value long_prefill_token_threshold
        bool disable_chunked_mm_input value scheduling_policy value scheduler_cls
        value scheduler_delay_factor value preemption_mode value num_lookahead_slots
        value num_scheduler_steps bool multi_step_stream_outputs bool async_scheduling
        value stream_interval flag disable_async_output_proc flag use_v2_block_manager"""),
    *_group("MODEL is a local directory or GGUF file; nothing is downloaded", """
        value revision value code_revision value tokenizer_revision value download_dir
        optional hf_token value hf_config_path value load_format value config_format
        value model_loader_extra_config values ignore_patterns bool use_tqdm_on_load
        value pt_load_map_location value safetensors_load_strategy
        value qlora_adapter_name_or_path"""),
    *_group("loraserve never runs a model's own code", """
        bool trust_remote_code value model_impl"""),
    *_group("the tokenizer is MODEL's, or --tokenizer's", """
        value tokenizer_mode bool skip_tokenizer_init"""),
    *_group("the model's config.json is used as it is", """
        value hf_overrides value rope_scaling value rope_theta bool disable_sliding_window
        value max_seq_len"""),
    *_group("weights are loaded in --dtype (GGUF files are dequantized)", """
        value quantization/-q"""),
    *_group("loraserve serves text generation only", """
        value task value runner value convert value pooler_config value override_pooler_config
        value io_processor_plugin bool enable_prompt_embeds value logits_processor_pattern
        values logits_processors value logprobs_mode bool enable_sleep_mode"""),
    *_group("loraserve serves text-only models", """
        value limit_mm_per_prompt value mm_processor_kwargs value media_io_kwargs
        value mm_processor_cache_gb value mm_processor_cache_type bool disable_mm_preprocessor_cache
        value mm_shm_cache_max_object_size_mb value mm_encoder_tp_mode bool interleave_mm_strings
        bool skip_mm_profiling value video_pruning_rate value allowed_local_media_path
        values allowed_media_domains value default_mm_loras"""),
    *_group("loraserve has no speculative decoding", """
        value speculative_config value speculative_model value num_speculative_tokens"""),
    *_group("structured outputs always use llguidance, with JSON whitespace as the request "
            "says", """
        value structured_outputs_config value guided_decoding_backend
        bool guided_decoding_disable_fallback bool guided_decoding_disable_any_whitespace
        bool guided_decoding_disable_additional_properties"""),
    *_group("reasoning is not parsed: it stays in the content", """
        value reasoning_parser value reasoning_parser_plugin bool enable_reasoning"""),
    *_group("adapters with their own embeddings, biases or scaling factors are not supported", """
        value lora_extra_vocab_size value long_lora_scaling_factors bool enable_lora_bias
        bool enable_prompt_adapter value max_prompt_adapters value max_prompt_adapter_token"""),
    *_group("deprecated in vLLM and without effect", """
        value tokenizer_pool_size value tokenizer_pool_type value tokenizer_pool_extra_config"""),
    *_group("no tracing; metrics are served on /metrics", """
        value otlp_traces_endpoint value collect_detailed_traces
        value show_hidden_metrics_for_version"""),
    # Frontend flags: the server's, not the engine's (LLM(...) never took them)
    *_group("tool parsers are built in (--tool-call-parser); no tool servers", """
        value tool_parser_plugin value tool_server bool exclude_tools_when_tool_choice_none""",
            engine=False),
    *_group("loraserve serves plain HTTP on a TCP port; put a TLS or socket proxy in front", """
        value ssl_keyfile value ssl_certfile value ssl_ca_certs value ssl_cert_reqs
        bool enable_ssl_refresh value uds value h11_max_incomplete_event_size
        value h11_max_header_count""", engine=False),
    *_group("loraserve runs its HTTP server and engine in one process", """
        flag headless value api_server_count/-asc bool disable_frontend_multiprocessing
        flag aggregate_engine_logging append middleware""", engine=False),
    *_group("request and response logging is not implemented yet", """
        bool enable_log_requests bool disable_log_requests bool enable_log_outputs
        bool enable_log_deltas value max_log_len value log_config_file bool log_error_stack""",
        engine=False),
    *_group("message content is always rendered as a string", """
        value chat_template_content_format""", engine=False),
    *_group("not implemented", """
        bool return_tokens_as_token_ids bool enable_request_id_headers bool disable_fastapi_docs
        bool enable_prompt_tokens_details bool enable_server_load_tracking
        bool enable_force_include_usage bool tokens_only""",
        engine=False),
])

# LLM(**kwargs) accepts these with a warning; any other unknown keyword is a TypeError
VLLM_ONLY_OPTIONS = frozenset(option.name for option in IGNORED_OPTIONS if option.engine)


class _RecordIgnored(argparse.Action):
    """Keeps the flag as given (``--no-x`` included) in ``namespace.ignored_vllm_flags``, so
    each ignored flag is warned about once however often it is repeated."""

    def __init__(self, option_strings, dest, takes: str, **kwargs) -> None:  # noqa: ANN001
        nargs = {VALUE: None, APPEND: None, VALUES: "+", OPTIONAL: "?", BOOL: 0, FLAG: 0}[takes]
        super().__init__(option_strings, dest, nargs=nargs, default=argparse.SUPPRESS, **kwargs)
        self.takes = takes

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        shown = option_string if option_string.startswith("--") else self.option_strings[0]
        if self.takes == BOOL and option_string.startswith("--no-"):
            shown = option_string
        ignored = dict(getattr(namespace, "ignored_vllm_flags", {}))
        ignored[self.dest] = (shown, values)
        namespace.ignored_vllm_flags = ignored


def add_ignored_flags(parser: argparse.ArgumentParser) -> None:
    """Every ignored vLLM serve flag, parsed as vLLM parses it and kept out of ``--help``."""
    group = parser.add_argument_group(
        "vLLM flags loraserve ignores",
        "Every other flag of 'vllm serve' is accepted and ignored with one warning naming it "
        "and why (docs/server.md lists them), so a vLLM launch line runs unchanged.")
    for option in IGNORED_OPTIONS:
        strings = [option.flag, *option.aliases]
        if option.takes == BOOL:
            strings.append("--no-" + option.flag[2:])
        group.add_argument(*strings, dest=option.name, action=_RecordIgnored,
                           takes=option.takes, help=argparse.SUPPRESS)


_SECRETS = frozenset({"hf_token"})  # their values never reach the log


def ignored_flag_warnings(namespace: argparse.Namespace) -> list[str]:
    """One line per ignored flag given, in the table's order."""
    given = getattr(namespace, "ignored_vllm_flags", {})
    lines = []
    for option in IGNORED_OPTIONS:
        if option.name in given:
            shown, values = given[option.name]
            if option.name not in _SECRETS:
                shown += _shown_values(values)
            lines.append(f"ignoring {shown}: {option.reason}")
    return lines


def _shown_values(values: object) -> str:
    if values is None or values == []:
        return ""
    items = values if isinstance(values, list) else [values]
    return "".join(" " + (v if v.isprintable() and v and " " not in v else repr(v)) for v in items)
