"""Tool adapters: what a student gets after paying (schema, BI user, work pool, workspace)."""
