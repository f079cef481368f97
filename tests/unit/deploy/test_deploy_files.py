"""Static checks of deploy/: the compose file, the Kubernetes manifests, the systemd units,
the Dockerfile and the guide. Docker, a cluster and systemd are not needed: every
`flower-superlink` / `flower-supernode` flag used is checked against the `--help` of the
installed binaries, every reference (secret, volume, service, port, variable) against its
declaration, and the secret files against what `fedrad-server certs` and
`fedrad-site keys node` really write."""
from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import click
import pytest
import typer
import yaml
from flwr.common.config import parse_config_args

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
SITES = ("site-a", "site-b", "site-c")
BINARIES = ("flower-superlink", "flower-supernode")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


# --- Flower's real flags ---------------------------------------------------------------


@lru_cache(maxsize=None)
def flower_flags(binary: str) -> tuple[frozenset[str], frozenset[str]]:
    """(every flag, the deprecated ones) from ``binary --help`` of the installed Flower."""
    exe = Path(sys.executable).parent / binary
    path = str(exe) if exe.exists() else shutil.which(binary)
    assert path, f"{binary} is not installed next to {sys.executable} nor on PATH"
    env = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    flags, deprecated, current = set(), set(), None
    for line in result.stdout.splitlines():
        if re.match(r"\s{2}(-\w, )?--", line):  # an option's first line: "  --flag ARG   help"
            current = FLAG.findall(line)[0]
            flags.add(current)
        if current and "deprecated" in line.lower():
            deprecated.add(current)
        if not line.strip():
            current = None
    assert {"--ssl-certfile", "--root-certificates"} & flags, f"unexpected {binary} --help output"
    return frozenset(flags), frozenset(deprecated)


def check_flags(argv: list[str], where: str) -> None:
    """``argv`` (a flower-superlink/-supernode command line) uses only real, current flags."""
    binary = Path(argv[0]).name
    assert binary in BINARIES, f"{where}: unexpected program {argv[0]}"
    valid, deprecated = flower_flags(binary)
    used = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")]
    assert "--insecure" not in used, f"{where}: --insecure turns TLS off"
    assert not set(used) - valid, f"{where}: {binary} has no flag(s) {sorted(set(used) - valid)}"
    assert not set(used) & deprecated, f"{where}: deprecated flag(s) {sorted(set(used) & deprecated)}"


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{argv[0]} lacks {flag}"
    return argv[argv.index(flag) + 1]


def test_flag_check_rejects_unknown_deprecated_and_insecure_flags():
    check_flags(["flower-supernode", "--superlink", "x:1", "--root-certificates", "ca.crt"], "ok")
    for bad in ("--root-certificate", "--insecure", "--auth-supernode-public-key"):
        with pytest.raises(AssertionError):
            check_flags(["flower-supernode", bad, "x"], "bad")
    with pytest.raises(AssertionError):
        check_flags(["flower-superlink", "--fleet-api-address", "0.0.0.0:9092"], "bad")


def test_no_deploy_file_turns_tls_off():
    artefacts = [p for p in DEPLOY.rglob("*") if p.is_file() and p.name != "README.md"
                 and p.suffix not in (".py", ".pyc")]  # configuration, not the launcher's code
    assert len(artefacts) >= 9
    offenders = [p.relative_to(REPO) for p in artefacts if "--insecure" in p.read_text(errors="replace")]
    assert offenders == []


# --- docker compose ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_has_a_superlink_and_three_sites_with_real_flags(compose):
    services = compose["services"]
    assert set(services) == {"superlink", *SITES}
    for name, service in services.items():
        check_flags(service["command"], f"docker-compose.yml {name}")
        assert not service.get("privileged") and service.get("user") in (None, "10001:10001")
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]


def test_compose_references_are_declared(compose):
    for name, service in compose["services"].items():
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], f"{name}: secret {secret} is not declared"
        for path in re.findall(r"/run/secrets/([^/\s]+)", " ".join(service["command"])):
            assert path in service.get("secrets", []), f"{name}: /run/secrets/{path} is not one of its secrets"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in compose["volumes"], f"{name}: volume {source}"
        for network in service.get("networks", []):
            assert network in compose["networks"]
        for dependency in service.get("depends_on", []):
            assert dependency in compose["services"]
    used = {s for service in compose["services"].values() for s in service.get("secrets", [])}
    assert used == set(compose["secrets"]), "declared secrets nobody uses"


