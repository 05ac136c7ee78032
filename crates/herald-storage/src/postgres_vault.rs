//! PostgreSQL: the vault store (being written).
