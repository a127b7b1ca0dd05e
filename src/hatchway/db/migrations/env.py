"""Alembic environment: migrations always run on the connection the server hands us."""

from alembic import context

from hatchway.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("hatchway migrations run from hatchway.db.engine.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
