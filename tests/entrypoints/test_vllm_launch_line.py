"""``loraserve serve`` takes vLLM's launch lines: the flags that mean something here act as in
vLLM, every other ``vllm serve`` flag parses as vLLM parses it and is ignored with one warning;
``--config`` reads vLLM's YAML file. Ends with the real command in a subprocess."""

from __future__ import annotations

import inspect
import logging
import signal
import subprocess
from pathlib import Path

import openai
import pytest
from openai_harness import clean_env, loraserve_cmd, wait_until_ready

from loraserve import LLM
from loraserve.entrypoints.cli import main, parse_args
from loraserve.entrypoints.cli_args import configs_from_args
from loraserve.entrypoints.openai.server_config import LoRAModulePath
from loraserve.entrypoints.vllm_options import (
    BOOL,
    FLAG,
    IGNORED_OPTIONS,
    OPTIONAL,
    VALUES,
    VLLM_ONLY_OPTIONS,
)
from loraserve.tokenizer import Tokenizer
from loraserve.version import __version__

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
IGNORED_IN_LAUNCH_LINE = ["--gpu-memory-utilization", "--tensor-parallel-size",
                          "--trust-remote-code", "--cuda-graph-sizes", "--fully-sharded-loras",
                          "--enable-prefix-caching"]


def vllm_launch_line(model: str, adapter: str, template: str, tokenizer: str) -> list[str]:
    return ["serve", model, "--enable-lora", "--lora-modules", f"a={adapter}",
            "--gpu-memory-utilization", "0.9", "--tensor-parallel-size", "1",
            "--trust-remote-code", "--enforce-eager", "--cuda-graph-sizes", "8", "--max-num-batched-tokens", "2048",
            "--chat-template", template, "--tokenizer", tokenizer, "--lora-dtype", "auto",
            "--fully-sharded-loras", "--generation-config", "auto",
            "--uvicorn-log-level", "warning", "--enable-prefix-caching", "--max-logprobs", "5",
            "--trust-request-chat-template", "--enable-auto-tool-choice",
            "--tool-call-parser", "hermes", "--allowed-origins", '["*"]', "--port", "0"]


def naming(messages: list[str], *flags: str) -> list[str]:
    """The warnings that name one of ``flags`` (not a longer flag it begins)."""
    return [m for m in messages for f in flags
            if m.startswith(f"ignoring {f}") and m[len(f"ignoring {f}")] in " :"]


def warnings_naming(caplog: pytest.LogCaptureFixture, flag: str) -> list[str]:
    return naming([r.getMessage() for r in caplog.records if r.levelno == logging.WARNING], flag)


