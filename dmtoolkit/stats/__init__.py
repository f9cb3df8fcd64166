"""Array-level statistics: one home per concept (see docs/architecture.md)."""
