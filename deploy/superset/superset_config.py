"""Superset configuration for the compose deployment (mounted as SUPERSET_CONFIG_PATH)."""

import os

SECRET_KEY = os.environ["SUPERSET_SECRET_KEY"]
SQLALCHEMY_DATABASE_URI = os.environ["SUPERSET_DATABASE_URI"]
# The Onramp worker creates student users and roles through the security REST API.
FAB_ADD_SECURITY_API = True
WTF_CSRF_ENABLED = True
# Behind the reverse proxy that terminates TLS.
ENABLE_PROXY_FIX = True
