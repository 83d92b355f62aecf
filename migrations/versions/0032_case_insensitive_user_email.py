"""make user e-mail uniqueness case-insensitive

Replaces the plain unique constraint with a unique expression index on
lower(email), which also serves the login lookup.

Revision ID: 00324f0b090c
Revises: 00310393d2ec
Create Date: 2024-03-11 16:05:31.440872

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "00324f0b090c"
down_revision: str | Sequence[str] | None = "00310393d2ec"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("uq_users_email", "users", type_="unique")
    op.create_index("uq_users_email_lower", "users", [sa.text("lower(email)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_email_lower", table_name="users")
    op.create_unique_constraint("uq_users_email", "users", ["email"])
