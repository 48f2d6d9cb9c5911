"""Stripe's own example objects (fixtures3.json), the starting point of every sandbox object."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

FIXTURES_ENV = "STRIPE_FIXTURES_PATH"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURES_PATH = REPO_ROOT.parent / "shared" / "stripe" / "fixtures3.json"

# The resources the sandbox builds; loading fails early if the file lacks one of them.
RESOURCES = (
    "checkout.session",
    "event",
    "payment_intent",
    "charge",
    "refund",
    "dispute",
    "item",
)


def resolve_fixtures_path(path: str | os.PathLike[str] | None = None) -> Path:
    """`path`, else $STRIPE_FIXTURES_PATH, else <repo>/../shared/stripe/fixtures3.json."""
    if path:
        return Path(path)
    from_env = os.environ.get(FIXTURES_ENV)
    if from_env:
        return Path(from_env)
    return DEFAULT_FIXTURES_PATH


class Fixtures:
    """Read-only templates; `new()` hands out deep copies so callers may mutate freely."""

    def __init__(self, resources: dict[str, dict[str, Any]]) -> None:
        missing = [name for name in RESOURCES if name not in resources]
        if missing:
            raise ValueError(f"fixtures lack resources: {', '.join(missing)}")
        self._resources = resources

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Fixtures:
        resolved = resolve_fixtures_path(path)
        try:
            data = json.loads(resolved.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"Stripe fixtures not found at {resolved}; set {FIXTURES_ENV} to fixtures3.json"
            ) from exc
        return cls(data["resources"])

    def new(self, resource: str) -> dict[str, Any]:
        return copy.deepcopy(self._resources[resource])

    def keys(self, resource: str) -> set[str]:
        return set(self._resources[resource])
