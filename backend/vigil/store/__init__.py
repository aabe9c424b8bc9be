"""The durable audit record of every anomaly (SQLite) and the `vigil audit` command that reads it."""
