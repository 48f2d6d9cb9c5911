"""Accounts and sessions: login, refresh, logout, passwords, and who is calling."""
