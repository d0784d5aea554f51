"""Alembic environment of the project database.

`provisioner.db.engine.migrate` hands over a connection (already holding the migration lock) through
`config.attributes["connection"]`. Run from the alembic command line, the URL comes from the environment
(`PROVISIONER_DATABASE_URL`, else the demo SQLite file), exactly as the worker reads it.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from provisioner.db.engine import engine_for, locked_migration_connection
from provisioner.db.models import Base
from provisioner.settings import Settings

config = context.config
target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode recreates tables for later migrations.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """`alembic upgrade head --sql`: print the DDL instead of running it."""
    context.configure(
        url=Settings.from_env().effective_database_url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    handed_over = config.attributes.get("connection")
    if isinstance(handed_over, Connection):
        run_migrations(handed_over)
        return
    # Logging setup belongs to the alembic CLI only; inside the application it would clobber the app's own.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    engine = engine_for(Settings.from_env().effective_database_url)
    with locked_migration_connection(engine) as connection:
        run_migrations(connection)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
