"""The project database: the SQLAlchemy model, engines/sessions and the Alembic migrations."""

from provisioner.db.engine import (
    database_host,
    dispose_engine,
    dispose_engines,
    engine_for,
    migrate,
    session_factory,
)
from provisioner.db.models import Base, Project

__all__ = [
    "Base",
    "Project",
    "database_host",
    "dispose_engine",
    "dispose_engines",
    "engine_for",
    "migrate",
    "session_factory",
]
