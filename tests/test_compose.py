"""compose.yaml and the Azurite how-to, checked offline against the code.

No Docker here, so the file is parsed and compared with what the code reads:
the ports Azurite publishes are the ones the Azure store's connection string
resolves to, the app is the Dockerfile's ``serve`` on its port, and every
setting the app service sets is one the code reads (so a rename fails here).
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from durable_fx.bindings import FunctionsSettings
from durable_fx.storage.azure import settings_from_url
from email_pipeline.providers import open_provider

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose.yaml"
HOW_TO = REPO / "docs" / "how-to" / "azurite.md"
AZURITE_IMAGE = "mcr.microsoft.com/azure-storage/azurite"
AZURITE_PORTS = {"blob": 10000, "queue": 10001, "table": 10002}
_SETTING = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def published(service: dict[str, Any]) -> dict[int, int]:
    """{container port: host port} of a service's ``ports`` (short syntax)."""
    ports: dict[int, int] = {}
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        ports[int(container)] = int(host.rpartition(":")[2] or container)
    return ports


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def settings_the_code_reads() -> set[str]:
    """UPPER_SNAKE string constants of the modules that read the environment."""
    paths = [
        REPO / "function_app.py",
        *sorted((REPO / "durable_fx").rglob("*.py")),
        *sorted((REPO / "email_pipeline").rglob("*.py")),
    ]
    names: set[str] = set()
    for path in paths:
        source = path.read_text(encoding="utf-8")
        if "environ" not in source and "getenv" not in source:
            continue
        names |= {
            node.value
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _SETTING.fullmatch(node.value)
        }
    return names


def serve_command() -> list[str]:
    lines = (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines()
    (cmd,) = [json.loads(line[len("CMD ") :]) for line in lines if line.startswith("CMD ")]
    assert isinstance(cmd, list)
    return [str(arg) for arg in cmd]


def test_azurite_is_the_official_image_publishing_its_three_ports(
    compose: dict[str, Any],
) -> None:
    azurite = compose["services"]["azurite"]
    assert azurite["image"].split(":")[0] == AZURITE_IMAGE
    ports = published(azurite)
    assert {p: p for p in AZURITE_PORTS.values()}.items() <= ports.items()
    command = azurite["command"].split()
    for service in AZURITE_PORTS:
        # Inside a container, Azurite must listen beyond its own loopback.
        assert command[command.index(f"--{service}Host") + 1] == "0.0.0.0"
        assert f"--{service}Port" not in command  # the defaults are the ports above


def test_the_app_is_the_dockerfiles_serve_on_its_port(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    assert app["build"] in (".", {"context": "."})
    assert "command" not in app and "entrypoint" not in app  # the image's CMD
    cmd = serve_command()
    assert cmd[1] == "serve"
    port = int(cmd[cmd.index("--port") + 1])
    host_port = published(app)[port]
    public = urlsplit(environment(app)["DURABLE_FX_PUBLIC_URL"])
    assert (public.hostname, public.port) == ("localhost", host_port)
    assert set(app["depends_on"]) <= set(compose["services"])


def in_process_environment(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    """The process environment a container with ``values`` (and nothing else of ours) has."""
    for name in list(os.environ):
        if name.startswith(("DURABLE_FX_", "AzureWebJobs")):
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_the_app_stores_on_the_azurite_service_with_the_hub_it_is_given(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(compose["services"]["app"])
    in_process_environment(monkeypatch, env)
    functions = FunctionsSettings.from_environment(env)
    url = functions.resolved_store_url(env)
    assert url == env[functions.connection]  # the connection setting the triggers use
    store = settings_from_url(url, environ=env)
    for service, port in AZURITE_PORTS.items():
        endpoint = urlsplit(store.endpoint(service))
        assert (endpoint.hostname, endpoint.port) == ("azurite", port)
        assert published(compose["services"]["azurite"])[port] == port
    assert store.hub == functions.hub == env["DURABLE_FX_HUB"]
    assert store.partitions == functions.partitions == int(env["DURABLE_FX_PARTITIONS"])


def test_every_setting_the_app_service_sets_is_read_by_the_code(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["app"])
    connection = FunctionsSettings.from_environment(env).connection
    unknown = set(env) - settings_the_code_reads() - {connection}
    assert not unknown, f"compose.yaml sets settings no code reads: {unknown}"
    # serve logs JSON in the image, so it shows no made-up key: the file must set one.
    assert "DURABLE_FX_FUNCTION_KEYS" in env
    source = (REPO / "function_app.py").read_text(encoding="utf-8")
    secrets = set(re.findall(r"hmac_sha256\(\s*\"([A-Z_]+)\"", source))
    assert secrets and secrets <= set(env), "function_app.py's webhook secrets"


def test_the_app_mails_through_the_compose_mail_service(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["app"])
    provider = open_provider(env)
    assert getattr(provider, "host", None) in compose["services"]
    assert getattr(provider, "port", None) == int(env["SMTP_PORT"])


def test_func_start_reaches_the_azurite_that_compose_and_the_how_to_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """local.settings.json.example resolves to the ports published on the host."""
    example = json.loads((REPO / "local.settings.json.example").read_text(encoding="utf-8"))
    values = {str(k): str(v) for k, v in example["Values"].items()}
    in_process_environment(monkeypatch, values)
    store = settings_from_url(FunctionsSettings.from_environment(values).resolved_store_url(values))
    for service, port in AZURITE_PORTS.items():
        endpoint = urlsplit(store.endpoint(service))
        assert (endpoint.hostname, endpoint.port) == ("127.0.0.1", port)
    how_to = HOW_TO.read_text(encoding="utf-8")
    (docker_run,) = [
        line.strip() for line in how_to.splitlines() if line.strip().startswith("docker run ")
    ]
    assert AZURITE_IMAGE in docker_run
    for port in AZURITE_PORTS.values():
        assert f"-p {port}:{port}" in docker_run
    assert "docker compose up" in how_to and "func start" in how_to
