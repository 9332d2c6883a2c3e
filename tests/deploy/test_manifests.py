"""The Dockerfile, compose file, Kubernetes manifests and ingress examples
agree with the real command line, configuration and routes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.cli import build_parser
from sidecar.config import Settings, env_names, load_settings
from sidecar.observability.health import LIVE_PATH, READY_PATH
from sidecar.routes import ingress_routes
from tools.processes import require

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
    # The HEALTHCHECK runs deploy/healthcheck.py, copied into the image, which asks LIVE_PATH.
    copied = re.search(r"^COPY deploy/healthcheck.py (\S+)$", text, re.M)
    assert copied
    assert f'CMD ["python", "{copied.group(1)}"]' in text.split("HEALTHCHECK", 1)[1]
    assert f'PATH = "{LIVE_PATH}"' in (DEPLOY / "healthcheck.py").read_text()
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


def tls_deployment() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "kubernetes" / "tls" / "deployment.yaml").read_text())  # type: ignore[no-any-return]


def test_the_tls_deployment_is_the_plain_one_with_https_probes_and_a_certificate() -> None:
    plain, tls = kubernetes()["Deployment"], tls_deployment()
    container = tls["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["tls"]["readOnly"] is True
    for name in ("SIDECAR_TLS_CERTFILE", "SIDECAR_TLS_KEYFILE"):
        assert name in KNOWN_ENV
        assert env[name].startswith(mounts["tls"]["mountPath"] + "/")
    volumes = {v["name"]: v for v in tls["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"]
    # Apart from those, the same Deployment as ../deployment.yaml.
    for probe in ("livenessProbe", "readinessProbe"):
        del container[probe]["httpGet"]["scheme"]
    container["env"] = [e for e in container["env"] if not e["name"].startswith("SIDECAR_TLS_")]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "tls"]
    pod = tls["spec"]["template"]["spec"]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "tls"]
    assert tls == plain


def test_the_tls_deployment_validates_strictly() -> None:
    validate = ROOT / ".venv" / "bin" / "kubernetes-validate"
    found = str(validate) if validate.exists() else shutil.which("kubernetes-validate")
    require(found is not None, "kubernetes-validate is not installed (make install)")
    assert found
    path = DEPLOY / "kubernetes" / "tls" / "deployment.yaml"
    result = subprocess.run(
        [found, "--strict", "--quiet", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


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


def test_compose_has_one_entry_point_the_balancer_in_front_of_the_replicas() -> None:
    services = compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert list(published) == ["balancer"]
    assert len(published["balancer"]) == 1
    host_port, container_port = str(published["balancer"][0]).split(":")
    replicas = sorted(name for name in services if name.startswith("sidecar"))
    assert replicas == ["sidecar-a", "sidecar-b"]
    assert {services[name]["environment"]["SIDECAR_STORE_URL"] for name in replicas} == {
        "redis://redis:6379/0"
    }
    # The public URL is the balancer's address, the same for both replicas.
    public = {services[name]["environment"]["SIDECAR_PUBLIC_URL"] for name in replicas}
    assert public == {"${PUBLIC_URL:-http://localhost:" + host_port + "}"}
    balancer = services["balancer"]
    assert set(balancer["depends_on"]) == set(replicas)
    source, target = balancer["volumes"][0].split(":")[:2]
    assert target == "/etc/nginx/nginx.conf"
    conf = (DEPLOY / source).read_text()
    assert re.search(rf"^\s*listen {container_port};", conf, re.M)
    port = dockerfile_env()["SIDECAR_PORT"]
    upstream = re.findall(r"^\s*server ([\w.-]+:\d+)[\s;]", conf, re.M)
    assert sorted(upstream) == [f"{name}:{port}" for name in replicas]


def test_the_balancer_conf_passes_nginx_t() -> None:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    require(nginx is not None, "nginx is not installed (apt-get install nginx-light)")
    assert nginx
    conf = (DEPLOY / "balancer" / "nginx.conf").read_text()
    # The replicas' names resolve only inside compose's network.
    local = re.sub(r"sidecar-[ab]:", "127.0.0.1:", conf)
    path = ROOT / ".build" / "balancer-nginx.conf"
    path.parent.mkdir(exist_ok=True)
    path.write_text(local)
    result = subprocess.run(
        [nginx, "-t", "-q", "-c", str(path), "-g", f"pid {path}.pid; error_log stderr;"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


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
