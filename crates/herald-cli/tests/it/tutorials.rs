//! Tutorials as tests (being written).
