"""``loraserve`` command line: flag parsing, ``--lora-modules`` forms, and real subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import openai
import pytest
from openai_harness import clean_env, loraserve_cmd, wait_until_ready

from loraserve.entrypoints.cli import build_parser, configs_from_args, main, parse_lora_module
from loraserve.entrypoints.openai.server_config import LoRAModulePath
from loraserve.lora.merge import MERGE_AFTER_STEPS


def parse(*argv: str):  # noqa: ANN201
    return build_parser().parse_args(["serve", "/models/m", *argv])


def test_defaults_match_the_contract(monkeypatch):
    monkeypatch.delenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    args = build_parser().parse_args(["serve", "/models/m"])
    engine, server = configs_from_args(args)
    assert (server.host, server.port, server.api_key) == ("127.0.0.1", 8000, None)
    assert engine.served_model_name == "/models/m" and not engine.enable_lora
    assert (engine.max_loras, engine.max_lora_rank, engine.max_cpu_loras) == (1, 16, 1)
    assert not server.allow_runtime_lora_updating
    assert engine.lora_merge


def test_lora_merge_can_be_turned_off(capsys):
    engine, _ = configs_from_args(parse("--enable-lora", "--no-lora-merge"))
    assert not engine.lora_merge
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"owned every batch for {MERGE_AFTER_STEPS} steps" in help_text  # the help stays true


def test_every_contract_flag(monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    args = parse("--host", "0.0.0.0", "--port", "9001", "--served-model-name", "m",
                 "--enable-lora", "--lora-modules", "a=/a", "--max-loras", "4",
                 "--max-lora-rank", "64", "--max-cpu-loras", "8", "--api-key", "k",
                 "--max-model-len", "128", "--max-num-seqs", "3", "--dtype", "float32")
    engine, server = configs_from_args(args)
    assert (server.host, server.port, server.api_key) == ("0.0.0.0", 9001, "k")
    assert (engine.served_model_name, engine.max_loras, engine.max_lora_rank) == ("m", 4, 64)
    assert (engine.max_cpu_loras, engine.max_model_len, engine.max_num_seqs) == (8, 128, 3)
    assert engine.allow_runtime_lora_updating and server.allow_runtime_lora_updating


@pytest.mark.parametrize("value", ["1", "true", "True"])
def test_runtime_updating_env(monkeypatch, value):
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", value)
    assert configs_from_args(parse())[1].allow_runtime_lora_updating


def test_lora_modules_both_forms_mixed_and_repeated():
    spec = json.dumps({"name": "b", "path": "/b", "base_model_name": "m"})
    args = parse("--enable-lora", "--lora-modules", "a=/a", spec, "--lora-modules", "c=/x=y")
    assert args.lora_modules == [
        LoRAModulePath("a", "/a"), LoRAModulePath("b", "/b", "m"), LoRAModulePath("c", "/x=y"),
    ]


@pytest.mark.parametrize(
    "item",
    ["just-a-path", "=/a", "a=", "{not json", '{"name": "a"}', '{"path": "/a"}',
     '{"name": "a", "path": "/a", "rank": 8}', '{"name": 1, "path": "/a"}'],
)
def test_malformed_lora_module_is_a_clear_error(item, capsys):
    with pytest.raises(SystemExit) as info:
        parse("--enable-lora", "--lora-modules", item)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--lora-modules" in err and item in err


def test_parse_lora_module_direct():
    assert parse_lora_module(" sql = /p ") == LoRAModulePath("sql", "/p")


def test_lora_modules_need_enable_lora(capsys):
    with pytest.raises(SystemExit) as info:
        configs_from_args(parse("--lora-modules", "a=/a"))
    assert info.value.code == 2  # a flag error, as docs/server.md says
    assert "--lora-modules needs --enable-lora" in capsys.readouterr().err


def test_bad_numbers_are_rejected(capsys):
    with pytest.raises(SystemExit):
        parse("--max-loras", "0")
    assert "positive integer" in capsys.readouterr().err
    assert main(["serve", "/m", "--max-loras", "4", "--max-cpu-loras", "2"]) == 2


def test_help_explains_flags(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--served-model-name", "--enable-lora", "--lora-modules",
                 "--max-loras", "--max-lora-rank", "--max-cpu-loras", "--api-key",
                 "--max-prompts-per-request", "--max-sequences-per-request"):
        assert flag in out


# ---- the real command, as a subprocess -------------------------------------------------------


def test_cli_subprocess_serves_and_stops(llama_dir: Path, server_adapters, tmp_path: Path):
    spec = json.dumps({"name": "a2", "path": str(server_adapters["a2"]), "base_model_name": "base"})
    proc = subprocess.Popen(
        [*loraserve_cmd(), "serve", str(llama_dir), "--served-model-name", "base", "--port", "0",
         "--enable-lora", "--max-loras", "2", "--api-key", "k",
         "--lora-modules", f"a1={server_adapters['a1']}", spec],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = wait_until_ready(proc)
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        models = {m.id: m.model_dump() for m in api.models.list().data}
        assert models["a1"]["parent"] == "base" and models["a2"]["parent"] == "base"
        out = api.completions.create(model="a2", prompt="hello", max_tokens=3, temperature=0)
        assert out.usage.completion_tokens >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0


def test_cli_bad_adapter_stops_startup_naming_it(llama_dir: Path, tmp_path: Path):
    proc = subprocess.run(
        [*loraserve_cmd(), "serve", str(llama_dir), "--port", "0", "--enable-lora",
         "--lora-modules", f"broken={tmp_path / 'nowhere'}"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "broken" in proc.stderr and "nowhere" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_plugins_lists_installed(tmp_path: Path):
    proc = subprocess.run([*loraserve_cmd(), "plugins"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_several_served_model_names_as_vllm():
    engine, server = configs_from_args(parse("--served-model-name", "main", "alias1", "alias2"))
    assert engine.served_model_name == "main" and server.served_model_aliases == ["alias1", "alias2"]
    engine, server = configs_from_args(parse("--served-model-name", "only"))
    assert engine.served_model_name == "only" and server.served_model_aliases == []


def test_request_limit_flags():
    from loraserve.entrypoints.openai.server_config import RequestLimits

    _, server = configs_from_args(parse())
    assert server.limits == RequestLimits(1024, 2048)
    _, server = configs_from_args(parse("--max-prompts-per-request", "8",
                                        "--max-sequences-per-request", "16"))
    assert server.limits == RequestLimits(max_prompts_per_request=8, max_sequences_per_request=16)
    with pytest.raises(SystemExit):
        parse("--max-prompts-per-request", "0")
