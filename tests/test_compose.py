"""docker-compose.yml: accepted by a real compose parser, the same system as the local stack, and its
Prometheus, Grafana and Jaeger wired to the services and to the files under deploy/.

No Kafka, PostgreSQL or Docker engine needed; `config -q` only parses and validates the file.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from shared.settings import REPO, Settings

COMPOSE = REPO / "docker-compose.yml"
SERVICES = ("gateway", "routing", "notifier", "audit")
PUBLISHED = re.compile(r"(?P<ip>[\d.]+):(?P<host>\d+):(?P<container>\d+)(?:/tcp)?")


def _compose() -> list[str]:
    """The compose command: the docker plugin if present, else docker-compose v1. Never skipped."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose", "-f", str(COMPOSE)]
    if legacy := shutil.which("docker-compose"):
        return [legacy, "-f", str(COMPOSE)]
    pytest.fail("no compose parser: install docker-compose (apt-get install docker-compose, as .ci/run does) "
                "or the docker compose plugin")


def _stack_default(var: str) -> int:
    """A port default of deploy/stack.sh, read from the script so the two cannot drift apart."""
    match = re.search(rf"\b{var}:-(\d+)", (REPO / "deploy" / "stack.sh").read_text())
    assert match, f"no {var} default in deploy/stack.sh"
    return int(match.group(1))


def _default(field: str):
    # Not Settings(): tests/conftest.py overrides BLONET_* variables for the test stack.
    return Settings.model_fields[field].default


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _ports(service: dict) -> list[tuple[str, int, int]]:
    """(bind address, host port, container port) of each published port."""
    found = []
    for spec in service.get("ports", []):
        match = PUBLISHED.fullmatch(str(spec))
        assert match, f"port {spec!r}: publish as 'IP:HOST:CONTAINER' so it is bound to loopback"
        found.append((match["ip"], int(match["host"]), int(match["container"])))
    return found


def test_real_compose_parser_accepts_the_file():
    result = subprocess.run([*_compose(), "config", "-q"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"compose config failed:\n{result.stdout}{result.stderr}"


def test_every_published_port_is_on_loopback(services):
    for name, service in services.items():
        for ip, host, _ in _ports(service):
            assert ip == "127.0.0.1", f"{name} publishes port {host} on {ip}"


def test_ports_match_the_local_stack(services):
    assert [p[1] for p in _ports(services["kafka"])] == [_stack_default("BLONET_KAFKA_PORT")]
    assert _ports(services["postgres"]) == [("127.0.0.1", _stack_default("BLONET_PG_PORT"), 5432)]
    for name in SERVICES:
        port = _default(f"{name}_port")  # the service listens on its default port inside the container too
        assert _ports(services[name]) == [("127.0.0.1", port, port)], name


def test_kafka_advertises_each_listener_where_it_is_reachable(services):
    env = services["kafka"]["environment"]
    listens = dict(re.findall(r"(\w+)://[^:,]*:(\d+)", env["KAFKA_LISTENERS"]))
    advertised = dict(re.findall(r"(\w+)://([^,]+)", env["KAFKA_ADVERTISED_LISTENERS"]))
    [(_, host_port, container_port)] = _ports(services["kafka"])
    # Host clients: the published listener advertises the published loopback address.
    external = [n for n, port in listens.items() if int(port) == container_port]
    assert external and advertised[external[0]] == f"127.0.0.1:{host_port}"
    # Containers: the services' bootstrap address is an advertised listener.
    for name in ("setup", *SERVICES):
        assert services[name]["environment"]["BLONET_KAFKA_BOOTSTRAP"] in advertised.values(), name


def test_services_reach_postgres_inside_the_network(services):
    [(_, _, pg_port)] = _ports(services["postgres"])
    for name in ("setup", *SERVICES):
        env = services[name]["environment"]
        assert (env["BLONET_PG_HOST"], int(env["BLONET_PG_PORT"])) == ("postgres", pg_port), name


def test_every_blonet_variable_is_a_setting():
    known = {f"BLONET_{field.upper()}" for field in Settings.model_fields}
    used = set(re.findall(r"\bBLONET_[A-Z0-9_]+", COMPOSE.read_text()))
    assert used, "no BLONET_ variables found"
    assert used <= known, f"not Settings fields: {sorted(used - known)}"


def test_each_service_runs_its_module(services):
    for name in SERVICES:
        command = services[name]["command"]
        argv = shlex.split(command) if isinstance(command, str) else command
        assert argv == ["python", "-m", f"services.{name}"], name
        assert (REPO / "services" / name / "__main__.py").is_file()


def test_image_runs_as_non_root():
    lines = [line.split() for line in (REPO / "Dockerfile").read_text().splitlines() if line.strip()]
    assert ["FROM", "python:3.11-slim"] in lines
    users = [words[1] for words in lines if words[0] == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end with a non-root USER"


def _mounts(service: dict) -> dict[str, Path]:
    """Container path → host path of each bind mount (`./x:/y[:ro]`), relative to the compose file."""
    found = {}
    for spec in service.get("volumes", []):
        source, target = str(spec).split(":")[:2]
        if source.startswith("."):
            found[target] = (COMPOSE.parent / source).resolve()
    return found


def _in_container(mounts: dict[str, Path], path: str) -> Path:
    """The host file a container path names, through the service's bind mounts."""
    for target, source in mounts.items():
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return source / path[len(target):].lstrip("/")
    raise AssertionError(f"{path} is not inside a bind mount ({sorted(mounts)})")


def test_prometheus_scrapes_every_service_and_loads_the_rules(services):
    mounts = _mounts(services["prometheus"])
    config_file = _in_container(mounts, "/etc/prometheus/prometheus.yml")  # the image's default --config.file
    config = yaml.safe_load(config_file.read_text())
    targets = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in config["scrape_configs"]}
    # One job per service, named after it; the target is the compose service on its own port.
    assert targets == {name: [f"{name}:{_default(f'{name}_port')}"] for name in SERVICES}
    for rules in config["rule_files"]:
        assert (config_file.parent / rules).is_file(), rules


def test_grafana_provisions_the_datasource_and_the_dashboard(services):
    grafana = services["grafana"]
    mounts = _mounts(grafana)
    provisioning = _in_container(mounts, "/etc/grafana/provisioning")
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    [(_, _, prometheus_port)] = _ports(services["prometheus"])
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "blonet.yml").read_text())["providers"]
    dashboards = _in_container(mounts, provider["options"]["path"])
    uids = {json.loads(f.read_text())["uid"] for f in dashboards.glob("*.json")}
    assert "blonet-overview" in uids
    assert _in_container(mounts, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).is_file()
    for f in dashboards.glob("*.json"):  # every panel queries the provisioned datasource
        panels = [p for p in json.loads(f.read_text())["panels"] if p["type"] != "row"]
        assert {p["datasource"]["uid"] for p in panels} == {datasource["uid"]}, f.name


