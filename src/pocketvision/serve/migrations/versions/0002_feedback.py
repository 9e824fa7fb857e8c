"""Feedback: users' corrections, with the photo when they share it.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(100), nullable=False, index=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("predicted", sa.String(200), nullable=False),
        sa.Column("corrected", sa.String(200), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=True),
        sa.Column("image_type", sa.String(10), nullable=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
    )
