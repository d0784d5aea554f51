"""The Dockerfile and .dockerignore, read instruction by instruction (no Docker engine here).

What a build needs is checked against the project's own metadata: the files pyproject.toml makes setuptools package
must be in the build stage and in the build context, and the install is the README/Makefile's `pip install` of the
project's own files (without the dev extra).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import PurePosixPath

import pytest

from tests.deploy.artefacts import (
    DOCKERFILE,
    DOCKERIGNORE,
    IMAGE_RUNTIME_DIR,
    REPO_ROOT,
    RUNTIME_DIR,
    is_secret_name,
    secret_literals_in_text,
)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comment lines (also inside a continuation) dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def stages(instructions: list[Instruction]) -> dict[str, list[Instruction]]:
    found: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for instruction in instructions:
        if instruction.keyword == "FROM":
            name = instruction.arguments.split()[-1]
            current = found.setdefault(name, [])
        elif current is not None:
            current.append(instruction)
    return found


def copy_sources(instruction: Instruction) -> list[str]:
    words = [word for word in shlex.split(instruction.arguments) if not word.startswith("--")]
    return words[:-1]


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def build_stage(instructions: list[Instruction]) -> list[Instruction]:
    return stages(instructions)["build"]


@pytest.fixture(scope="module")
def runtime_stage(instructions: list[Instruction]) -> list[Instruction]:
    return stages(instructions)["runtime"]


def test_the_parser_joins_continuations_and_drops_comments() -> None:
    parsed = parse_dockerfile("FROM a AS b\n# note\nRUN one \\\n    # inner\n    && two\n")
    assert parsed == [Instruction("FROM", "a AS b"), Instruction("RUN", "one && two")]


def test_multi_stage_on_python_3_11_slim(instructions: list[Instruction]) -> None:
    base = next(i.arguments for i in instructions if i.keyword == "ARG" and i.arguments.startswith("PYTHON_IMAGE="))
    image = base.removeprefix("PYTHON_IMAGE=")
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", image), image
    froms = [i.arguments for i in instructions if i.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]


def test_the_build_installs_the_project_from_its_own_files_as_the_makefile_does(
    build_stage: list[Instruction],
) -> None:
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert "-m pip install" in makefile and "'.[sandbox,dev]'" in makefile
    installs = [i.arguments for i in build_stage if i.keyword == "RUN" and "pip install" in i.arguments]
    assert len(installs) == 1
    command = installs[0].split("&&")[0].split()
    # The same `python -m pip install <this project>`, without the editable flag and the extras.
    assert command == ["/opt/venv/bin/python", "-m", "pip", "install", "."]


def test_the_build_stage_copies_everything_setuptools_packages_but_the_sandbox(build_stage: list[Instruction]) -> None:
    copied = {source.rstrip("/") for i in build_stage if i.keyword == "COPY" for source in copy_sources(i)}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = project["tool"]["setuptools"]
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {f"{module}.py" for module in setuptools["py-modules"]}
    for pattern in setuptools["packages"]["find"]["include"]:
        needed |= {path.name for path in REPO_ROOT.iterdir() if path.is_dir() and fnmatch.fnmatch(path.name, pattern)}
    needed.discard("provisioner.egg-info")
    # The sandbox API server and the Flux simulator are test and demo infrastructure: never in the image.
    assert "kubesim" in needed and "kubesim" not in copied
    needed.discard("kubesim")
    assert needed <= copied, f"the build stage misses {sorted(needed - copied)}"
    for package, globs in setuptools["package-data"].items():
        for glob in globs:
            assert list((REPO_ROOT / package).glob(glob)), f"package data {package}/{glob} matches nothing"


def test_runtime_has_git_templates_and_the_runtime_helpers(runtime_stage: list[Instruction]) -> None:
    runs = " ".join(i.arguments for i in runtime_stage if i.keyword == "RUN")
    assert re.search(r"apt-get install [^&]*\bgit\b", runs)
    copies = [copy_sources(i) for i in runtime_stage if i.keyword == "COPY"]
    assert ["templates"] in copies
    assert ["deploy/runtime"] in copies
    env = " ".join(i.arguments for i in runtime_stage if i.keyword == "ENV")
    # Installed (not editable), Settings' defaults would point into site-packages: the image sets both.
    assert "PROVISIONER_TEMPLATES_DIR=/opt/provisioner/templates" in env
    assert "PROVISIONER_DATA_DIR=/data" in env


def test_runs_as_a_fixed_non_root_user(runtime_stage: list[Instruction]) -> None:
    users = [i.arguments for i in runtime_stage if i.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    created = " ".join(i.arguments for i in runtime_stage if i.keyword == "RUN")
    assert f"--uid {uid}" in created and f"--gid {gid}" in created
    keywords = [i.keyword for i in runtime_stage]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_entrypoint_command_and_healthcheck(runtime_stage: list[Instruction]) -> None:
    by_keyword = {i.keyword: i.arguments for i in runtime_stage}
    assert by_keyword["ENTRYPOINT"] == '["provisioner"]'
    assert by_keyword["CMD"] == '["worker"]'
    healthcheck = by_keyword["HEALTHCHECK"]
    script = re.search(rf"{IMAGE_RUNTIME_DIR}/(\w+\.py)", healthcheck)
    assert script is not None and (RUNTIME_DIR / script.group(1)).is_file()


def test_no_secret_in_the_dockerfile(instructions: list[Instruction]) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert secret_literals_in_text(text) == []
    for instruction in instructions:
        if instruction.keyword in ("ENV", "ARG"):
            for assignment in shlex.split(instruction.arguments):
                name = assignment.partition("=")[0]
                assert not is_secret_name(name), f"{instruction.keyword} {name}: secrets are run-time files"


# ---- .dockerignore ------------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `**` any number of path segments, `*` and `?` within one segment."""
    parts = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            parts.append("[^/]")
            index += 1
        else:
            parts.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(parts) + r"\Z")


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves `path` out of the context: the last pattern matching it or a parent decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = _pattern_regex(raw.lstrip("!").strip("/"))
        if any(pattern.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_the_dockerignore_matcher_follows_docker_semantics() -> None:
    patterns = ["*", "!src", "**/__pycache__"]
    assert dockerignore_excludes(patterns, "secret.txt")
    assert not dockerignore_excludes(patterns, "src/app.py")
    assert dockerignore_excludes(patterns, "src/__pycache__/app.pyc")


def test_the_context_holds_what_the_dockerfile_copies(
    instructions: list[Instruction], ignore_patterns: list[str]
) -> None:
    for instruction in instructions:
        if instruction.keyword != "COPY" or "--from=" in instruction.arguments:
            continue
        for source in copy_sources(instruction):
            root = REPO_ROOT / source
            files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
            assert files, f"COPY {source}: nothing there"
            kept = [p for p in files if not dockerignore_excludes(ignore_patterns, str(p.relative_to(REPO_ROOT)))]
            assert kept, f"COPY {source}: .dockerignore leaves it out of the context"


@pytest.mark.parametrize(
    "path",
    [
        "deploy/compose/secrets/git_token",
        "deploy/compose/.env",
        ".venv/bin/python",
        ".data/provisioner.db",
        ".git/config",
        "tests/conftest.py",
        "provisioner/__pycache__/settings.cpython-311.pyc",
        "docker-compose.yml",
    ],
)
def test_the_context_excludes_secrets_local_state_and_caches(ignore_patterns: list[str], path: str) -> None:
    assert dockerignore_excludes(ignore_patterns, path)
