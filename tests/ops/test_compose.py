"""docker-compose.yml cannot run here (no Docker daemon), so its structure is checked: the
services and their start order, one image with two commands, the Temporal setup with our
search attributes, settings names, mounted files, that every ${VAR} is documented, that
its settings pass the production check, and what is reachable: only loopback ports (and
Superset's), Prefect behind its auth string, forwarded headers trusted from the configured
proxy only, student workspaces on a network of their own."""

import re
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.contracts import SEARCH_ATTRIBUTES
from core.settings import Settings
from tests.utils.helpers import ROOT

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ escapes a dollar.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(?::?[-?+])[^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def interpolated(value: str) -> str:
    """A compose value with `${VAR:-default}` as its default and `${VAR:?}` (required) as a
    fresh random value, the way an operator's .env would fill it in."""

    def fill(match: re.Match[str]) -> str:
        operator, rest = match.group(2) or "", match.group(3) or ""
        if operator.endswith("?"):
            return secrets.token_urlsafe(32)
        return rest

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?([^}]*)\}", fill, value)


def depends(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def test_every_part_of_the_product_runs(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {
        "postgresql",
        "temporal-admin-tools",
        "temporal",
        "temporal-create-namespace",
        "temporal-ui",
        "api",
        "worker",
        "mailpit",
        "superset",
        "prefect",
        "prometheus",
    }
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name


def test_temporal_starts_in_order_and_knows_our_search_attributes(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert depends(services["temporal-admin-tools"]) == {"postgresql": "service_healthy"}
    assert depends(services["temporal"]) == {
        "temporal-admin-tools": "service_completed_successfully"
    }
    assert depends(services["temporal-create-namespace"]) == {"temporal": "service_healthy"}
    assert depends(services["temporal-ui"]) == {"temporal": "service_healthy"}
    assert "healthcheck" in services["temporal"] and "healthcheck" in services["postgresql"]
    assert services["temporal-admin-tools"]["image"].startswith("temporalio/admin-tools:")
    assert services["temporal"]["image"].startswith("temporalio/server:")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")

    script = (ROOT / "deploy/temporal/create-namespace.sh").read_text()
    assert "temporal operator search-attribute create" in script
    registered = dict(re.findall(r"\b([A-Z][A-Za-z]+):(Keyword|Bool|KeywordList)\b", script))
    assert registered == SEARCH_ATTRIBUTES
    schema = (ROOT / "deploy/temporal/setup-schema.sh").read_text()
    assert "temporal-sql-tool" in schema and "temporal_visibility" in schema


def test_api_and_worker_share_one_image_with_their_own_commands(compose: dict[str, Any]) -> None:
    api, worker = compose["services"]["api"], compose["services"]["worker"]
    assert api["build"] == worker["build"] == "." and api["image"] == worker["image"]
    assert (ROOT / "Dockerfile").is_file()
    api_command = command_text(api)
    assert re.search(
        r"alembic upgrade head\s*&&.*uvicorn --factory api\.main:app_factory", api_command
    )
    assert command_text(worker) == "python worker.py"
    for service in (api, worker):
        assert depends(service)["temporal-create-namespace"] == "service_completed_successfully"
    assert depends(worker)["api"] == "service_healthy"  # migrated before the worker writes
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    assert worker["environment"]["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    assert api["environment"]["APP_ENV"] == "production"


def test_app_environment_names_are_settings(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    for name in ("api", "worker"):
        for key in compose["services"][name]["environment"]:
            assert key.lower() in fields, f"{name}: {key} is not a Settings field"


def test_mounted_files_exist_and_prometheus_scrapes_both_processes(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    ports = {
        (job["dns_sd_configs"][0]["names"][0], job["dns_sd_configs"][0]["port"])
        for job in prometheus["scrape_configs"]
        if "dns_sd_configs" in job
    }
    worker_env = compose["services"]["worker"]["environment"]
    api_env = compose["services"]["api"]["environment"]
    assert ports == {
        ("api", int(api_env["API_METRICS_PORT"])),  # production has no /metrics on 8000
        ("worker", int(worker_env["WORKER_METRICS_PORT"])),
        ("worker", int(worker_env["WORKER_SDK_METRICS_PORT"])),
    }
    assert api_env["METRICS_HOST"] == "0.0.0.0"  # on the network, never published
    assert not any(
        port.rsplit(":", 1)[-1] in ("9463", "9464", "9465")
        for service in compose["services"].values()
        for port in service.get("ports", [])
    )


def test_its_settings_pass_the_production_check(compose: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        environment = compose["services"][name]["environment"]
        values = {key.lower(): interpolated(str(v)) for key, v in environment.items()}
        settings = Settings(_env_file=None, **values)  # type: ignore[arg-type]
        assert settings.app_env == "production" and not settings.allow_stripe_test_mode
        settings.check_production()  # a filled-in .env starts
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ENV APP_ENV=production\b", dockerfile, flags=re.MULTILINE)
    env = compose["x-onramp-env"]
    for required in ("JWT_SECRET", "STRIPE_WEBHOOK_SECRET", "PREFECT_API_AUTH_STRING", "SMTP_HOST"):
        assert re.fullmatch(r"\$\{" + required + r":\?[^}]*\}", env[required]), required
    # The mail catcher only for staging, never what production sends through by default.
    assert compose["services"]["mailpit"]["profiles"] == ["staging"]


def host_ports(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, host port) of each published port, defaults filled in."""
    published = []
    for spec in service.get("ports", []):
        parts = interpolated(str(spec)).split(":")
        if len(parts) == 2:
            parts.insert(0, "0.0.0.0")  # no address: every interface
        published.append((parts[0], parts[1]))
    return published


def test_only_loopback_ports_are_published_except_superset(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for address, port in host_ports(service):
            if name == "superset":
                continue  # students log in there (put it behind the TLS proxy too)
            assert address == "127.0.0.1", f"{name} publishes {port} on {address}"
    assert host_ports(compose["services"]["api"]) == [("127.0.0.1", "8000")]


def test_prefect_is_private_and_needs_its_auth_string(compose: dict[str, Any]) -> None:
    prefect = compose["services"]["prefect"]
    assert [address for address, _ in host_ports(prefect)] == ["127.0.0.1"]
    server_auth = prefect["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    client_auth = compose["x-onramp-env"]["PREFECT_API_AUTH_STRING"]
    # The server and the worker read one variable, and it is required.
    assert (
        VARIABLE.findall(server_auth)
        == VARIABLE.findall(client_auth)
        == ["PREFECT_API_AUTH_STRING"]
    )
    assert ":?" in server_auth and ":?" in client_auth


def test_the_api_trusts_forwarded_headers_only_from_the_configured_proxy(
    compose: dict[str, Any],
) -> None:
    api = compose["services"]["api"]
    command = command_text(api)
    # uvicorn leaves the peer alone; the app reads X-Forwarded-For from TRUSTED_PROXIES only.
    assert "--no-proxy-headers" in command and "--forwarded-allow-ips" not in command, command
    trusted = api["environment"]["TRUSTED_PROXIES"]
    assert trusted == "${TRUSTED_PROXIES:-}"
    assert interpolated(trusted) == ""  # by default no one: the TCP peer is the client
    assert "*" not in command


def test_workspaces_run_on_their_own_network(compose: dict[str, Any]) -> None:
    network = compose["networks"]["workspaces"]
    worker = compose["services"]["worker"]
    assert worker["environment"]["WORKSPACE_NETWORK"] == network["name"]
    # Workspaces cannot reach each other either.
    assert network["driver_opts"]["com.docker.network.bridge.enable_icc"] == "false"
    members = {name for name, service in compose["services"].items() if "networks" in service}
    assert members == {"workspace-network"}  # everything else: the default network only
    creator = compose["services"]["workspace-network"]
    assert creator["networks"] == ["workspaces"] and creator["entrypoint"] == ["true"]
    assert creator["restart"] == "no" and "ports" not in creator
    assert depends(worker)["workspace-network"] == "service_completed_successfully"


def compose_variables() -> set[str]:
    files = [COMPOSE, *Path(ROOT / "deploy").rglob("*.yml")]
    return {name for f in files for name in VARIABLE.findall(f.read_text())}


def test_every_variable_is_documented_in_env_example() -> None:
    used = compose_variables()
    assert {"POSTGRES_PASSWORD", "STRIPE_SECRET_KEY", "JWT_SECRET"} <= used
    assert ENV_EXAMPLE.exists(), f".env.example is missing; it must document {sorted(used)}"
    documented = set(
        re.findall(r"^\s*#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    )
    missing = sorted(used - documented)
    assert not missing, f".env.example does not document {missing}"
