"""The compiled-template cache: a template's files compile once, every request still renders with its own values,
and the cache stays within its bound."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import CodeType
from typing import Any

import pytest

from provisioner.templating import _BoundedSandbox, _CompiledSources, render_project
from tests.templating.test_templating import custom_spec, write_template


def test_a_template_compiles_once_and_each_request_renders_its_own_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = uuid.uuid4().hex  # sources no earlier test compiled
    write_template(
        tmp_path,
        "cached",
        {
            "owner.txt": f"{marker} {{{{ params.owner }}}}\n",
            f"{{{{ project.slug }}}}-{marker}.md": "# {{ project.slug }}\n",
        },
        parameters={"owner": {"type": "string", "required": True}},
    )
    compiled: list[str] = []
    compile_for_real = _BoundedSandbox.compile

    def counting_compile(self: _BoundedSandbox, source: str, *args: Any, **kwargs: Any) -> CodeType:
        compiled.append(source)
        code: CodeType = compile_for_real(self, source, *args, **kwargs)
        return code

    monkeypatch.setattr(_BoundedSandbox, "compile", counting_compile)

    first = render_project(custom_spec("cached", {"owner": "payments"}), tmp_path)
    compiled_by_first = len(compiled)
    second = render_project(custom_spec("cached", {"owner": "search"}), tmp_path)

    assert any(marker in source for source in compiled)
    assert len(compiled) == compiled_by_first  # the second request compiled nothing
    assert first.files["owner.txt"] == f"{marker} payments\n".encode()
    assert second.files["owner.txt"] == f"{marker} search\n".encode()
    assert f"demo-app-{marker}.md" in second.files
    assert first.digest != second.digest


def test_the_cache_forgets_the_least_recently_used_sources_beyond_its_bound() -> None:
    cache = _CompiledSources(max_characters=12)
    environment = _BoundedSandbox(1000)
    for source in ("aaaa", "bbbb", "cccc"):
        assert cache.template(environment, source).render() == source
    cache.template(environment, "aaaa")  # used again: now the most recent
    cache.template(environment, "dddd")  # 16 characters: one source must go, the least recently used
    assert cache.cached_sources() == ["cccc", "aaaa", "dddd"]
    cache.template(environment, "x" * 13)  # larger than the whole bound: rendered, never kept
    assert cache.cached_sources() == ["cccc", "aaaa", "dddd"]
