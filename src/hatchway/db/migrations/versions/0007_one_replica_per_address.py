"""replicas: one registration per hand-over address, so servers started together at one address cannot both register

Revision ID: 0007
Revises: 0006
"""
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

#: Written where an SSH connection's replica is forgotten (hatchway.server.cluster.LOST_REPLICA_REASON).
LOST_REPLICA_REASON = 'the Hatchway server process relaying it stopped'
#: The registrations that share their address with a later one: earlier versions let two servers
#: started at the same instant both register there. Only the one that beat last is kept.
SUPERSEDED = (
    "SELECT id FROM replicas WHERE EXISTS (SELECT 1 FROM replicas AS later WHERE later.relay_url = replicas.relay_url"
    " AND (later.heartbeat_at > replicas.heartbeat_at OR (later.heartbeat_at = replicas.heartbeat_at AND later.id > replicas.id)))"
)


def upgrade() -> None:
    # The others are forgotten as a stopped replica is: what they claimed is let go with them.
    op.execute(
        f"UPDATE workspaces SET agent_connected = false, agent_replica_id = NULL WHERE agent_replica_id IN ({SUPERSEDED})"
    )
    op.execute(
        f"UPDATE ssh_connections SET ended_at = CURRENT_TIMESTAMP, result = 'failed', reason = '{LOST_REPLICA_REASON}'"
        f" WHERE result = 'open' AND ended_at IS NULL AND replica_id IN ({SUPERSEDED})"
    )
    op.execute(f"DELETE FROM replicas WHERE id IN ({SUPERSEDED})")
    op.create_index('ix_replicas_relay_url', 'replicas', ['relay_url'], unique=True)


def downgrade() -> None:
    op.drop_index('ix_replicas_relay_url', table_name='replicas')
