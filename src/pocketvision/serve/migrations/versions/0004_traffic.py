"""Traffic: how many predictions each version made on devices, and how many looked unlike its training photos.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "traffic",
        sa.Column("model", sa.String(100), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("predictions", sa.BigInteger, nullable=False),
        sa.Column("unfamiliar", sa.BigInteger, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    )
