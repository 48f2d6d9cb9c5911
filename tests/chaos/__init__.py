"""Chaos tests (see conftest.py)."""
