//! Automation end-to-end tests (being written).
