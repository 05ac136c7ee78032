//! PostgreSQL: the router store (being written).
