"""`make dev`'s local stack: the supervisor, the migration step and the mail catcher."""

import os


def use_development_mode() -> None:
    """`make dev` and `make migrate` run in development: a missing APP_ENV means production
    everywhere else (the image, compose, the support CLI). An exported APP_ENV still wins."""
    os.environ.setdefault("APP_ENV", "development")