def test_services_export_traces_to_jaeger(services):
    published = {container: (ip, host) for ip, host, container in _ports(services["jaeger"])}
    for name in SERVICES:
        env = services[name]["environment"]
        otlp = urlsplit(env["BLONET_OTLP_ENDPOINT"])
        assert (otlp.hostname, otlp.port) == ("jaeger", 4318), name  # Jaeger's OTLP/HTTP receiver
        ui = urlsplit(env["BLONET_TRACE_URL_TEMPLATE"])  # opened by a browser on the host
        assert (ui.hostname, ui.port) == published[16686] and "{trace_id}" in ui.path, name


def test_the_console_reaches_every_service_and_the_audit_key(services):
    env = services["gateway"]["environment"]
    for name in ("routing", "notifier", "audit"):
        url = urlsplit(env[f"BLONET_{name.upper()}_URL"])
        published = {container for _, _, container in _ports(services[name])}
        assert url.hostname == name and url.port in published, name
    # Audit alone mounts its signing key's volume; the gateway mounts only the published public key, read-only.
    private = str(Path(env["BLONET_AUDIT_SIGNING_KEY_FILE"]).parent)
    public = str(Path(env["BLONET_AUDIT_VERIFIER_KEY_FILE"]).parent)
    mounts = {name: {str(v).split(":")[1]: str(v) for v in services[name]["volumes"]} for name in ("audit", "gateway")}
    assert private in mounts["audit"] and not mounts["audit"][private].endswith(":ro")
    assert not mounts["audit"][public].endswith(":ro") and mounts["gateway"][public].endswith(":ro")
    assert private not in mounts["gateway"], "the gateway must never see the audit signing key"


def test_kafka_authenticates_every_listener_and_authorises_with_acls(services):
    env = services["kafka"]["environment"]
    protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = re.findall(r"(\w+)://", env["KAFKA_LISTENERS"])
    assert {protocols[name] for name in listeners} == {"SASL_PLAINTEXT"}, "no listener may be PLAINTEXT"
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert env["KAFKA_SUPER_USERS"] == "User:admin" and env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    # Every principal is formatted into the volume before the broker starts.
    assert services["kafka"]["depends_on"]["kafka-format"]["condition"] == "service_completed_successfully"
    command = " ".join(services["kafka-format"]["command"])
    for principal in ("admin", *SERVICES):
        assert f"SCRAM-SHA-512=[name={principal}," in command, principal


def test_each_service_logs_in_to_kafka_with_its_own_password(services):
    passwords = {name: services[name]["environment"]["BLONET_KAFKA_PASSWORD"] for name in ("setup", *SERVICES)}
    assert len(set(passwords.values())) == len(passwords), passwords
    for name in ("setup", *SERVICES):
        assert services[name]["environment"]["BLONET_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name


def test_only_the_gateway_mounts_the_token_signing_key(services):
    env = services["gateway"]["environment"]
    private, public = (str(Path(env[f"BLONET_TOKEN_{kind}_KEY_FILE"]).parent) for kind in ("PRIVATE", "PUBLIC"))
    assert private != public
    for name in SERVICES:
        mounts = {str(v).split(":")[1]: str(v) for v in services[name]["volumes"]}
        assert (private in mounts) == (name == "gateway"), name
        assert public in mounts and (name == "gateway") != mounts[public].endswith(":ro"), name
