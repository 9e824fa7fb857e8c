"""Feedback: the model's confidence in its own answer and how unfamiliar the photo looked to it, so the review queue
can put what teaches most first.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("feedback") as t:  # batch: SQLite rebuilds the table
        t.add_column(sa.Column("confidence", sa.Float, nullable=True))
        t.add_column(sa.Column("unfamiliar", sa.Float, nullable=True))
