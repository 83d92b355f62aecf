"""rename users.full_name to display_name

Revision ID: 00219ffcfb71
Revises: 0020d8175f6c
Create Date: 2023-07-18 10:05:49.662310

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "00219ffcfb71"
down_revision: str | Sequence[str] | None = "0020d8175f6c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("users", "full_name", new_column_name="display_name")


def downgrade() -> None:
    op.alter_column("users", "display_name", new_column_name="full_name")