def test_a_vllm_launch_line_takes_effect(tmp_path: Path, caplog, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    argv = vllm_launch_line("/models/m", "/adapters/a", str(template), "/tokenizers/t")
    with caplog.at_level(logging.WARNING):
        engine, server = configs_from_args(parse_args(argv))
    assert engine.model == "/models/m" and engine.enable_lora
    assert server.lora_modules == [LoRAModulePath("a", "/adapters/a")]
    assert engine.max_num_batched_tokens == 2048
    assert server.chat_template == TEMPLATE
    assert engine.tokenizer == "/tokenizers/t"
    assert (engine.lora_dtype, engine.generation_config) == ("auto", "auto")
    assert server.http_log_level == "warning" and server.access_log
    assert engine.max_logprobs == 5
    assert server.trust_request_chat_template
    assert server.enable_auto_tool_choice and server.tool_call_parser == "hermes"
    assert server.cors.allowed_origins == ["*"] and server.port == 0
    for flag in IGNORED_IN_LAUNCH_LINE:
        assert len(warnings_naming(caplog, flag)) == 1, flag
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == len(
        IGNORED_IN_LAUNCH_LINE)  # nothing implemented is warned about


def test_the_other_frontend_flags_take_effect():
    args = parse_args(["serve", "/m", "--allowed-origins", '["https://a.example"]',
                       "--allowed-methods", '["GET", "POST"]', "--allowed-headers", '["x-key"]',
                       "--allow-credentials", "--response-role", "bot", "--root-path", "/llm/",
                       "--disable-log-stats", "--device", "cpu", "--disable-uvicorn-access-log",
                       "--generation-config", "vllm", "--override-generation-config",
                       '{"temperature": 0.5}', "--block-size", "32", "--kv-cache-memory-bytes",
                       "1G", "--dtype", "half", "--max-model-len", "4k", "--no-enable-lora"])
    engine, server = configs_from_args(args)
    cors = server.cors
    assert (cors.allowed_origins, cors.allowed_methods) == (["https://a.example"], ["GET", "POST"])
    assert cors.allowed_headers == ["x-key"] and cors.allow_credentials
    assert (server.response_role, server.root_path, server.access_log) == ("bot", "/llm", False)
    assert engine.disable_log_stats and engine.device == "cpu"
    assert engine.generation_config == "vllm"
    assert engine.override_generation_config == {"temperature": 0.5}
    assert (engine.block_size, engine.kv_cache_memory_bytes) == (32, 2**30)
    assert (engine.dtype, engine.max_model_len, engine.enable_lora) == ("float16", 4000, False)
    defaults, _ = configs_from_args(parse_args(["serve", "/m"]))
    assert defaults.max_logprobs == 20 and defaults.generation_config == "auto"


def test_every_ignored_vllm_flag_parses_as_vllm_and_warns_once(caplog):
    argv = ["serve"]
    for option in IGNORED_OPTIONS:
        value = {BOOL: [], FLAG: [], OPTIONAL: [], VALUES: ["1", "2"]}.get(option.takes, ["7"])
        argv += [option.flag, *value]
        if option.takes == BOOL:  # the --no- form too; the last one given is the one named
            argv.append("--no-" + option.flag[2:])
    # a boolean flag takes no value: MODEL after it stays MODEL; valued flags keep theirs
    argv += ["--trust-remote-code", "/models/m", "--port", "9", "--tensor-parallel-size", "2"]
    with caplog.at_level(logging.WARNING):
        engine, server = configs_from_args(parse_args(argv))
    assert (engine.model, server.port) == ("/models/m", 9)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == len(IGNORED_OPTIONS)
    for option in IGNORED_OPTIONS:
        assert len(naming(messages, option.flag, "--no-" + option.flag[2:])) == 1, option.name
        assert any(option.reason in m for m in messages)
    assert "ignoring --tensor-parallel-size 2: loraserve runs one engine on one device" in messages
    assert "ignoring --trust-remote-code: loraserve never runs a model's own code" in messages


@pytest.mark.parametrize("argv, name, value", [
    (["-tp", "4"], "tensor_parallel_size", "4"),
    (["-O3"], "compilation_config", "3"),
    (["--no-enable-prefix-caching"], "enable_prefix_caching", []),
    (["--cuda-graph-sizes", "1", "2", "4"], "cuda_graph_sizes", ["1", "2", "4"]),
    (["--hf-token"], "hf_token", None),
])
def test_vllm_flag_forms(argv, name, value):
    assert parse_args(["serve", "/m", *argv]).ignored_vllm_flags[name][1] == value


def test_secrets_are_not_logged(caplog):
    with caplog.at_level(logging.WARNING):
        configs_from_args(parse_args(["serve", "/m", "--hf-token", "hf_secret"]))
    assert "ignoring --hf-token:" in caplog.text and "hf_secret" not in caplog.text


def test_config_file_flags_with_the_command_line_winning(tmp_path: Path, caplog):
    config = tmp_path / "serve.yaml"
    config.write_text("model: /models/from-yaml\nport: 6001\nmax_num_seqs: 3\nenable-lora: true\n"
                      "lora-modules: [a=/a, '{\"name\": \"b\", \"path\": \"/b\"}']\n"
                      "allowed-origins: ['https://a.example']\ntensor-parallel-size: 2\n"
                      "enforce-eager: true\ncuda-graph-sizes: [8]\nenable-prefix-caching: false\n"
                      "override-generation-config: {temperature: 0.3}\n")
    with caplog.at_level(logging.WARNING):
        engine, server = configs_from_args(
            parse_args(["serve", "--config", str(config), "--port", "7001"]))
    assert engine.model == "/models/from-yaml" and server.port == 7001  # the command line wins
    assert engine.max_num_seqs == 3 and engine.enable_lora and engine.enforce_eager
    assert server.lora_modules == [LoRAModulePath("a", "/a"), LoRAModulePath("b", "/b")]
    assert server.cors.allowed_origins == ["https://a.example"]
    assert engine.override_generation_config == {"temperature": 0.3}
    assert "ignoring --tensor-parallel-size 2" in caplog.text
    assert "ignoring --no-enable-prefix-caching" in caplog.text
    engine, _ = configs_from_args(parse_args(["serve", "/models/cli", "--config", str(config)]))
    assert engine.model == "/models/cli"  # MODEL on the command line wins too


@pytest.mark.parametrize("text, message", [
    ("no_such_flag: 1\n", "unknown key 'no_such_flag'"),
    ("[1, 2]\n", "expected a mapping"),
    ("port: [\n", "not valid YAML"),
])
def test_bad_config_files_are_flag_errors(tmp_path: Path, capsys, text, message):
    config = tmp_path / "serve.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit) as info:
        parse_args(["serve", "/m", "--config", str(config)])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_chat_template_is_a_file_or_the_template(tmp_path: Path, capsys):
    _, server = configs_from_args(parse_args(["serve", "/m", "--chat-template",
                                              "{{ messages[0]['content'] }}\\n"]))
    assert server.chat_template == "{{ messages[0]['content'] }}\n"  # vLLM unescapes one-liners
    for value, message in [(str(tmp_path / "missing.jinja"), "looks like a file path"),
                           ("{% if %}", "invalid --chat-template")]:
        with pytest.raises(SystemExit) as info:
            configs_from_args(parse_args(["serve", "/m", "--chat-template", value]))
        assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("value, expected", [("2048", 2048), ("2k", 2000), ("2K", 2048),
                                             ("1.5k", 1500), ("1M", 2**20)])
def test_token_counts_take_vllm_suffixes(value, expected):
    engine, _ = configs_from_args(parse_args(["serve", "/m", "--max-num-batched-tokens", value]))
    assert engine.max_num_batched_tokens == expected


@pytest.mark.parametrize("argv", [["--max-num-batched-tokens", "1.5K"], ["--max-model-len", "0"],
                                  ["--allowed-origins", "*"], ["--device", "tpu"],
                                  ["--override-generation-config", "[1]"]])
def test_bad_values_are_flag_errors(argv):
    with pytest.raises(SystemExit) as info:
        parse_args(["serve", "/m", *argv])
    assert info.value.code == 2


def test_model_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        configs_from_args(parse_args(["serve", "--port", "1"]))
    assert info.value.code == 2 and "MODEL is required" in capsys.readouterr().err
    engine, _ = configs_from_args(parse_args(["serve", "--model", "/models/m"]))
    assert engine.model == "/models/m"


@pytest.mark.parametrize("argv", [["--version"], ["-v"], ["serve", "--version"]])
def test_version(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"loraserve {__version__}"


def test_help_lists_what_is_implemented_and_not_the_ignored(capsys):
    with pytest.raises(SystemExit):
        parse_args(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--chat-template", "--tokenizer", "--max-num-batched-tokens", "--max-logprobs",
                 "--generation-config", "--lora-dtype", "--allowed-origins", "--allowed-methods",
                 "--allowed-headers", "--allow-credentials", "--response-role", "--root-path",
                 "--disable-log-stats", "--uvicorn-log-level", "--trust-request-chat-template",
                 "--device", "--config", "--version"):
        assert flag in out, flag
    assert "--gpu-memory-utilization" not in out and "--cuda-graph-sizes" not in out
    assert "Every other flag of 'vllm serve' is accepted and ignored with one warning" in out


def test_docs_list_every_flag():
    """docs/server.md names every flag loraserve serve implements and every one it ignores."""
    import argparse

    from loraserve.entrypoints.cli_args import add_serve_flags

    docs = (Path(__file__).parents[2] / "docs" / "server.md").read_text()
    parser = argparse.ArgumentParser()
    add_serve_flags(parser)
    shown = [a.option_strings[0] for a in parser._actions
             if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"]
    for flag in shown:
        assert f"`{flag}" in docs, flag
    for option in IGNORED_OPTIONS:
        assert f"`{option.flag}`" in docs, option.flag


def test_one_list_serves_llm_and_the_command_line():
    """LLM(...) ignores exactly the table's engine options; what it implements it takes as
    parameters, and the command line implements the same."""
    assert VLLM_ONLY_OPTIONS == {o.name for o in IGNORED_OPTIONS if o.engine}
    parameters = set(inspect.signature(LLM.__init__).parameters)
    assert not parameters & VLLM_ONLY_OPTIONS
    implemented = {"max_num_batched_tokens", "max_logprobs", "generation_config",
                   "override_generation_config", "lora_dtype", "disable_log_stats", "tokenizer",
                   "block_size", "kv_cache_memory_bytes", "device", "enforce_eager"}
    assert implemented <= parameters
    flags = vars(parse_args(["serve", "/m"]))
    assert implemented <= set(flags) and not implemented & VLLM_ONLY_OPTIONS


# ---- the real command, as a subprocess -------------------------------------------------------


def test_a_vllm_launch_line_serves_the_openai_client(llama_dir: Path, server_adapters,
                                                     tmp_path: Path):
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<reply>"
    argv = [*vllm_launch_line(str(llama_dir), str(server_adapters["a1"]), template,
                              str(llama_dir)), "--served-model-name", "base",
            "--response-role", "bot", "--root-path", "/llm", "--max-model-len", "128",
            "--disable-log-stats", "--device", "cpu", "--dtype", "float"]
    proc = subprocess.Popen([*loraserve_cmd(), *argv], cwd=tmp_path, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = wait_until_ready(proc)
        api = openai.OpenAI(base_url=f"{url}/llm/v1", api_key="x", max_retries=0)
        assert {m.id for m in api.models.list().data} == {"base", "a"}
        assert api.models.retrieve("a").model_dump()["parent"] == "base"
        out = api.completions.create(model="a", prompt="hello", max_tokens=3, temperature=0,
                                     logprobs=5)
        assert len(out.choices[0].logprobs.top_logprobs[0]) >= 5
        with pytest.raises(openai.BadRequestError) as info:
            api.completions.create(model="a", prompt="hello", max_tokens=3, logprobs=6)
        assert "'logprobs' must be between 0 and 5" in info.value.body["message"]
        chat = api.chat.completions.create(model="base", max_tokens=2,
                                           messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.role == "bot"
        assert chat.usage.prompt_tokens == len(  # --chat-template's rendering, tokenized
            Tokenizer.from_pretrained(llama_dir).encode("<user>hi<reply>", add_special_tokens=False))
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        stderr = proc.stderr.read()
    assert code == 0, stderr
    for flag in IGNORED_IN_LAUNCH_LINE:
        assert stderr.count(f"ignoring {flag} ") + stderr.count(f"ignoring {flag}:") == 1, flag
    assert '"POST /llm/v1/completions' not in stderr  # --uvicorn-log-level warning hides it

