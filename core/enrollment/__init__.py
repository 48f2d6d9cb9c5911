"""Enrollment: the Temporal facade that starts, reads and decides runs, and the webhook table."""
