"""infra/, the Dockerfile and azure.yaml, checked offline against the code.

No Bicep compiler exists offline, so: every .bicep file parses (tree-sitter-bicep
and pycep-parser, two independent grammars); module calls pass the parameters
their modules declare; and what the templates set is compared with what the
code reads, the code side derived from the code itself (setting names from
durable_fx and email_pipeline, queue names from the indexed function_app, the
`serve` flags from the CLI), so a rename on either side fails here.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.main
from pycep import BicepParser
from typer.testing import CliRunner

from durable_fx import storage as durable_storage
from durable_fx.bindings._settings import DEFAULT_CONNECTION, DEFAULT_HUB, FunctionsSettings
from durable_fx.cli import app as cli_app
from durable_fx.storage.azure._settings import settings_from_url
from tests.support.bicep import BicepFile, Node, object_keys, properties, walk

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
MAIN = INFRA / "main.bicep"
DOCKERFILE = REPO / "Dockerfile"

# ---- The one place for setting names the templates deliberately do not set ----
# (every other setting the code reads must be set by infra/main.bicep).
DEFAULTED_SETTINGS = {
    "EMAIL_MESSAGE_ID_DOMAIN": "only names our Message-IDs; the default is fine",
    "SMTP_CA_FILE": "a private CA bundle for local SMTP; Azure-reachable relays use public CAs",
    "EMAIL_RECEIPT_TIMEOUT_SECONDS": "delivery policy: the code's defaults are the design's",
    "EMAIL_MAX_SENDS": "delivery policy",
    "EMAIL_RESEND_BACKOFF_SECONDS": "delivery policy",
    "EMAIL_SEND_RETRY_SECONDS": "delivery policy",
    "EMAIL_SEND_RETRY_ATTEMPTS": "delivery policy",
    "EMAIL_DIGEST_SCHEDULE": "the scheduled jobs: daily at 07:00 UTC suits the reference app",
    "EMAIL_SWEEP_INTERVAL_MINUTES": "the scheduled jobs: every 15 minutes",
    "EMAIL_STUCK_AFTER_SECONDS": "the scheduled jobs: an hour, below the receipt timeout",
    "DURABLE_FX_STORE": "under Functions the store is the connection's account",
    "DURABLE_FX_CONNECTION": "the default, AzureWebJobsStorage, is the identity connection",
    "DURABLE_FX_MANAGEMENT_AUTH": "FUNCTION (the default) keeps the management API keyed",
    "DURABLE_FX_MAX_REQUEST_BYTES": "the default limit suits receipts and requests",
    "DURABLE_FX_MASTER_KEY": "container mode uses a function key; ADMIN routes stay closed",
    "DURABLE_FX_DEBUG": "a CLI debugging switch",
}
# Settings only the Functions host reads (APPLICATIONINSIGHTS_*), per the reference.
HOST_SETTING_PREFIXES = ("APPLICATIONINSIGHTS_",)
# What must never be set on Flex Consumption (functionAppConfig replaces them).
FLEX_FORBIDDEN = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "FUNCTIONS_WORKER_PROCESS_COUNT",
}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|CONNECTION_STRING|_KEYS?$")

# API versions and built-in role ids from shared/reference/azure-functions-python-v2.md §4.
API_VERSIONS = {
    "Microsoft.Web/serverfarms": "2024-04-01",
    "Microsoft.Web/sites": "2024-04-01",
    "Microsoft.Storage/storageAccounts": "2023-05-01",
    "Microsoft.Insights/components": "2020-02-02",
    "Microsoft.OperationalInsights/workspaces": "2023-09-01",
    "Microsoft.ManagedIdentity/userAssignedIdentities": "2023-01-31",
    "Microsoft.Authorization/roleAssignments": "2022-04-01",
}
STORAGE_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
}
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"


def bicep(path: Path) -> BicepFile:
    return BicepFile(path)


def module_file(main: BicepFile, symbol: str) -> BicepFile:
    (decl,) = [m for m in main.modules() if m.name == symbol]
    return bicep(INFRA / decl.target)


def module_params(main: BicepFile, symbol: str) -> dict[str, Node]:
    (decl,) = [m for m in main.modules() if m.name == symbol]
    return properties(properties(decl.body)["params"])


def text(node: Node) -> str:
    return (node.text or b"").decode()


# ---- the code side, derived from the code -------------------------------------

_SETTING = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")


def settings_read_by(paths: list[Path]) -> tuple[set[str], set[str]]:
    """(setting names, verifier secret names) the modules at ``paths`` read.

    A setting is an UPPER_SNAKE string constant in a module that reads the
    environment; a verifier secret is the setting given to ``hmac_sha256`` or
    ``github_signature``.
    """
    names: set[str] = set()
    secrets: set[str] = set()
    for path in paths:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None))
                in ("hmac_sha256", "github_signature")
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                secrets.add(str(node.args[0].value))
        if "environ" in source or "getenv" in source:
            # A module's own constants are named in its __all__: those strings are no settings.
            bound = {
                t.id
                for n in ast.walk(tree)
                if isinstance(n, ast.Assign)
                for t in n.targets
                if isinstance(t, ast.Name)
            }
            names |= {
                n.value
                for n in ast.walk(tree)
                if isinstance(n, ast.Constant)
                and isinstance(n.value, str)
                and _SETTING.fullmatch(n.value)
                and n.value not in bound
            }
    return names | secrets, secrets


def app_sources() -> list[Path]:
    return [REPO / "function_app.py", *sorted((REPO / "email_pipeline").rglob("*.py"))]


@pytest.fixture(scope="module")
def indexed_app() -> dict[str, Any]:
    """function_app:app as the worker indexes it, in a clean process and environment."""
    script = (
        "import json, function_app\n"
        "from durable_fx import DurableApp\n"
        "fns = {f.get_function_name(): [json.loads(b) for b in f.get_raw_bindings()]\n"
        "       for f in function_app.app.get_functions()}\n"
        "durable = isinstance(function_app.app, DurableApp)\n"
        "print(json.dumps({'durable': durable, 'functions': fns}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DURABLE_FX_", "AzureWeb"))}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    indexed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return indexed


def queue_triggers(indexed: dict[str, Any]) -> set[str]:
    return {
        b["queueName"]
        for bindings in indexed["functions"].values()
        for b in bindings
        if b.get("type") == "queueTrigger"
    }


# ---- the Bicep side ---------------------------------------------------------------


def setting_groups(main: BicepFile) -> tuple[set[str], set[str]]:
    """(plain setting names, Key Vault setting names) main.bicep hands the app."""
    variables = main.variables()

    def referenced(var: str) -> set[str]:
        node = variables[var]
        names = object_keys(node)
        for ident in walk(node):
            if ident.type == "identifier" and text(ident) in variables and text(ident) != var:
                names |= object_keys(variables[text(ident)])
        return names

    plain = referenced("appSettings")
    secret = object_keys(variables["secretSettings"]) | object_keys(
        variables["containerSecretSettings"]
    )
    return plain, secret


# ---- tests ------------------------------------------------------------------------


def test_there_are_templates_for_both_hosting_modes() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in BICEP_FILES}
    assert {"main.bicep", "modules/functionapp.bicep", "modules/containerapp.bicep"} <= names


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_bicep_file_parses(path: Path) -> None:
    assert bicep(path).syntax_errors() == []
    BicepParser().parse(text=path.read_text(encoding="utf-8"))  # a second grammar


def test_the_parser_would_notice_broken_bicep(tmp_path: Path) -> None:
    broken = tmp_path / "broken.bicep"
    broken.write_text("param x string =\nresource r 'T@1' = {\n  name: 'n'\n")
    assert bicep(broken).syntax_errors()


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_modules_exist_and_get_exactly_the_parameters_they_declare(path: Path) -> None:
    caller = bicep(path)
    for module in caller.modules():
        target = (path.parent / module.target).resolve()
        assert target.exists(), f"{path.name}: module {module.name} -> {module.target}"
        declared = bicep(target).parameters()
        passed = set(properties(properties(module.body)["params"]))
        required = {name for name, default in declared.items() if default is None}
        assert passed <= set(declared), f"{module.name}: unknown {passed - set(declared)}"
        assert required <= passed, f"{module.name}: missing {required - passed}"


def test_api_versions_are_the_references() -> None:
    seen = set()
    for path in BICEP_FILES:
        for resource in bicep(path).resources():
            kind, _, version = resource.target.partition("@")
            base = "/".join(kind.split("/")[:2])
            if base in API_VERSIONS and kind.count("/") == 1:
                assert version == API_VERSIONS[base], f"{path.name}: {resource.target}"
                seen.add(base)
    assert seen == set(API_VERSIONS)


def test_the_function_app_is_flex_consumption_linux_python_with_the_identity() -> None:
    fn = bicep(INFRA / "modules" / "functionapp.bicep")
    by_type = {r.target.split("@")[0]: r for r in fn.resources()}
    plan = fn.value(by_type["Microsoft.Web/serverfarms"].body)
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert plan["properties"]["reserved"] is True
    site = properties(by_type["Microsoft.Web/sites"].body)
    assert fn.value(site["kind"]) == "functionapp,linux"
    assert fn.value(properties(site["identity"])["type"]) == "UserAssigned"
    config = fn.value(properties(site["properties"])["functionAppConfig"])
    assert config["runtime"]["name"] == "python"
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert set(config["scaleAndConcurrency"]) >= {
        "instanceMemoryMB",
        "maximumInstanceCount",
        "alwaysReady",
    }
    main = bicep(MAIN)
    assert {"hubName", "instanceMemoryMB", "maximumInstanceCount", "alwaysReadyInstances"} <= set(
        main.parameters()
    )


def test_storage_is_identity_only_with_blob_queue_and_table_roles() -> None:
    st = bicep(INFRA / "modules" / "storage.bicep")
    (account,) = [
        r for r in st.resources() if r.target.startswith("Microsoft.Storage/storageAccounts@")
    ]
    assert st.value(account.body)["properties"]["allowSharedKeyAccess"] is False
    (assignments,) = [r for r in st.resources() if "roleAssignments" in r.target]
    parent = walk(assignments.body)[0].parent
    assert parent is not None
    loop = text(parent)  # [for role in items(roles): {...}]
    assert "items(roles)" in loop
    assert "principalId: principalId" in text(assignments.body)
    assert set(st.scope()["roles"].values()) == set(STORAGE_ROLES)
    # The storage module is given the app identity's principal.
    assert text(module_params(bicep(MAIN), "storage")["principalId"]) == (
        "identity.outputs.principalId"
    )


def test_app_insights_takes_entra_tokens_only_and_the_app_may_publish() -> None:
    mon = bicep(INFRA / "modules" / "monitoring.bicep")
    (component,) = [r for r in mon.resources() if r.target.startswith("Microsoft.Insights/")]
    assert mon.value(component.body)["properties"]["DisableLocalAuth"] is True
    assert MONITORING_METRICS_PUBLISHER in mon.scope().values()
    plain, _ = setting_groups(bicep(MAIN))
    assert {
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    } <= plain
    assert "Authorization=AAD" in text(bicep(MAIN).variables()["monitoringSettings"])


def test_key_vault_is_rbac_and_the_app_reads_its_secrets() -> None:
    kv = bicep(INFRA / "modules" / "keyvault.bicep")
    (vault,) = [r for r in kv.resources() if r.target.startswith("Microsoft.KeyVault/vaults@")]
    assert kv.value(vault.body)["properties"]["enableRbacAuthorization"] is True
    assert KEY_VAULT_SECRETS_USER in kv.scope().values()
    fn = bicep(INFRA / "modules" / "functionapp.bicep")
    assert "@Microsoft.KeyVault(SecretUri=" in fn.source.decode()
    assert "keyVaultReferenceIdentity: identityId" in fn.source.decode()
    ca = bicep(INFRA / "modules" / "containerapp.bicep")
    assert "keyVaultUrl: '${keyVaultUri}secrets/${entry.value}'" in ca.source.decode()


def test_the_storage_settings_are_what_the_host_and_the_store_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain, _ = setting_groups(bicep(MAIN))
    connection = FunctionsSettings.from_environment({}).connection
    assert connection == DEFAULT_CONNECTION
    assert connection not in plain, "no connection string: identity only"
    storage_keys = {k for k in plain if k.startswith(connection + "__")}
    suffixes = {k.split("__", 1)[1] for k in storage_keys}
    assert suffixes == {
        "credential",
        "clientId",
        "blobServiceUri",
        "queueServiceUri",
        "tableServiceUri",
    }
    literal = bicep(MAIN).scope()["storageSettings"]
    probe = {
        key: literal[key]
        if isinstance(literal[key], str)
        else "11111111-2222-3333-4444-555555555555"
        if key.endswith("clientId")
        else f"https://stprobe.{key.split('__')[1][: -len('ServiceUri')]}.core.windows.net/"
        for key in storage_keys
    }
    # The store, given only these settings, opens the account with the identity.
    for name in list(os.environ):
        if name.startswith(("AzureWebJobsStorage", "DURABLE_FX_")):
            monkeypatch.delenv(name)
    for key, value in probe.items():
        monkeypatch.setenv(key, value)
    url = durable_storage.default_store_url()
    assert url == "azure://"
    settings = settings_from_url(url, environ=probe)
    assert settings.use_identity and settings.managed_identity
    assert settings.client_id == "11111111-2222-3333-4444-555555555555"
    assert settings.account == "stprobe"
    assert settings.endpoint("queue") == "https://stprobe.queue.core.windows.net"


def test_the_hub_setting_is_the_one_the_app_reads_and_names_the_queues(
    indexed_app: dict[str, Any],
) -> None:
    main = bicep(MAIN)
    durable = main.scope()["durableSettings"]
    literal = properties(main.variables()["durableSettings"])
    (hub_setting,) = [k for k, v in literal.items() if text(v) == "hubName"]
    assert FunctionsSettings.from_environment({hub_setting: "probehub"}).hub == "probehub"
    assert durable[hub_setting] == main.scope()["hubName"] == DEFAULT_HUB
    expected = FunctionsSettings.from_environment(
        {
            hub_setting: durable[hub_setting],
            "DURABLE_FX_PARTITIONS": durable["DURABLE_FX_PARTITIONS"],
        }
    )
    durable_queues = {*expected.control_queues, expected.legacy_control_queue, expected.work_queue}
    assert durable_queues <= queue_triggers(indexed_app)


def test_the_partition_setting_is_the_one_the_app_reads_and_names_the_control_functions(
    indexed_app: dict[str, Any],
) -> None:
    main = bicep(MAIN)
    scope = main.scope()
    assert scope["durableSettings"]["DURABLE_FX_PARTITIONS"] == str(scope["controlPartitions"])
    count = FunctionsSettings.from_environment(
        {"DURABLE_FX_PARTITIONS": scope["durableSettings"]["DURABLE_FX_PARTITIONS"]}
    ).partitions
    assert count == scope["controlPartitions"] == 4
    controls = {f"dfx_control_{i:02d}" for i in range(count)}
    assert controls | {"dfx_control"} == {
        name for name in indexed_app["functions"] if name.startswith("dfx_control")
    }
    # Always-ready instances go to every partition's function (not the legacy drain).
    ready = {entry["name"] for entry in scope["alwaysReadyFunctions"]}
    assert ready == {f"function:{name}" for name in controls}
    assert text(module_params(main, "functionApp")["alwaysReady"]) == (
        "alwaysReadyInstances > 0 ? alwaysReadyFunctions : []"
    )


def test_the_app_settings_match_what_the_code_reads() -> None:
    main = bicep(MAIN)
    plain, secret = setting_groups(main)
    app_reads, verifier_secrets = settings_read_by(app_sources())
    framework_reads, _ = settings_read_by(sorted((REPO / "durable_fx").rglob("*.py")))
    code_reads = app_reads | framework_reads
    unknown_defaulted = set(DEFAULTED_SETTINGS) - code_reads
    assert not unknown_defaulted, (
        f"DEFAULTED_SETTINGS lists settings nothing reads: {unknown_defaulted}"
    )

    set_by_bicep = plain | secret
    missing = app_reads - set_by_bicep - set(DEFAULTED_SETTINGS)
    assert not missing, f"the app reads settings infra/main.bicep does not set: {missing}"
    for name in set_by_bicep:
        if name.startswith(HOST_SETTING_PREFIXES) or name.startswith(DEFAULT_CONNECTION + "__"):
            continue  # the host's own (and the storage test above)
        assert name in code_reads, f"infra/main.bicep sets {name}, which no code reads"

    # Secrets come from Key Vault, never as plain settings.
    assert verifier_secrets <= secret
    for name in set_by_bicep:
        if SECRET_NAME.search(name) and not name.startswith(HOST_SETTING_PREFIXES):
            assert name in secret, f"{name} looks secret but is a plain setting"
    assert not (set_by_bicep & FLEX_FORBIDDEN)


def test_both_hosts_get_the_same_settings_and_every_secret_exists() -> None:
    main = bicep(MAIN)
    for symbol in ("functionApp", "containerApp"):
        params = module_params(main, symbol)
        assert text(params["appSettings"]) == "appSettings"
        assert "secretSettings" in text(params["keyVaultSettings"])
        assert text(params["keyVaultUri"]) == "vault.outputs.uri"
    variables = main.variables()
    wanted = set(
        re.findall(
            r"secretNames\.(\w+)",
            text(variables["secretSettings"]) + text(variables["containerSecretSettings"]),
        )
    )
    # A secret is stored by the Key Vault module or written there by the ACS module.
    stored = set(re.findall(r"secretNames\.(\w+)", text(module_params(main, "vault")["secrets"])))
    written = {text(module_params(main, "email")["connectionStringSecretName"]).split(".")[1]}
    assert wanted <= stored | written
    assert wanted <= set(main.scope()["secretNames"])


# Azure's naming rules for what main.bicep names from uniqueString() (13 characters).
NAME_RULES = {
    ("storage", "name"): r"[a-z0-9]{3,24}",
    ("vault", "name"): r"[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]",
    ("identity", "name"): r"[a-zA-Z0-9][a-zA-Z0-9_-]{2,127}",
    ("functionApp", "appName"): r"[a-z0-9][a-z0-9-]{0,58}[a-z0-9]",
    ("containerApp", "appName"): r"[a-z][a-z0-9-]{0,30}[a-z0-9]",
    ("containerApp", "environmentName"): r"[a-z][a-z0-9-]{0,30}[a-z0-9]",
    ("containerApp", "registryName"): r"[a-zA-Z0-9]{5,50}",
    ("email", "communicationName"): r"[a-zA-Z0-9][a-zA-Z0-9-]{0,62}",
}


def test_generated_names_follow_azure_naming_rules() -> None:
    main = bicep(MAIN)
    scope = {**main.scope(), "token": "abcdefghijk12"}  # uniqueString(): 13 [a-z0-9]
    for (symbol, param), rule in NAME_RULES.items():
        name = main.value(module_params(main, symbol)[param], scope)
        assert isinstance(name, str) and re.fullmatch(rule, name), (symbol, param, name)
    assert "toLower(uniqueString(" in text(main.variables()["token"])


def test_always_ready_names_a_function_the_app_registers(indexed_app: dict[str, Any]) -> None:
    named = [entry["name"] for entry in bicep(MAIN).scope()["alwaysReadyFunctions"]]
    assert named
    for function in named:
        assert function.startswith("function:")
        assert function.removeprefix("function:") in indexed_app["functions"]


def test_keda_scales_on_every_queue_the_app_listens_on(indexed_app: dict[str, Any]) -> None:
    main = bicep(MAIN)
    params = module_params(main, "containerApp")
    scaled = main.value(params["scaleQueues"])
    assert sorted(scaled) == sorted(queue_triggers(indexed_app))
    # ...and the same queues exist before the app first runs.
    assert main.value(module_params(main, "storage")["queueNames"]) == scaled

    ca = bicep(INFRA / "modules" / "containerapp.bicep")
    body = _loop_body(ca, "queueRules")  # [for queueName in scaleQueues: {...}]
    assert "in scaleQueues" in text(ca.variables()["queueRules"])
    rule = ca.value(body)
    assert rule["custom"]["type"] == "azure-queue"
    meta = rule["custom"]["metadata"]
    assert text(properties(properties(properties(body)["custom"])["metadata"])["queueName"]) == (
        "queueName"
    )
    assert meta["queueLengthStrategy"] == "visibleonly"
    assert "identity" in rule["custom"]  # KEDA authenticates with the app identity
    (app,) = [r for r in ca.resources() if r.target.startswith("Microsoft.App/containerApps@")]
    scale = properties(properties(properties(app.body)["properties"])["template"])["scale"]
    assert ca.value(properties(scale)["minReplicas"]) == 0
    assert "queueRules" in text(properties(scale)["rules"])


def _loop_body(file: BicepFile, var: str) -> Node:
    return next(n for n in walk(file.variables()[var]) if n.type == "object")


def test_the_dockerfile_runs_serve_with_flags_the_cli_has(indexed_app: dict[str, Any]) -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    (cmd,) = [json.loads(line[len("CMD ") :]) for line in lines if line.startswith("CMD ")]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert cmd[0] in scripts
    assert cmd[1] == "serve"
    command = typer.main.get_command(cli_app).commands["serve"]  # type: ignore[attr-defined]
    options = {opt for param in command.params for opt in param.opts}
    flags = [arg for arg in cmd[3:] if arg.startswith("--")]
    assert set(flags) <= options
    help_text = CliRunner().invoke(cli_app, ["serve", "--help"]).output
    for flag in flags:
        assert flag in help_text
    values = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert values["--host"] == "0.0.0.0"
    module, _, attr = cmd[2].partition(":")
    assert (module, attr) == ("function_app", "app") and indexed_app["durable"]
    # The port is the one the image exposes and the container app routes to.
    assert f"EXPOSE {values['--port']}" in lines
    ca = bicep(INFRA / "modules" / "containerapp.bicep").source.decode()
    assert f"targetPort: {values['--port']}" in ca


def image_contents(destination: Path) -> Path:
    """The repository as the Dockerfile's ``COPY . .`` sees it (minus .dockerignore)."""
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    destination.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in ignored):
            continue
        if entry.is_dir():
            shutil.copytree(
                entry, destination / entry.name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(entry, destination / entry.name)
    return destination


def test_the_image_and_the_package_keep_what_the_app_needs(tmp_path: Path) -> None:
    needed = {"host.json", "function_app.py", "email_pipeline", "durable_fx", "requirements.txt"}
    image = {p.name for p in image_contents(tmp_path).iterdir()}
    assert needed <= image
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert source == "." or (REPO / source).exists(), line
    published = [
        line.strip()
        for line in (REPO / ".funcignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for name in needed:
        assert not any(fnmatch.fnmatch(name, pattern) for pattern in published), name


@pytest.mark.slow
def test_the_container_command_serves_the_app(tmp_path: Path) -> None:
    """The Dockerfile's CMD, run on the image's files (SQLite instead of Azure, another port)."""
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    (cmd,) = [json.loads(line[len("CMD ") :]) for line in lines if line.startswith("CMD ")]
    workdir = image_contents(tmp_path / "app")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "durable_fx.cli", *cmd[1:]]
    argv[argv.index("--port") + 1] = str(port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DURABLE_FX_", "AzureWeb"))}
    env.update(
        DURABLE_FX_STORE=f"sqlite:///{tmp_path / 'app.db'}", DURABLE_FX_FUNCTION_KEYS="probe-key"
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/api/instances",
                    headers={"x-functions-key": "probe-key"},
                    timeout=2,
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert answer.status_code == 200, answer.text
        first = log.read_text().splitlines()[0]
        assert json.loads(first)  # --log-format json
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0, log.read_text()


def test_requirements_cover_the_runtime_dependencies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["azure"]
    listed = {
        re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for requirement in wanted:
        assert re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower() in listed
    assert "azure-functions" in listed and "azure-functions-worker" not in listed


def test_azure_yaml_deploys_the_function_app_azd_finds_by_tag() -> None:
    azure_yaml = (REPO / "azure.yaml").read_text(encoding="utf-8")
    assert re.search(
        r"^  api:\n    project: \.\n    language: python\n    host: function$", azure_yaml, re.M
    )
    assert "'azd-service-name': 'api'" in (INFRA / "modules" / "functionapp.bicep").read_text()
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(parameters) <= set(bicep(MAIN).parameters())


# ---- no secrets in the infra files ---------------------------------------------------

SECRET_PATTERNS = [
    re.compile(r"AccountKey=", re.I),
    re.compile(r"SharedAccessSignature=|[?&]sig=", re.I),
    re.compile(r"InstrumentationKey=[0-9a-f-]{8,}", re.I),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY"),
    # key-like base64: 40+ characters mixing digits and both cases (not a resource path)
    re.compile(
        r"(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]*\d)(?=[A-Za-z0-9+/]*[a-z])(?=[A-Za-z0-9+/]*[A-Z])"
        r"[A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9+/])"
    ),
    re.compile(r"(?i)(password|secret)['\"]?\s*[:=]\s*['\"][^'\"$]+['\"]"),
]


def secrets_in(content: str) -> list[str]:
    return [m.group(0) for pattern in SECRET_PATTERNS for m in pattern.finditer(content)]


def infra_files() -> list[Path]:
    files = [p for p in INFRA.rglob("*") if p.is_file()]
    extra = ["Dockerfile", ".dockerignore", ".funcignore", "azure.yaml", "requirements.txt"]
    return files + [REPO / name for name in extra]


@pytest.mark.parametrize("path", infra_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_infra_files_contain_no_secrets(path: Path) -> None:
    assert secrets_in(path.read_text(encoding="utf-8")) == []


def test_the_secret_scan_finds_planted_secrets() -> None:
    planted = [
        "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=abc",
        "https://x.blob.core.windows.net/c?sv=2022&sig=abcdef",
        "password: 'hunter2'",
        "key: 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr=='",
    ]
    for sample in planted:
        assert secrets_in(sample), sample


def test_secure_parameters_have_no_literal_defaults() -> None:
    for path in BICEP_FILES:
        file = bicep(path)
        defaults = file.parameters()
        for name in file.secure_parameters():
            default = defaults[name]
            assert default is None or text(default) in ("''", "{}", "newGuid()"), (path, name)
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    for name in bicep(MAIN).secure_parameters() & set(parameters):
        assert re.fullmatch(r"\$\{[A-Z_]+\}", parameters[name]["value"]), name


def test_outputs_carry_no_secrets() -> None:
    # (App Insights' connection string is an address, not a credential: the
    # component accepts Entra ID tokens only.)
    for path in BICEP_FILES:
        file = bicep(path)
        secure = file.secure_parameters()
        for line in file.source.decode().splitlines():
            if line.startswith("output "):
                words = set(re.findall(r"[A-Za-z_]+", line))
                assert "listKeys" not in words and not (words & secure), line


def test_the_deploy_guide_explains_every_setting_the_templates_set() -> None:
    # The README is a landing page; the settings table is in the deploy how-to.
    readme = (REPO / "docs" / "how-to" / "deploy.md").read_text(encoding="utf-8")
    plain, secret = setting_groups(bicep(MAIN))
    for name in plain | secret:
        shown = name if "__" not in name else name.split("__")[0] + "__"
        assert shown in readme, name
