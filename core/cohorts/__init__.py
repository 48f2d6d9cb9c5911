"""Cohorts of each track, their seat ledger (holds, seats, releases) and their waitlists."""
