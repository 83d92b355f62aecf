"""add accounts.is_active and validate account codes

Revision ID: 002634e8381a
Revises: 0025bc2ceb51
Create Date: 2023-10-17 14:12:06.889125

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "002634e8381a"
down_revision: str | Sequence[str] | None = "0025bc2ceb51"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
    )
    op.create_check_constraint(
        "ck_accounts_code_format", "accounts", "code ~ '^[0-9A-Z][0-9A-Z.-]*$'"
    )


def downgrade() -> None:
    op.drop_constraint("ck_accounts_code_format", "accounts", type_="check")
    op.drop_column("accounts", "is_active")
