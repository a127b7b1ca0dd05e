"""session clients: what signed in and from where, so people can tell their sessions apart

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('client', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('source', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_column('source')
        batch_op.drop_column('client')
