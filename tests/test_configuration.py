"""Configuration is documented: every setting appears in .env.example, and the README
shows the two set-up commands."""

import re
from pathlib import Path

import pytest

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


def test_production_refuses_development_secrets_and_stand_ins() -> None:
    settings = Settings(_env_file=None, app_env="production")  # type: ignore[call-arg]
    with pytest.raises(RuntimeError) as refused:
        settings.check_production()
    message = str(refused.value)
    for problem in (
        "JWT_SECRET",
        "TOOL_SECRET_KEY",
        "STRIPE_SECRET_KEY",
        "SQLite",
        "development tool",
    ):
        assert problem in message


def test_production_starts_with_real_settings() -> None:
    from cryptography.fernet import Fernet

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        app_env="production",
        jwt_secret="a-long-production-secret-0123456789abcdef",
        tool_secret_key=Fernet.generate_key().decode(),
        stripe_secret_key="sk_live_example",
        stripe_webhook_secret="whsec_live_example",
        database_url="postgresql+psycopg://onramp@db/onramp",
        learning_database_url="postgresql://onramp@db/learning",
        superset_url="http://superset:8088",
        prefect_api_url="http://prefect:4200/api",
        docker_host="unix:///var/run/docker.sock",
    )
    settings.check_production()  # does not raise
