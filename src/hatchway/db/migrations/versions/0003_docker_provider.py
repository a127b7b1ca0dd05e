"""docker provider: workspace image and --cvm, the provider's Docker host and network

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.add_column(sa.Column('image', sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column('cvm', sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table('providers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('docker_host', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('docker_network', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('providers', schema=None) as batch_op:
        batch_op.drop_column('docker_network')
        batch_op.drop_column('docker_host')
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.drop_column('cvm')
        batch_op.drop_column('image')
