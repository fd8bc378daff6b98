"""ClickHouse: connection, migrations, batched idempotent writes, read queries."""
