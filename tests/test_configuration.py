"""Configuration is documented: every setting appears in .env.example, and the README
shows the two set-up commands."""

import re
from pathlib import Path

from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def documented_variables() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))


def test_every_setting_is_documented_in_env_example() -> None:
    missing = {name.upper() for name in Settings.model_fields} - documented_variables()
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_env_example_documents_nothing_that_does_not_exist() -> None:
    known = {name.upper() for name in Settings.model_fields}
    compose = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
    extra = documented_variables() - known - compose - {"SANDBOX_WEBHOOK_URL", "SANDBOX_PUBLIC_URL"}
    assert not extra, f"not a setting: {sorted(extra)}"


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make dev" in readme and "make test" in readme


def test_env_example_loads_and_shows_the_defaults(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    from_example = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert from_example.model_dump() == defaults.model_dump()
