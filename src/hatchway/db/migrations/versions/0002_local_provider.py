"""local provider: desired state, --openssh, the workspace's Unix user and isolation

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Workspaces that existed before were waiting for their provider to start them: they
    # should run.
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.add_column(sa.Column('desired_state', sa.String(length=20), server_default='running', nullable=False))
        batch_op.add_column(sa.Column('openssh', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('unix_user', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('isolation', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.drop_column('isolation')
        batch_op.drop_column('unix_user')
        batch_op.drop_column('openssh')
        batch_op.drop_column('desired_state')