def test_compose_superlink_runs_with_tls_auth_and_a_durable_database(compose):
    service = compose["services"]["superlink"]
    argv = service["command"]
    for flag, secret in (("--ssl-ca-certfile", "ca.crt"), ("--ssl-certfile", "server.pem"),
                         ("--ssl-keyfile", "server.key")):
        assert option(argv, flag) == f"/run/secrets/{secret}"
    assert "--enable-supernode-auth" in argv and "--disable-runtime-dependency-installation" in argv
    assert option(argv, "--isolation") == "subprocess"
    database = option(argv, "--database")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert any(database.startswith(m + "/") and mounts[m] in compose["volumes"] for m in mounts), \
        "the SuperLink database must be on a named volume"


def test_compose_ports_agree_and_the_control_api_stays_on_loopback(compose):
    link = compose["services"]["superlink"]
    port = option(link["command"], "--port")
    assert option(link["command"], "--host") == "0.0.0.0"
    assert link["ports"] == [f"127.0.0.1:{port}:{port}"]
    for site in SITES:
        argv = compose["services"][site]["command"]
        assert option(argv, "--superlink") == f"superlink:{port}"


def test_compose_sites_authenticate_trust_the_ca_and_find_their_site_dir(compose):
    for site in SITES:
        service = compose["services"][site]
        argv = service["command"]
        assert option(argv, "--root-certificates") == "/run/secrets/ca.crt"
        assert option(argv, "--auth-supernode-private-key") == f"/run/secrets/{site}_node_key"
        assert option(argv, "--isolation") == "subprocess"
        config = parse_config_args([option(argv, "--node-config")])
        assert config["site-dir"] == "/site" and config["site-name"] == site
        assert f"{site}:/site" in service["volumes"] and site in compose["volumes"]


def test_compose_secret_files_are_what_the_commands_write_and_the_guide_names(compose, tmp_path):
    from client.node_keys import create_node_key
    from server.certs import make_certs

    make_certs(tmp_path / "certs", ["superlink"])
    for site in SITES:
        create_node_key(tmp_path / "sites" / site)
    guide = (DEPLOY / "README.md").read_text()
    for name, secret in compose["secrets"].items():
        path = secret["file"]
        assert path.startswith("./") and (tmp_path / path).is_file(), f"secret {name}: nothing writes {path}"
        generic = re.sub("|".join(SITES), "<site>", path[2:])
        assert f"deploy/{path[2:]}" in guide or f"deploy/{generic}" in guide, \
            f"deploy/README.md does not say how {path} is made"
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert {"certs/", "sites/"} <= set(ignored), "generated keys must be kept out of git"


# --- Kubernetes -------------------------------------------------------------------------


def _k8s_docs() -> list[tuple[str, dict]]:
    files = sorted((DEPLOY / "k8s").glob("*.yaml")) + [DEPLOY / "k8s" / "secrets.yaml.example"]
    docs = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for name, doc in _k8s_docs():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{name}: not a Kubernetes object"
        by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def _named(k8s, kind: str, name: str) -> dict:
    found = [d for d in k8s.get(kind, []) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} is declared {len(found)} times"
    return found[0]


def _containers(k8s):
    for workload in k8s.get("StatefulSet", []) + k8s.get("Deployment", []):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            yield workload, container


