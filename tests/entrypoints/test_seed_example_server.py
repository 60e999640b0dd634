"""The seed's server example on the real demo model: `loraserve serve MODEL --enable-lora
--lora-modules sql-lora=PATH`, then the seed's completion request, answers the seed's SQL."""

from __future__ import annotations

import json

from openai_harness import post_json, start_in_thread

SEED_PROMPT = (
    "[user] Write a SQL query to answer the question based on the table schema.\n\n"
    " context: CREATE TABLE table_name_74 (icao VARCHAR, airport VARCHAR)\n\n"
    " question: Name the ICAO for lilongwe international airport [/user] [assistant]"
)


def test_the_seed_curl_gets_the_seed_sql(smollm2_demo):
    from loraserve.entrypoints.cli import build_parser, configs_from_args

    args = build_parser().parse_args([
        "serve", str(smollm2_demo.model), "--enable-lora",
        "--lora-modules", f"sql-lora={smollm2_demo.adapter('sql')}", "--port", "0",
    ])
    running, stop = start_in_thread(*configs_from_args(args))
    try:
        status, text = post_json(f"{running.url}/v1/completions", {
            "model": "sql-lora", "prompt": SEED_PROMPT, "max_tokens": 256, "temperature": 0,
            "stop": ["[/assistant]"],
        }, timeout=120)
    finally:
        stop()
    assert status == 200, text
    choice = json.loads(text)["choices"][0]
    assert choice["text"] == 'SELECT icao FROM table_name_74 WHERE airport = "lilongwe international airport"'
    assert choice["finish_reason"] == "stop"
