"""Configuration is documented (every setting appears in .env.example, the README shows the
two set-up commands), production is what a missing APP_ENV means, and production refuses
to start on development secrets, test-mode keys or stand-ins, naming the variable."""

import base64
import os
import re
import secrets
from pathlib import Path

import pytest

from api.main import create_app
from core.settings import DEV_JWT_SECRET, DEV_TOOL_SECRET_KEY, DEV_WEBHOOK_SECRET, Settings
from devstack import use_development_mode
from tests.utils.helpers import production_settings

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
        "STRIPE_WEBHOOK_SECRET",
        "SQLite",
        "SMTP_HOST",
        "development tool",
    ):
        assert problem in message


def test_production_starts_with_real_settings() -> None:
    production_settings().check_production()  # does not raise
    openssl_base64 = base64.b64encode(os.urandom(32)).decode()  # `openssl rand -base64 32`
    production_settings(
        jwt_secret=secrets.token_hex(32),
        jwt_previous_keys=f"k0:{openssl_base64}, k-1:{secrets.token_urlsafe(40)}",
        smtp_host="127.0.0.1",
        smtp_port=25,  # a relay on the host itself is fine; the catcher's port is not
    ).check_production()


def test_a_missing_app_env_means_production() -> None:
    assert Settings(_env_file=None).app_env == "production"  # type: ignore[call-arg]
    with pytest.raises(RuntimeError, match="APP_ENV=production"):
        create_app(Settings(_env_file=None))  # type: ignore[call-arg]


def test_make_dev_runs_in_development_with_no_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_ENV", "test")
    use_development_mode()
    assert os.environ["APP_ENV"] == "test"  # an exported APP_ENV wins
    monkeypatch.delenv("APP_ENV")
    use_development_mode()
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.app_env == "development"
    create_app(settings)  # starts on the embedded defaults


STRONG = secrets.token_urlsafe(32)


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"jwt_secret": DEV_JWT_SECRET}, "JWT_SECRET"),
        ({"jwt_secret": "change-me"}, "JWT_SECRET"),
        ({"jwt_secret": secrets.token_hex(16)}, "JWT_SECRET"),  # 16 random bytes only
        ({"jwt_secret": "x" * 64}, "JWT_SECRET"),
        ({"jwt_secret": "0123456789abcdef" * 4}, "JWT_SECRET"),
        ({"jwt_previous_keys": f"k0:{DEV_JWT_SECRET}"}, "JWT_PREVIOUS_KEYS entry 1 (k0)"),
        ({"jwt_previous_keys": f"k0:{STRONG},k-1:short"}, "JWT_PREVIOUS_KEYS entry 2 (k-1)"),
        ({"jwt_previous_keys": STRONG}, "JWT_PREVIOUS_KEYS entry 1 is not kid:secret"),
        ({"tool_secret_key": DEV_TOOL_SECRET_KEY}, "TOOL_SECRET_KEY"),
        ({"stripe_webhook_secret": DEV_WEBHOOK_SECRET}, "STRIPE_WEBHOOK_SECRET"),
        ({"stripe_webhook_secret": ""}, "STRIPE_WEBHOOK_SECRET"),
        ({"stripe_secret_key": "sk_test_" + "a" * 24}, "STRIPE_SECRET_KEY"),
        ({"stripe_secret_key": "rk_test_" + "a" * 24}, "STRIPE_SECRET_KEY"),
        ({"stripe_publishable_key": "pk_test_" + "a" * 24}, "STRIPE_PUBLISHABLE_KEY"),
        ({"smtp_host": "127.0.0.1", "smtp_port": 1025}, "SMTP_HOST"),
        ({"smtp_host": "localhost", "smtp_port": 1025}, "SMTP_HOST"),
        ({"smtp_host": "::1", "smtp_port": 1025}, "SMTP_HOST"),
        ({"prefect_api_auth_string": ""}, "PREFECT_API_AUTH_STRING"),
    ],
)
def test_each_refusal_names_its_variable(overrides: dict[str, object], variable: str) -> None:
    with pytest.raises(RuntimeError) as refused:
        production_settings(**overrides).check_production()
    message = str(refused.value)
    problems = message.partition("): ")[2].split("; ")
    assert len(problems) == 1 and variable in problems[0], message
    for name, value in overrides.items():
        if re.search("secret|key|auth", name) and isinstance(value, str) and len(value) > 8:
            assert value not in message  # secrets are never echoed


def published_secrets() -> set[str]:
    """Every value the docs show for a secret (commented out or not), and each kid:secret."""
    found: set[str] = set()
    for name in (".env.example", "README.md"):
        text = (ROOT / name).read_text()
        for variable, value in re.findall(r"\b([A-Z][A-Z0-9_]+)=(\S+)", text):
            if not re.search("SECRET|PASSWORD|KEY|TOKEN|AUTH", variable):
                continue
            value = value.strip("`'\"")
            found.add(value)
            found.update(item.partition(":")[2] for item in value.split(",") if ":" in item)
    return found - {""}


def test_no_secret_shown_in_the_docs_is_accepted_as_a_signing_key() -> None:
    values = published_secrets()
    assert {DEV_JWT_SECRET, DEV_TOOL_SECRET_KEY, DEV_WEBHOOK_SECRET} <= values
    for value in values:
        with pytest.raises(RuntimeError, match="JWT_SECRET"):
            production_settings(jwt_secret=value).check_production()
        with pytest.raises(RuntimeError, match="JWT_PREVIOUS_KEYS"):
            production_settings(jwt_previous_keys=f"old:{value}").check_production()


def test_stripe_test_mode_needs_the_staging_flag() -> None:
    test_keys = {
        "stripe_secret_key": "sk_test_" + secrets.token_hex(12),
        "stripe_publishable_key": "pk_test_" + secrets.token_hex(12),
    }
    with pytest.raises(RuntimeError, match="ALLOW_STRIPE_TEST_MODE"):
        production_settings(**test_keys).check_production()
    staging = production_settings(**test_keys, allow_stripe_test_mode=True)
    staging.check_production()  # a staging deployment starts
    assert staging.accepts_stripe_mode(livemode=False)

    live = production_settings()
    assert live.accepts_stripe_mode(livemode=True)
    assert not live.accepts_stripe_mode(livemode=False)
    for app_env in ("development", "test"):
        local = Settings(_env_file=None, app_env=app_env)  # type: ignore[call-arg]
        assert local.accepts_stripe_mode(livemode=False)
