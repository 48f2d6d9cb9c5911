"""Accounts: users, sessions, tokens, passwords and the links mailed to set one."""
