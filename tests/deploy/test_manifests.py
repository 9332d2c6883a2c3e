"""The Dockerfile, compose file, Kubernetes manifests and ingress examples
agree with the real command line, configuration and routes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.cli import build_parser
from sidecar.config import Settings, env_names, load_settings
from sidecar.observability.health import LIVE_PATH, READY_PATH
from sidecar.routes import ingress_routes

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KNOWN_ENV = {name for field in Settings.__dataclass_fields__ for name in env_names(field)}


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def dockerfile_env() -> dict[str, str]:
    text = dockerfile().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def kubernetes() -> dict[str, Any]:
    docs = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # type: ignore[no-any-return]


# -- environment names ------------------------------------------------------------


def test_every_environment_name_in_the_manifests_exists_in_the_configuration() -> None:
    used = set(dockerfile_env()) - {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    k8s = kubernetes()
    used |= set(k8s["ConfigMap"]["data"])
    container = k8s["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    used |= {e["name"] for e in container["env"]}
    used |= set(k8s["Secret"]["stringData"])
    for name, service in compose()["services"].items():
        if name.startswith("sidecar"):
            used |= set(service["environment"])
    unknown = used - KNOWN_ENV
    assert not unknown, f"not configuration names: {sorted(unknown)}"
    assert {"SIDECAR_UPSTREAM_URL", "JWKS", "BETTER_AUTH_SECRET"} <= used


def test_the_manifest_values_are_a_valid_configuration() -> None:
    k8s = kubernetes()
    env = {**dockerfile_env(), **k8s["ConfigMap"]["data"], **k8s["Secret"]["stringData"]}
    settings = load_settings(env=env)
    assert settings.store_url.startswith("redis+sentinel://")
    assert [r.path for r in settings.resources] == ["/api/mcp"]


# -- the image --------------------------------------------------------------------


def test_the_image_runs_the_real_serve_command_as_a_non_root_user() -> None:
    text = dockerfile()
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]', text, re.M)
    cmd = re.search(r'^CMD \["([^"]+)"\]', text, re.M)
    assert entry
    assert entry.group(1) == "sidecar"
    assert cmd
    assert cmd.group(1) == "serve"
    assert build_parser().parse_args([cmd.group(1)]).command == "serve"
    user = re.search(r"^USER (\S+)", text, re.M)
    assert user
    assert not user.group(1).startswith(("0", "root"))
    assert "[dev]" not in text  # runtime dependencies only


def test_the_image_health_check_and_ports_match_the_configuration() -> None:
    text = dockerfile()
    env = dockerfile_env()
    assert LIVE_PATH in text.split("HEALTHCHECK", 1)[1]
    exposed = set(re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split())  # type: ignore[union-attr]
    assert exposed == {env["SIDECAR_PORT"], env["SIDECAR_METRICS_PORT"]}
    settings = load_settings(env=env)
    assert settings.host == "0.0.0.0"
    assert settings.log_format == "json"


# -- Kubernetes -------------------------------------------------------------------


def test_the_deployment_probes_drains_and_runs_unprivileged() -> None:
    k8s = kubernetes()
    spec = k8s["Deployment"]["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == LIVE_PATH
    assert container["readinessProbe"]["httpGet"]["path"] == READY_PATH
    assert container["args"] == ["serve"]
    drain = float(k8s["ConfigMap"]["data"]["SIDECAR_SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > drain + 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {p["containerPort"] for p in container["ports"]} == {8080, 9464}
    assert container["resources"]["limits"]
    assert container["resources"]["requests"]
    assert k8s["PodDisruptionBudget"]["spec"]["minAvailable"] >= 1
    assert k8s["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2


# -- compose ----------------------------------------------------------------------


def test_compose_runs_two_replicas_sharing_a_persistent_redis() -> None:
    services = compose()["services"]
    replicas = [s for name, s in services.items() if name.startswith("sidecar")]
    assert len(replicas) == 2
    for service in replicas:
        store = service["environment"]["SIDECAR_STORE_URL"]
        assert store == "redis://redis:6379/0"
        assert load_settings(env={"SIDECAR_STORE_URL": store}).store_url == store
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command
    assert "noeviction" in redis_command
    assert services["redis"]["volumes"]


# -- ingress examples -------------------------------------------------------------

SIDECAR_PATH = re.compile(r"(/(?:oauth|\.well-known/[\w-]+|api/mcp)[\w/.-]*)")


def paths_in(text: str) -> set[str]:
    found = set()
    for match in SIDECAR_PATH.findall(text):
        path = match.rstrip("/").rstrip(".")
        path = re.sub(r"/(?::path)?\*?$", "", path) if path.endswith("*") else path
        found.add(path.rstrip("/"))
    return found


@pytest.mark.parametrize("name", ["nginx.conf", "traefik.yaml", "Caddyfile", "next.config.mjs"])
def test_each_ingress_example_routes_every_sidecar_path_and_no_other(name: str) -> None:
    text = (DEPLOY / "ingress" / name).read_text()
    config = re.search(r"sidecar-config: (\w+)=(\S+)", text)
    assert config, "each example states the configuration it is for"
    settings = load_settings(
        env={config.group(1): config.group(2), "SIDECAR_PUBLIC_URL": "https://app.example.com"}
    )
    prefixes, exact = ingress_routes(settings)
    body = "\n".join(line for line in text.splitlines() if "sidecar-config:" not in line)
    assert paths_in(body) == set(prefixes) | set(exact)


# -- the operator's guide -----------------------------------------------------------


def guide_commands() -> list[str]:
    text = (DEPLOY / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(" ".join(line.split()))
    return commands


def test_the_guides_commands_are_the_real_ones() -> None:
    commands = guide_commands()
    sidecar = [c for c in commands if c.startswith("sidecar ")]
    assert len(sidecar) >= 2
    for command in sidecar:
        build_parser().parse_args(command.split()[1:])  # exits on an unknown command
    for command in commands:
        for path in re.findall(r"(deploy/\S+)", command):
            assert (ROOT / path).exists(), path


def test_the_guides_log_events_are_the_ones_the_code_logs() -> None:
    text = (DEPLOY / "README.md").read_text()
    source = "\n".join(p.read_text() for p in (ROOT / "sidecar").rglob("*.py"))
    events = re.findall(r'`"([a-z][a-z -]+)"`', text)
    assert events
    for event in events:
        assert f'"{event}"' in source, event
