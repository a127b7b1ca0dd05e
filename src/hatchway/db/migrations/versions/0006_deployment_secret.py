"""deployment_secret: the check of the deployment secret the database belongs to, recorded once

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'deployment_secret',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('secret_check', sa.String(length=64), nullable=False),
        sa.CheckConstraint('id = 1', name='ck_deployment_secret_one_row'),
        sa.PrimaryKeyConstraint('id'),
    )
    # Replicas of earlier versions each recorded their secret's check, and refused to start
    # beside a live one with another: the latest to beat had the deployment's.
    op.execute(
        "INSERT INTO deployment_secret (id, secret_check) "
        "SELECT 1, secret_check FROM replicas ORDER BY heartbeat_at DESC LIMIT 1"
    )


def downgrade() -> None:
    op.drop_table('deployment_secret')
