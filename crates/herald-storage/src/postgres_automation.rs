//! PostgreSQL: the automation store (being written).
