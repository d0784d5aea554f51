"""Engines, sessions and schema migrations for the project database.

Supported: PostgreSQL through psycopg 3 (`postgresql+psycopg://...`, the real deployments) and SQLite
(`sqlite:///path`, the demo default). Database URLs may hold a password: they are never logged or put in
exception messages here; `database_host` gives the loggable part.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"

POSTGRESQL_DRIVER = "postgresql+psycopg"
POSTGRESQL_CONNECT_TIMEOUT_SECONDS = 10
# How long a SQLite connection waits for another writer before giving up with "database is locked".
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
# Any fixed 64-bit number: every migrator of a database takes this PostgreSQL advisory lock, so concurrent
# `upgrade head` runs queue up instead of racing to create the same tables.
MIGRATION_ADVISORY_LOCK_ID = 0x70726F765F6D6967  # "prov_mig"
# Connection execution option that makes the next SQLite transaction start with BEGIN IMMEDIATE.
_SQLITE_BEGIN_IMMEDIATE = "provisioner_sqlite_begin_immediate"

_engines: dict[str, Engine] = {}
_session_factories: dict[str, sessionmaker[Session]] = {}
_registry_lock = threading.Lock()
# Alembic runs its env.py through a process-global `alembic.context`, so one migration at a time per process.
_migration_lock = threading.Lock()


def engine_for(database_url: str) -> Engine:
    """The process-wide engine for `database_url` (created on first use; safe to share between threads)."""
    engine = _engines.get(database_url)
    if engine is not None:
        return engine
    with _registry_lock:
        engine = _engines.get(database_url)
        if engine is None:
            engine = _create_engine(_normalized_url(database_url))
            _engines[database_url] = engine
        return engine


def session_factory(database_url: str) -> sessionmaker[Session]:
    """The process-wide session factory bound to `engine_for(database_url)`."""
    factory = _session_factories.get(database_url)
    if factory is not None:
        return factory
    engine = engine_for(database_url)
    with _registry_lock:
        factory = _session_factories.get(database_url)
        if factory is None:
            # Objects stay readable after commit: callers convert them to plain data once the session is gone.
            factory = sessionmaker(bind=engine, expire_on_commit=False)
            _session_factories[database_url] = factory
        return factory


def dispose_engine(database_url: str) -> None:
    """Close the pooled connections of one database and forget its engine (e.g. before dropping it)."""
    with _registry_lock:
        engine = _engines.pop(database_url, None)
        _session_factories.pop(database_url, None)
    if engine is not None:
        engine.dispose()


def dispose_engines() -> None:
    """Close every pooled connection and forget the cached engines (process shutdown, tests)."""
    with _registry_lock:
        engines = list(_engines.values())
        _engines.clear()
        _session_factories.clear()
    for engine in engines:
        engine.dispose()


def database_host(database_url: str) -> str:
    """The part of a database URL that is safe to log: the host (or `sqlite`)."""
    try:
        url = make_url(database_url)
    except Exception:
        return "<invalid database url>"
    if url.get_backend_name() == "sqlite":
        return "sqlite"
    return url.host or "localhost"


def migrate(database_url: str) -> None:
    """Bring the schema to the newest revision (`alembic upgrade head`); safe to run repeatedly and concurrently."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    with _migration_lock, locked_migration_connection(engine_for(database_url)) as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextmanager
def locked_migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction that holds the database-wide migration lock until it commits.

    PostgreSQL: a transaction-scoped advisory lock (and DDL is transactional, so a failed migration leaves
    nothing behind). SQLite: BEGIN IMMEDIATE takes the database's write lock up front.
    """
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            connection.execution_options(**{_SQLITE_BEGIN_IMMEDIATE: True})
        with connection.begin():
            if engine.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_ADVISORY_LOCK_ID)))
            yield connection


def _normalized_url(database_url: str) -> URL:
    try:
        url = make_url(database_url)
    except Exception:
        # The parser's message would quote the URL, password included.
        raise ValueError("the database URL is not a valid SQLAlchemy URL") from None
    if url.drivername in ("postgresql", "postgres"):
        # psycopg 3 is the driver we ship; SQLAlchemy's default for plain postgresql:// is psycopg2.
        url = url.set(drivername=POSTGRESQL_DRIVER)
    return url


def _create_engine(url: URL) -> Engine:
    backend = url.get_backend_name()
    if backend == "postgresql":
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in url.query:
            # Fail fast (and retry later) when the database is unreachable, instead of hanging an activity.
            connect_args["connect_timeout"] = POSTGRESQL_CONNECT_TIMEOUT_SECONDS
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if backend == "sqlite":
        _create_sqlite_directory(url)
        engine = create_engine(
            url,
            pool_pre_ping=True,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        )
        _make_sqlite_transactions_explicit(engine, in_memory=_is_sqlite_in_memory(url))
        return engine
    raise ValueError(
        f"unsupported database backend {backend!r}: use postgresql+psycopg://... or sqlite:///path"
    )


def _is_sqlite_in_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or (url.query.get("mode") == "memory")


def _create_sqlite_directory(url: URL) -> None:
    if not _is_sqlite_in_memory(url) and url.database and not url.database.startswith("file:"):
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _make_sqlite_transactions_explicit(engine: Engine, *, in_memory: bool) -> None:
    """Let SQLAlchemy, not the sqlite3 module, emit BEGIN, so that DDL is transactional and BEGIN IMMEDIATE works.

    The sqlite3 module otherwise starts transactions lazily (and never before DDL); see SQLAlchemy's
    "Serializable isolation / Savepoints / Transactional DDL" notes for the pysqlite driver.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        if not in_memory:
            # Readers (API, CLI) then never block the worker's writes, nor the other way round.
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_SQLITE_BEGIN_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
