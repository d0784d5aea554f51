"""The helpers the containers run, run for real here: the git server and the worker health check of the image
(deploy/runtime), the compose stack's search-attribute registration (against the Temporal dev server), its
PostgreSQL initialisation (against the real PostgreSQL) and its secret generator."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.testing import WorkflowEnvironment

from activities.git import LocalRepositoryProvider
from provisioner.binaries import bundled_binary
from provisioner.contracts import SEARCH_ATTRIBUTES
from provisioner.settings import Secret, Settings
from tests.deploy.artefacts import COMPOSE_DIR, COMPOSE_FILE, RUNTIME_DIR, load_yaml
from worker import build_worker

GIT_SERVER = RUNTIME_DIR / "git_server.py"
WORKER_HEALTHCHECK = RUNTIME_DIR / "worker_healthcheck.py"


def load_helper(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- git_server.py ------------------------------------------------------------------------------------------


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    env = {**os.environ, "PROVISIONER_DATA_DIR": str(tmp_path), "PROVISIONER_GIT_TOKEN": "push-secret"}
    process = subprocess.Popen(
        [sys.executable, str(GIT_SERVER), "--listen", "127.0.0.1:0"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready, "the git server did not start"
        line = process.stdout.readline()
        url = line.split(" at ")[-1].strip()
        assert url.startswith("http://127.0.0.1:"), line
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def git_check(port: int) -> int:
    return subprocess.run(
        [sys.executable, str(GIT_SERVER), "--check", "--listen", f"0.0.0.0:{port}"], capture_output=True, check=False
    ).returncode


def test_the_git_server_serves_the_local_providers_repositories_and_stops_on_sigterm(
    git_server: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, process = git_server
    provider = LocalRepositoryProvider(Settings(data_dir=tmp_path))
    provider.ensure_repository("shop", "a project")
    git_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}

    listed = subprocess.run(["git", "ls-remote", f"{url}/shop.git"], capture_output=True, env=git_env, check=False)
    assert listed.returncode == 0, listed.stderr
    missing = subprocess.run(["git", "ls-remote", f"{url}/nope.git"], capture_output=True, env=git_env, check=False)
    assert missing.returncode != 0

    port = int(url.rsplit(":", 1)[1])
    assert git_check(port) == 0
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert git_check(port) == 1


# ---- worker_healthcheck.py ----------------------------------------------------------------------------------


async def run_healthcheck(address: str, task_queue: str, *arguments: str) -> tuple[int, str]:
    env = {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": "default"}
    env["PROVISIONER_TASK_QUEUE"] = task_queue
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER_HEALTHCHECK), *arguments, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_the_worker_healthcheck_needs_this_hosts_worker_polling(
    local_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    client = local_env.client
    address = client.service_client.config.target_host
    task_queue = f"healthcheck-{uuid.uuid4().hex[:8]}"

    code, stderr = await run_healthcheck(address, task_queue)
    assert code == 1
    assert "workflow task queue" in stderr and "activity task queue" in stderr and "no poller" in stderr

    settings = Settings(
        task_queue=task_queue, data_dir=tmp_path, database_url=Secret(f"sqlite:///{tmp_path}/p.db"), activity_threads=2
    )
    with ThreadPoolExecutor(max_workers=2) as executor:
        async with build_worker(client, settings, executor):
            deadline = asyncio.get_running_loop().time() + 20
            while (result := await run_healthcheck(address, task_queue))[0] != 0:
                assert asyncio.get_running_loop().time() < deadline, result[1]
                await asyncio.sleep(0.5)

            # Another host's worker does not make this one healthy.
            code, stderr = await run_healthcheck(address, task_queue, "--hostname", "elsewhere.invalid")
            assert code == 1 and "elsewhere.invalid" in stderr

            # A poller last seen longer ago than the freshness bound counts as stale.
            helper = load_helper(WORKER_HEALTHCHECK)
            later = datetime.now(UTC) + helper.POLLER_FRESHNESS + timedelta(minutes=1)
            problems = await helper.missing_pollers(client, "default", task_queue, socket.gethostname(), later)
            assert problems and all("a stale poller" in problem for problem in problems)


async def test_the_worker_healthcheck_fails_when_temporal_is_unreachable() -> None:
    code, stderr = await run_healthcheck("127.0.0.1:1", "provisioner")
    assert code == 1 and stderr.startswith("unhealthy:")


# ---- register-search-attributes.sh --------------------------------------------------------------------------


def run_registration(address: str, namespace: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": namespace, "WAIT_ATTEMPTS": "30"}
    env["PATH"] = f"{Path(bundled_binary('temporal')).parent}{os.pathsep}{env.get('PATH', '')}"
    script = COMPOSE_DIR / "scripts" / "register-search-attributes.sh"
    return subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, check=False, timeout=120)


async def test_search_attribute_registration_creates_them_once(local_env: WorkflowEnvironment) -> None:
    client = local_env.client
    namespace = f"deploy-{uuid.uuid4().hex[:8]}"
    await client.workflow_service.register_namespace(
        RegisterNamespaceRequest(namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400))
    )
    address = client.service_client.config.target_host

    first = await asyncio.to_thread(run_registration, address, namespace)
    assert first.returncode == 0, first.stderr
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    for key in SEARCH_ATTRIBUTES:
        assert listed.custom_attributes[key.name] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD

    second = await asyncio.to_thread(run_registration, address, namespace)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already registered") == len(SEARCH_ATTRIBUTES)


# ---- postgres/init-databases.sh -----------------------------------------------------------------------------


def test_postgres_initialisation_creates_the_roles_and_the_database(admin_database_url: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    temporal_role, provisioner_role, database = f"temporal_{suffix}", f"provisioner_{suffix}", f"provisioner_{suffix}db"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "temporal_db_password").write_text('it\'s "quoted"\n')
    (secrets / "provisioner_db_password").write_text("p@ss:w/rd\n")
    admin = make_url(admin_database_url)
    env = {
        **os.environ,
        "SECRETS_DIR": str(secrets),
        "PGHOST": admin.host or "127.0.0.1",
        "PGPORT": str(admin.port or 5432),
        "POSTGRES_USER": admin.username or "postgres",
        "POSTGRES_DB": admin.database or "postgres",
        "TEMPORAL_DB_USER": temporal_role,
        "PROVISIONER_DB_USER": provisioner_role,
        "PROVISIONER_DB_NAME": database,
    }
    engine = create_engine(admin_database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    script = COMPOSE_DIR / "postgres" / "init-databases.sh"
    try:
        ran = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, check=False, timeout=60)
        assert ran.returncode == 0, ran.stderr
        with engine.connect() as connection:
            roles: dict[str, bool] = dict(
                connection.execute(
                    text(
                        "SELECT rolname, rolcreatedb AND rolcanlogin AND rolpassword IS NOT NULL FROM pg_authid "
                        "WHERE rolname IN (:t, :p)"
                    ),
                    {"t": temporal_role, "p": provisioner_role},
                ).all()
            )
            owner = connection.execute(
                text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :d"), {"d": database}
            ).scalar_one()
        assert roles == {temporal_role: True, provisioner_role: False}  # only Temporal may create databases
        assert owner == provisioner_role
    finally:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{provisioner_role}"')
            connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{temporal_role}"')
        engine.dispose()


# ---- generate-secrets.sh ------------------------------------------------------------------------------------


def test_generated_secrets_cover_the_compose_file_and_are_never_rotated_by_a_rerun(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    script = COMPOSE_DIR / "generate-secrets.sh"
    subprocess.run(["sh", str(script), str(target)], capture_output=True, check=True)

    declared = set(load_yaml(COMPOSE_FILE)["secrets"])
    assert {path.name for path in target.iterdir()} == declared
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    values = {path.name: path.read_text().strip() for path in target.iterdir()}
    for name, value in values.items():
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o644
        assert len(value) >= 32, name
    url = make_url(values["provisioner_database_url"])
    assert url.password == values["provisioner_db_password"]
    assert (url.username, url.host, url.database) == ("provisioner", "postgres", "provisioner")
    assert len(set(values.values())) == len(values), "every secret is its own random value"

    subprocess.run(["sh", str(script), str(target)], capture_output=True, check=True)
    assert {path.name: path.read_text().strip() for path in target.iterdir()} == values
