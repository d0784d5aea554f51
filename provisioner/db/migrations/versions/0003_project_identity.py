"""The project's identity and what Flux applied: projects.parameters, applied_revision, operation.

`parameters` holds the project's parameters (the template's defaults applied) as canonical JSON, so that a create
can be compared with the live project and an update can merge into them. Rows written before this revision have
NULL there: their parameters are unknown, and a create of the same name, template and environment takes them over.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("projects", sa.Column("parameters", sa.Text(), nullable=True))
    op.add_column("projects", sa.Column("applied_revision", sa.String(length=300), nullable=True))
    op.add_column("projects", sa.Column("operation", sa.String(length=16), nullable=True))


def downgrade() -> None:
    op.drop_column("projects", "operation")
    op.drop_column("projects", "applied_revision")
    op.drop_column("projects", "parameters")
