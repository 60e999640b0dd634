"""Logs as operators expect from vLLM: an access line per request (with the model), the periodic
stats line while busy (not with --disable-log-stats), one line per adapter load, and vLLM's
VLLM_LOGGING_LEVEL / VLLM_CONFIGURE_LOGGING / VLLM_LOGGING_CONFIG_PATH."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai_harness import BASE, clean_env, http, loraserve_cmd, start_in_thread

STATS_LOGGER = "loraserve.engine.logging_stat_logger"


@pytest.fixture
def start_server(llama_dir: Path, server_adapters, monkeypatch):
    """A server with adapter a1 and a 20 ms stats interval; returns (server, stop)."""
    from loraserve.config import EngineConfig
    from loraserve.entrypoints.openai.server_config import LoRAModulePath, ServerConfig
    from loraserve.plugins import reset_plugin_manager

    monkeypatch.setenv("VLLM_LOG_STATS_INTERVAL", "0.02")
    monkeypatch.setenv("VLLM_PLUGINS", "")
    reset_plugin_manager()
    stops = []

    def start(disable_log_stats: bool):  # noqa: ANN202
        engine = EngineConfig(model=str(llama_dir), served_model_name=BASE, enable_lora=True,
                              max_loras=2, disable_log_stats=disable_log_stats)
        server = ServerConfig(port=0, lora_modules=[LoRAModulePath("a1", str(server_adapters["a1"]))])
        running, stop = start_in_thread(engine, server)
        stops.append(stop)
        return running

    yield start
    for stop in stops:
        stop()
    reset_plugin_manager()


def complete(url: str, model: str, max_tokens: int = 40) -> None:
    status, _, text = http("POST", f"{url}/v1/completions", {
        "model": model, "prompt": "hello", "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True})
    assert status == 200, text


def wait_for_access_lines(caplog, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while True:
        lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def test_stats_access_and_adapter_lines(start_server, caplog, server_adapters):
    with caplog.at_level(logging.INFO):
        server = start_server(disable_log_stats=False)
        complete(server.url, "a1")
        http("GET", f"{server.url}/health")
        forged = http("POST", f"{server.url}/v1/completions", {"model": "x\nINFO forged", "prompt": "a"})
        access = wait_for_access_lines(caplog, 3)  # written once the response is sent
    loads = [r.getMessage() for r in caplog.records if "Loaded LoRA adapter" in r.getMessage()]
    assert len(loads) == 1, loads
    assert f"'a1' from '{server_adapters['a1']}': rank 8" in loads[0] and loads[0].endswith(" s")
    stats = [r for r in caplog.records if r.name == STATS_LOGGER]
    busy = [r.getMessage() for r in stats if "Running: 1 reqs" in r.getMessage()]
    assert busy, [r.getMessage() for r in stats]
    assert busy[0].startswith("Engine 000: Avg prompt throughput: ")
    assert "Avg generation throughput: " in busy[0] and "Waiting: 0 reqs" in busy[0]
    assert "KV cache usage: " in busy[0] and "LoRA adapters: 1 loaded, 1/2 slots in use" in busy[0]
    assert all(r.levelno == logging.INFO for r in stats if "Running: 1 reqs" in r.getMessage())
    completion = [line for line in access if '"POST /v1/completions HTTP/1.1" 200 ' in line]
    assert len(completion) == 1, access
    assert completion[0].startswith("127.0.0.1 - ") and completion[0].endswith("s model=a1")
    assert any('"GET /health HTTP/1.1" 200 ' in line and line.endswith("model=-") for line in access)
    assert forged[0] == 404  # no such model
    assert any(line.endswith("""model='x\\nINFO forged'""") for line in access), access
    assert not any("\n" in line for line in access)


def test_disable_log_stats_turns_the_stats_line_off(start_server, caplog):
    with caplog.at_level(logging.DEBUG, logger=STATS_LOGGER):
        server = start_server(disable_log_stats=True)
        complete(server.url, BASE)
    assert not [r for r in caplog.records if r.name == STATS_LOGGER]


# ---- vLLM's logging variables, on the real command -----------------------------------------


def run_cli(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """``loraserve serve`` on a missing model with an ignored vLLM flag: one WARNING line from
    the command line, then it exits 1 (the model does not load)."""
    return subprocess.run([*loraserve_cmd(), "serve", str(tmp_path / "none"), "--cuda-graph-sizes", "8"],
                          env={**clean_env(), **env}, capture_output=True, text=True, timeout=60)


def test_default_logging_is_vllms_format_at_info(tmp_path):
    proc = run_cli(tmp_path)
    assert proc.returncode == 1
    assert "WARNING " in proc.stderr and "[cli_args.py:" in proc.stderr
    assert "ignoring --cuda-graph-sizes" in proc.stderr


def test_vllm_logging_level_filters(tmp_path):
    proc = run_cli(tmp_path, VLLM_LOGGING_LEVEL="ERROR")
    assert proc.returncode == 1 and "ignoring --cuda-graph-sizes" not in proc.stderr
    assert "error: cannot load model" in proc.stderr
    bad = run_cli(tmp_path, VLLM_LOGGING_LEVEL="LOUD")
    assert bad.returncode == 2 and "VLLM_LOGGING_LEVEL must be a logging level" in bad.stderr


def test_vllm_configure_logging_zero_leaves_logging_alone(tmp_path):
    proc = run_cli(tmp_path, VLLM_CONFIGURE_LOGGING="0")
    assert "[cli_args.py:" not in proc.stderr  # Python's last-resort handler: the bare message
    assert "ignoring --cuda-graph-sizes" in proc.stderr


def test_vllm_logging_config_path_is_a_dict_config(tmp_path):
    config = tmp_path / "logging.json"
    config.write_text(json.dumps({
        "version": 1,
        "formatters": {"plain": {"format": "CUSTOM|%(name)s|%(message)s"}},
        "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "plain",
                             "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["err"], "level": "INFO"},
    }))
    proc = run_cli(tmp_path, VLLM_LOGGING_CONFIG_PATH=str(config))
    assert "CUSTOM|loraserve.entrypoints.cli|ignoring --cuda-graph-sizes" in proc.stderr
    both = run_cli(tmp_path, VLLM_LOGGING_CONFIG_PATH=str(config), VLLM_CONFIGURE_LOGGING="0")
    assert both.returncode == 2 and "VLLM_CONFIGURE_LOGGING evaluated to false" in both.stderr
    missing = run_cli(tmp_path, VLLM_LOGGING_CONFIG_PATH=str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "File does not exist" in missing.stderr


def test_llm_configures_only_the_loraserve_logger_when_the_application_did_not():
    script = ("import logging; from loraserve.logger import configure_logging; "
              "configure_logging('loraserve'); logging.getLogger('loraserve.x').info('ours'); "
              "logging.getLogger('other').warning('theirs')")
    run = lambda **env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", script], env={**clean_env(), **env}, capture_output=True,
        text=True, timeout=60, cwd="/").stderr
    assert "INFO " in run() and "ours" in run()
    assert "[<string>:1] theirs" not in run()  # another library's logger is not ours to format
    assert "ours" not in run(VLLM_LOGGING_LEVEL="WARNING")
    assert "ours" not in run(VLLM_CONFIGURE_LOGGING="0")  # unconfigured: INFO is not shown


def test_llm_logs_stats_only_when_asked(llama_dir, monkeypatch, caplog):
    from loraserve import LLM, SamplingParams
    from loraserve.engine.logging_stat_logger import LoggingStatLogger

    assert LLM(str(llama_dir)).engine.stat_loggers == []  # vLLM's LLM: disable_log_stats=True
    monkeypatch.setenv("VLLM_LOG_STATS_INTERVAL", "0.001")
    llm = LLM(str(llama_dir), disable_log_stats=False)
    assert [type(s) for s in llm.engine.stat_loggers] == [LoggingStatLogger]
    with caplog.at_level(logging.INFO, logger=STATS_LOGGER):
        llm.generate("hello", SamplingParams(max_tokens=20, ignore_eos=True), use_tqdm=False)
    assert any("Running: 1 reqs" in r.getMessage() for r in caplog.records)


def test_an_idle_interval_after_an_idle_one_logs_at_debug(caplog):
    from loraserve.engine.logging_stat_logger import LoggingStatLogger
    from loraserve.engine.stats import BatchState, StepStats

    now = [0.0]
    stats = LoggingStatLogger(10.0, adapters=lambda: (3, 1, 4), clock=lambda: now[0])
    idle = BatchState(0, 0, 0.0, (), ())
    with caplog.at_level(logging.DEBUG, logger=STATS_LOGGER):
        stats.record(BatchState(1, 2, 0.5, ("a",), ()), StepStats(prompt_tokens=30, generation_tokens=1))
        now[0] = 5.0
        stats.record(BatchState(1, 2, 0.5, ("a",), ()), StepStats(generation_tokens=49))
        assert not caplog.records and stats.seconds_until_due() == 5.0  # not due yet
        now[0] = 10.0
        stats.record(idle, None)  # due: the interval's tokens
        now[0] = 20.0
        stats.record(idle, None)  # an idle interval after a busy one: still INFO
        now[0] = 30.0
        stats.record(idle, None)  # idle after idle: DEBUG
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines[0] == (logging.INFO, "Engine 000: Avg prompt throughput: 3.0 tokens/s, Avg "
                        "generation throughput: 5.0 tokens/s, Running: 0 reqs, Waiting: 0 reqs, "
                        "KV cache usage: 0.0%, LoRA adapters: 3 loaded, 1/4 slots in use")
    assert [level for level, _ in lines] == [logging.INFO, logging.INFO, logging.DEBUG]
    assert not stats.pending