def test_k8s_objects_live_in_the_declared_namespace(k8s):
    (namespace,) = [d["metadata"]["name"] for d in k8s["Namespace"]]
    assert k8s["Namespace"][0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for kind, docs in k8s.items():
        for doc in docs:
            if kind != "Namespace":
                assert doc["metadata"].get("namespace") == namespace, f"{kind}/{doc['metadata']['name']}"
    assert {"Service", "StatefulSet", "Secret", "NetworkPolicy"} <= set(k8s)


def test_k8s_commands_use_real_flags_and_declared_mounts_and_secrets(k8s):
    for workload, container in _containers(k8s):
        where = f"StatefulSet/{workload['metadata']['name']}"
        argv = container["command"] + container.get("args", [])
        check_flags(argv, where)
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        files = set()
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes or mount["name"] in claims, f"{where}: volume {mount['name']}"
            secret = volumes.get(mount["name"], {}).get("secret")
            if secret:
                keys = _named(k8s, "Secret", secret["secretName"])["stringData"]
                files |= {f"{mount['mountPath']}/{key}" for key in keys}
        for path in (a for a in argv if a.startswith("/run/secrets/")):
            assert path in files, f"{where}: {path} is no key of a mounted Secret"


def test_k8s_superlink_service_ports_and_supernode_address_agree(k8s):
    link = _named(k8s, "StatefulSet", "superlink")
    container = link["spec"]["template"]["spec"]["containers"][0]
    argv = container["command"]
    port = int(option(argv, "--port"))
    assert option(argv, "--host") == "0.0.0.0" and "--enable-supernode-auth" in argv
    assert option(argv, "--database").startswith("/data/")
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/data"}
    (named_port,) = container["ports"]
    assert named_port["containerPort"] == port
    service = _named(k8s, "Service", "superlink")
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in (port, named_port["name"])
    namespace = service["metadata"]["namespace"]
    names = {"superlink", f"superlink.{namespace}", f"superlink.{namespace}.svc",
             f"superlink.{namespace}.svc.cluster.local"}
    supernodes = [w for w in k8s["StatefulSet"] if w["metadata"]["name"].startswith("supernode-")]
    assert supernodes
    for workload in supernodes:
        argv = workload["spec"]["template"]["spec"]["containers"][0]["command"]
        host, _, target = option(argv, "--superlink").rpartition(":")
        assert host in names and int(target) == service_port["port"]
        assert parse_config_args([option(argv, "--node-config")])["site-dir"] == "/site"
        mounts = {m["mountPath"]: m["name"] for m in workload["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["/site"] in {c["metadata"]["name"] for c in workload["spec"]["volumeClaimTemplates"]}
    policy = _named(k8s, "NetworkPolicy", "superlink-from-supernodes")
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [port]


def test_k8s_selectors_and_governing_services_match(k8s):
    for workload in k8s["StatefulSet"]:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        _named(k8s, "Service", workload["spec"]["serviceName"])
        assert workload["spec"]["replicas"] == 1
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in k8s["StatefulSet"]]
    for service in k8s["Service"]:
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), service["metadata"]["name"]
    for policy in k8s["NetworkPolicy"]:
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        assert any(selector.items() <= labels.items() for labels in pod_labels), policy["metadata"]["name"]


def test_k8s_pods_are_locked_down(k8s):
    for workload, container in _containers(k8s):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert env.get("FLWR_TELEMETRY_ENABLED") == "0"


def test_k8s_secret_template_holds_no_key_material(k8s):
    for secret in k8s["Secret"]:
        for value in secret.get("stringData", {}).values():
            assert "BEGIN" not in value and value.startswith("<"), secret["metadata"]["name"]
    assert not (DEPLOY / "k8s" / "secrets.yaml").exists(), "the template must not be picked up by kubectl apply"


# --- systemd ----------------------------------------------------------------------------

UNITS = {"fedrad-supernode.service": ("flower-supernode", "supernode.env.example"),
         "fedrad-superlink.service": ("flower-superlink", "superlink.env.example")}
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes",
             "CapabilityBoundingSet": "", "AmbientCapabilities": "", "Restart": "on-failure",
             "RestrictSUIDSGID": "yes", "ProtectKernelModules": "yes", "ProtectKernelTunables": "yes",
             "LimitCORE": "0", "UMask": "0077"}


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",),
                                       comment_prefixes=("#", ";"), empty_lines_in_values=False)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def _env_file(name: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (DEPLOY / "systemd" / name).read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def _exec_start(unit: configparser.ConfigParser) -> list[str]:
    return shlex.split(unit["Service"]["ExecStart"].replace("\\\n", " ").replace("\\", " "))


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit_is_hardened(name):
    unit = _unit(name)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    for key, value in HARDENING.items():
        assert key in service and service[key] == value, f"{name}: {key}={value} is missing"
    assert service["User"] not in ("", "root") and service["EnvironmentFile"].startswith("/etc/fedrad/")
    state = f"/var/lib/{service['StateDirectory']}"
    assert service["ReadWritePaths"] == state and service["WorkingDirectory"] == state


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_exec_start_uses_real_flags_and_defined_variables(name):
    binary, env_name = UNITS[name]
    unit, env = _unit(name), _env_file(env_name)
    argv = _exec_start(unit)
    assert Path(argv[0]).name == binary
    check_flags(argv, name)
    used = set(re.findall(r"\$\{(\w+)\}", unit["Service"]["ExecStart"]))
    assert used and used <= set(env), f"{name}: {sorted(used - set(env))} not in {env_name}"
    assert "--isolation" in argv and option(argv, "--isolation") == "subprocess"


def test_systemd_site_and_coordinator_agree():
    site, link = _env_file("supernode.env.example"), _env_file("superlink.env.example")
    assert site["FEDRAD_SUPERLINK"].rsplit(":", 1)[1] == link["FEDRAD_PORT"]
    argv = _exec_start(_unit("fedrad-supernode.service"))
    assert option(argv, "--auth-supernode-private-key") == "${FEDRAD_SITE_DIR}/keys/node_key"
    assert option(argv, "--root-certificates") == "${FEDRAD_CA_CERT}"
    node_config = option(argv, "--node-config").replace("${FEDRAD_SITE_DIR}", site["FEDRAD_SITE_DIR"])
    assert parse_config_args([node_config.replace("${FEDRAD_SITE_NAME}", "x")])["site-dir"] == site["FEDRAD_SITE_DIR"]
    assert site["FEDRAD_SITE_DIR"].startswith(_unit("fedrad-supernode.service")["Service"]["ReadWritePaths"] + "/")
    argv = _exec_start(_unit("fedrad-superlink.service"))
    assert "--enable-supernode-auth" in argv and "--disable-runtime-dependency-installation" in argv
    assert option(argv, "--ssl-keyfile") == "${FEDRAD_CERTS}/server.key"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_knows_every_key():
    units = [str(DEPLOY / "systemd" / name) for name in sorted(UNITS)]
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *units],
                            capture_output=True, text=True, timeout=60)
    # Only what is wrong with the files themselves (/opt/fedrad is not installed here).
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if re.search(r"unknown (key|section)|failed to parse|invalid|unbalanced|ignoring", line, re.I)]
    assert problems == []


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_installs_cpu_torch_before_the_project_and_drops_root():
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    torch = [i for i, line in enumerate(lines) if "torch==2.13.0" in line]
    project = [i for i, line in enumerate(lines) if re.search(r"pip install \.(\s|$)", line)]
    assert len(torch) == 1 and len(project) == 1 and torch[0] < project[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch[0]]
    assert not any(re.search(r"\[test\]|pip install -e|pytest", line) for line in lines), "no dev dependencies"
    users = [i for i, line in enumerate(lines) if line.startswith("USER ")]
    runs = [i for i, line in enumerate(lines) if line.startswith("RUN ")]
    assert users and users[-1] > runs[-1] and lines[users[-1]].split()[1].split(":")[0] not in ("root", "0")
    copied = [line.split()[1] for line in lines if line.startswith("COPY ")]
    assert not {"tests", ".venv", "deploy", "."} & set(copied)


