"""The one adapter-name rule (``loraserve.resolution.names``): the same names are refused by
a remote template and by the filesystem resolver."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from loraserve.resolution.names import fill_location_template, is_plain_name, is_safe_name

UNSAFE = ["", "..", "../x", "a/../b", "/abs", "a//b", ".hidden", "a?b", "a%2Fb", "a b", "x" * 300,
          "a\\b", "a\0b", "café"]


@pytest.mark.parametrize("name", ["sql", "team/sql-v2", "a.b_c-1"])
def test_safe_names(name):
    assert is_safe_name(name)


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_names(name):
    assert not is_safe_name(name) and not is_plain_name(name)
    assert fill_location_template("s3://b/{lora_name}", base_model_name="m", lora_name=name) is None


def test_a_plain_name_is_one_segment():
    assert is_plain_name("sql-v2") and not is_plain_name("team/sql")


@pytest.mark.parametrize("name", UNSAFE + ["team/sql"])
async def test_the_filesystem_resolver_refuses_what_the_rule_refuses(tmp_path, name):
    """A folder by that name exists, yet the resolver never looks it up."""
    resolver_module = pytest.importorskip("loraserve_filesystem_resolver")
    if name and len(name) < 255 and "\0" not in name and "/" not in name and name not in (".", ".."):
        (tmp_path / name).mkdir(exist_ok=True)
    resolver = resolver_module.FilesystemResolver(tmp_path)
    assert await resolver.resolve_lora("m", name) is None


def test_template_fills_and_quotes():
    url = fill_location_template(
        "http://h/{base_model_name}/{lora_name}.tar.gz",
        base_model_name="/models/Llama 3",
        lora_name="team/sql",
        quote=lambda s: quote(s, safe=""),
    )
    assert url == "http://h/models/Llama%203/team/sql.tar.gz"
