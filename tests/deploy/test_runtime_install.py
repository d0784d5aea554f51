"""The runtime dependency set, installed alone: what a deployment runs must import without any extra.

The project is installed without extras into a fresh virtual environment from exactly the files the image's build
stage copies (read from the Dockerfile), so a module that needs a package only the `dev` or `sandbox` extra brings
fails here first.
"""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

import activities
from tests.deploy.artefacts import DOCKERFILE, REPO_ROOT
from tests.deploy.test_dockerfile import copy_sources, parse_dockerfile, stages

ENTRY_MODULES = ["worker", "provisioner.api.app", "provisioner.cli", "provisioner.gitserver"]
ACTIVITY_MODULES = [f"activities.{module.name}" for module in pkgutil.iter_modules(activities.__path__)]


@pytest.fixture(scope="module")
def runtime_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runtime")
    source = root / "src"
    source.mkdir()
    build_stage = stages(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")))["build"]
    for name in (name for i in build_stage if i.keyword == "COPY" for name in copy_sources(i)):
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO_ROOT / name, source / name)
    environment = root / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        check=True,
        timeout=600,
    )
    return python


def run_python(python: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-c", code], check=False, capture_output=True, text=True, timeout=120, cwd="/")


def test_the_worker_the_api_the_cli_and_every_activity_import_without_extras(runtime_python: Path) -> None:
    assert "activities.git_providers" in ACTIVITY_MODULES  # the GitHub provider, which needs httpx
    modules = [*ENTRY_MODULES, *ACTIVITY_MODULES]
    imported = run_python(
        runtime_python,
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__ and 'site-packages' in module.__file__, module.__file__\n"
        "from provisioner.api.app import create_app\n"
        "from worker import run_worker\n"
        "print(sys.prefix)\n",
    )
    assert imported.returncode == 0, imported.stderr
    # They ran in the fresh environment, not in the test's own.
    assert Path(imported.stdout.strip()) == runtime_python.parent.parent


def test_the_runtime_set_holds_neither_the_sandbox_nor_the_dev_tools(runtime_python: Path) -> None:
    for module in ["kubesim", "jsonpatch", "pytest", "mutmut"]:
        found = run_python(runtime_python, f"import importlib.util; print(importlib.util.find_spec({module!r}))")
        assert found.returncode == 0 and found.stdout.strip() == "None", (module, found.stdout, found.stderr)
    binaries = runtime_python.parent
    assert not (binaries / "temporal").exists() and not (binaries / "kubectl").exists()


def test_the_embedded_stack_says_what_is_missing_where_the_sandbox_is_not_installed(runtime_python: Path) -> None:
    command = runtime_python.parent / "provisioner"
    refused = subprocess.run([str(command), "up"], check=False, capture_output=True, text=True, timeout=120, cwd="/")
    assert refused.returncode == 1
    assert "the embedded stack needs the sandbox (missing module 'kubesim')" in refused.stderr
    assert "Traceback" not in refused.stderr

