"""Staff-only endpoints (support actions, funnel) and the staff funnel page."""
