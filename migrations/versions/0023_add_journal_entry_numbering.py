"""add per-organisation journal entry numbers and an external reference

Existing entries are numbered in date order within their organisation before
the column becomes NOT NULL.

Revision ID: 0023f76df9c2
Revises: 002272df1692
Create Date: 2023-09-04 09:58:14.090337

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0023f76df9c2"
down_revision: str | Sequence[str] | None = "002272df1692"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("journal_entries", sa.Column("entry_number", sa.Integer(), nullable=True))
    op.add_column("journal_entries", sa.Column("reference", sa.String(64), nullable=True))
    op.execute(
        """
        UPDATE journal_entries AS je
           SET entry_number = numbered.n
          FROM (
                SELECT id,
                       row_number() OVER (
                           PARTITION BY organisation_id ORDER BY entry_date, id
                       ) AS n
                  FROM journal_entries
          ) AS numbered
         WHERE numbered.id = je.id
        """
    )
    op.alter_column("journal_entries", "entry_number", existing_type=sa.Integer(), nullable=False)
    op.create_unique_constraint(
        "uq_journal_entries_organisation_number",
        "journal_entries",
        ["organisation_id", "entry_number"],
    )
    op.create_check_constraint(
        "ck_journal_entries_entry_number_positive", "journal_entries", "entry_number > 0"
    )


def downgrade() -> None:
    op.drop_constraint("ck_journal_entries_entry_number_positive", "journal_entries", type_="check")
    op.drop_constraint("uq_journal_entries_organisation_number", "journal_entries", type_="unique")
    op.drop_column("journal_entries", "reference")
    op.drop_column("journal_entries", "entry_number")