# --- the guide --------------------------------------------------------------------------


def _guide_snippets() -> tuple[list[str], list[str]]:
    """(commands in fenced shell blocks, one per logical line; inline code spans)."""
    prose, blocks, fence = [], [], None  # fence: the open block's language, else None
    for line in (DEPLOY / "README.md").read_text().splitlines():
        if line.strip().startswith("```"):
            fence = line.strip()[3:] if fence is None else None
            if fence is not None:
                blocks.append([fence])
        elif fence is None:
            prose.append(line)
        else:
            blocks[-1].append(line)
    commands = []
    for language, *lines in blocks:
        if language in ("sh", "bash", ""):
            commands += [line.strip() for line in "\n".join(lines).replace("\\\n", " ").splitlines()
                         if line.strip() and not line.lstrip().startswith("#")]
    inline = re.findall(r"`([^`]+)`", "\n".join(prose))
    return commands, [" ".join(span.split()) for span in inline]


def test_guide_uses_real_flower_flags():
    commands, inline = _guide_snippets()
    checked = 0
    for snippet in commands + inline:
        for binary in BINARIES:
            if snippet.startswith(binary) or f" {binary} " in snippet:
                tail = re.split(r"&&|\||;", snippet.split(binary, 1)[1])[0]
                check_flags([binary, *FLAG.findall(tail)], f"README: {snippet}")
                checked += 1
    assert checked >= 3


def test_guide_fedrad_commands_exist():
    from client.cli import app as site_app
    from server.cli import app as server_app

    apps = {"fedrad-site": typer.main.get_command(site_app), "fedrad-server": typer.main.get_command(server_app)}
    commands, _ = _guide_snippets()
    seen = set()
    for line in commands:
        for program, group in apps.items():
            for part in line.split(f"{program} ")[1:]:
                words = shlex.split(re.split(r"&&|\||;|'", part)[0], comments=True)
                command = group
                while isinstance(command, click.Group) and words and words[0] in command.commands:
                    command = command.commands[words.pop(0)]
                assert not isinstance(command, click.Group), f"README: `{program} {part}` names no command"
                options = {opt for param in command.params for opt in param.opts}
                unknown = [w for w in words if w.startswith("--") and w not in options]
                assert not unknown, f"README: `{program} {command.name}` has no option(s) {unknown}"
                seen.add(f"{program} {command.name}")
    assert {"fedrad-site init", "fedrad-site node", "fedrad-site ingest", "fedrad-site digest",
            "fedrad-server certs"} <= seen


def test_guide_covers_the_joining_steps():
    guide = (DEPLOY / "README.md").read_text()
    for needed in ("fedrad-site keys init", "fedrad-site keys node", "node_key.pub", "ca.crt",
                   "fedrad-site ingest", "policy.toml", "allowed-hashes", "fedrad-site app digest",
                   "fedrad-server certs", "flwr supernode register", "flwr run", "root-certificates",
                   "deploy/local_federation.py", "SecAgg+", "--enable-supernode-auth", "Control API"):
        assert needed in guide, f"deploy/README.md does not mention {needed}"
