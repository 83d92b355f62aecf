"""seed the built-in roles and permissions

Revision ID: 0024f96b72bc
Revises: 0023f76df9c2
Create Date: 2023-09-12 16:23:37.318554

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0024f96b72bc"
down_revision: str | Sequence[str] | None = "0023f76df9c2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = {
    "admin": "Full access, including user management",
    "accountant": "Books and posts journal entries, reconciles bank accounts",
    "auditor": "Read-only access to the ledger, reports and audit log",
    "viewer": "Read-only access to published reports",
}

PERMISSIONS = {
    "ledger.read": "Read accounts and journal entries",
    "ledger.write": "Create and edit draft journal entries",
    "ledger.post": "Post and void journal entries",
    "periods.close": "Close and lock fiscal periods",
    "bank.reconcile": "Import statements and reconcile bank accounts",
    "reports.read": "Read report snapshots",
    "reports.manage": "Create report definitions and generate snapshots",
    "audit.read": "Read the audit log",
    "users.manage": "Invite users and assign roles",
}

GRANTS = {
    "admin": tuple(PERMISSIONS),
    "accountant": (
        "ledger.read",
        "ledger.write",
        "ledger.post",
        "periods.close",
        "bank.reconcile",
        "reports.read",
        "reports.manage",
    ),
    "auditor": ("ledger.read", "reports.read", "audit.read"),
    "viewer": ("reports.read",),
}

roles = sa.table("roles", sa.column("name", sa.String), sa.column("description", sa.Text))
permissions = sa.table(
    "permissions", sa.column("code", sa.String), sa.column("description", sa.Text)
)


def upgrade() -> None:
    op.bulk_insert(roles, [{"name": k, "description": v} for k, v in ROLES.items()])
    op.bulk_insert(permissions, [{"code": k, "description": v} for k, v in PERMISSIONS.items()])
    grant_rows = ", ".join(
        f"('{role}', '{code}')" for role, codes in GRANTS.items() for code in codes
    )
    op.execute(
        f"""
        INSERT INTO role_permissions (role_id, permission_id)
        SELECT r.id, p.id
          FROM (VALUES {grant_rows}) AS g (role_name, permission_code)
          JOIN roles r ON r.name = g.role_name
          JOIN permissions p ON p.code = g.permission_code
        """
    )


def downgrade() -> None:
    role_names = ", ".join(f"'{name}'" for name in ROLES)
    permission_codes = ", ".join(f"'{code}'" for code in PERMISSIONS)
    # role_permissions and user_roles rows go with the ON DELETE CASCADE foreign keys.
    op.execute(f"DELETE FROM roles WHERE name IN ({role_names})")
    op.execute(f"DELETE FROM permissions WHERE code IN ({permission_codes})")
