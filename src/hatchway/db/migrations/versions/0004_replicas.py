"""replicas: the registry of server processes, and who holds each agent and client stream

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'replicas',
        sa.Column('id', sa.String(length=16), nullable=False),
        sa.Column('relay_url', sa.String(length=255), nullable=False),
        sa.Column('secret_check', sa.String(length=64), nullable=False),
        sa.Column('supervises', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_replicas_heartbeat_at', 'replicas', ['heartbeat_at'])
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.add_column(sa.Column('agent_replica_id', sa.String(length=16), nullable=True))
        batch_op.create_index('ix_workspaces_agent_replica_id', ['agent_replica_id'])
    with op.batch_alter_table('ssh_connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('replica_id', sa.String(length=16), nullable=True))
        batch_op.create_index('ix_ssh_connections_replica_id', ['replica_id'])


def downgrade() -> None:
    with op.batch_alter_table('ssh_connections', schema=None) as batch_op:
        batch_op.drop_index('ix_ssh_connections_replica_id')
        batch_op.drop_column('replica_id')
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.drop_index('ix_workspaces_agent_replica_id')
        batch_op.drop_column('agent_replica_id')
    op.drop_index('ix_replicas_heartbeat_at', table_name='replicas')
    op.drop_table('replicas')
