"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is parsed with PyYAML and its ``${...}`` variables filled in as Compose does;
every command that runs ``lrsearch`` is resolved against the real click group
(``lrsearch.cli.main``), so a renamed command or option fails here, not in a user's deployment.
The Dockerfile is read as text: its stages, what it copies and installs, its user and entrypoint.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from sqlalchemy.engine import make_url

from lrsearch.cli import main

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_PATH = ROOT / "docker-compose.yml"
COMPOSE_TEXT = COMPOSE_PATH.read_text(encoding="utf-8")
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE_TEXT = (ROOT / "Dockerfile").read_text(encoding="utf-8")
PASSWORD = "pw-sentinel-4d2c"  # what .env would hold
ENV = {"POSTGRES_PASSWORD": PASSWORD}


# --- Compose's variable substitution -------------------------------------------------------------


class MissingVariable(Exception):
    """A ``${VAR:?message}`` whose variable is unset: Compose refuses to start."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` with ``$$``, ``$VAR`` and ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}`` filled in; defaults may nest."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                if j >= len(text):
                    raise ValueError(f"unclosed ${{ in {text!r}")
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                depth -= text[j] == "}"
                j += 1
            out.append(_expand(text[i + 2 : j - 1], env))
            i = j
        elif m := re.match(r"\$([A-Za-z_]\w*)", text[i:]):
            out.append(env.get(m.group(1), ""))
            i += m.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _expand(body: str, env: Mapping[str, str]) -> str:
    m = re.fullmatch(r"([A-Za-z_]\w*)(?:(:?[-?+])(.*))?", body, flags=re.S)
    if m is None:
        raise ValueError(f"bad variable ${{{body}}}")
    name, op, arg = m.groups()
    value = env.get(name)
    if op is None:
        return value or ""
    missing = value is None or (op.startswith(":") and value == "")
    if op.endswith("-"):
        return interpolate(arg, env) if missing else str(value)
    if op.endswith("?"):
        if missing:
            raise MissingVariable(f"{name}: {interpolate(arg, env)}")
        return str(value)
    return "" if missing else interpolate(arg, env)


def filled(value: Any, env: Mapping[str, str] = ENV) -> Any:
    """Every string inside ``value`` interpolated."""
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [filled(v, env) for v in value]
    if isinstance(value, dict):
        return {k: filled(v, env) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("${A}", {}, ""),
        ("a-${A:-d}-b", {}, "a-d-b"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A:-${B}}", {"B": "nested"}, "nested"),
        ("${A:-u:${B:?need B}@h}", {"B": "p"}, "u:p@h"),
        ("$$HOME and $A", {"A": "x"}, "$HOME and x"),
        ("${A:+set}", {"A": "1"}, "set"),
        ("${A:+set}", {}, ""),
    ],
)
def test_interpolation_helper(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


def test_interpolation_helper_refuses_a_missing_required_variable() -> None:
    with pytest.raises(MissingVariable, match="B: need B"):
        interpolate("${A:-${B:?need B}}", {})


# --- the Dockerfile ------------------------------------------------------------------------------


def dockerfile_stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """``{stage name: [(INSTRUCTION, arguments), ...]}``, FROM first; continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), flags=re.I)
            assert m, line
            current = [("FROM", m.group(1))]
            stages[m.group(2) or f"stage{len(stages)}"] = current
        elif current is not None:
            current.append((instruction, args.strip()))
    return stages


STAGES = dockerfile_stages(DOCKERFILE_TEXT)


def stage_chain(name: str) -> list[tuple[str, str]]:
    """A stage's instructions, with those of the stages it is built FROM before them."""
    own = STAGES[name]
    parent = own[0][1]
    return (stage_chain(parent) if parent in STAGES else [own[0]]) + own[1:]


def build_target(service: Mapping[str, Any]) -> str | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return list(STAGES)[-1]
    return build.get("target") or list(STAGES)[-1]


def entrypoint(service: Mapping[str, Any]) -> list[str]:
    """The service's entrypoint: its own, else its Dockerfile stage's (exec form)."""
    own = service.get("entrypoint")
    if own is not None:
        return shlex.split(own) if isinstance(own, str) else list(own)
    target = build_target(service)
    if target is None:
        return []
    found: list[str] = []
    for instruction, args in stage_chain(target):
        if instruction == "ENTRYPOINT":
            found = json.loads(args)
    return found


def argv(service: Mapping[str, Any], env: Mapping[str, str] = ENV) -> list[str]:
    """What the service's container runs, variables filled in."""
    command = filled(service.get("command") or [], env)
    command = shlex.split(command) if isinstance(command, str) else command
    return [*filled(entrypoint(service), env), *command]


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: str(v) for k, v in filled(raw).items()}


# --- resolving lrsearch commands against the click group -----------------------------------------


def resolve(
    args: Sequence[str], monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str] | None = None
) -> click.Context:
    """Parse ``lrsearch ARGS`` as the CLI would (nothing runs); raise click's usage errors."""
    for key in ("LRSEARCH_STORAGE", "LRSEARCH_STORAGE_FILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    args = list(args)
    root = click.Context(main, info_name="lrsearch")
    flags = {opt for p in main.params for opt in p.opts}
    while args and args[0].startswith("-"):
        if args[0] not in flags:
            raise click.NoSuchOption(args[0], ctx=root)
        args.pop(0)
    if not args:
        raise click.UsageError("no lrsearch command", ctx=root)
    command = main.get_command(root, args[0])
    if command is None:
        raise click.UsageError(f"no such command {args[0]!r}", ctx=root)
    return command.make_context(args[0], args[1:], parent=root)


LRSEARCH_SERVICES = sorted(name for name, s in SERVICES.items() if argv(s)[:1] == ["lrsearch"])


def test_the_services_are_there() -> None:
    assert {"postgres", "create", "worker", "dashboard"} <= set(SERVICES)
    assert {"create", "worker"} <= set(LRSEARCH_SERVICES)


@pytest.mark.parametrize("name", LRSEARCH_SERVICES)
def test_every_lrsearch_command_is_real(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    args = argv(SERVICES[name])[1:]
    ctx = resolve(args, monkeypatch, service_env(SERVICES[name]))
    assert ctx.command.name == args[0]


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--studdy", "quickstart"],  # a renamed option
        ["wroker", "--study", "quickstart"],  # a renamed command
        ["create"],  # a missing argument
        ["launch", "studies/quickstart.toml", "--workers", "0"],  # a bad value
        ["--verbose", "worker", "--study", "quickstart"],  # an unknown group option
        [],
    ],
)
def test_the_resolver_rejects_what_the_cli_rejects(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(click.UsageError):
        resolve(args, monkeypatch)


def _compose_runs(text: str) -> list[tuple[str, list[str]]]:
    """``(service, args)`` of each ``docker compose run [options] SERVICE ARGS`` in ``text``."""
    runs = []
    for m in re.finditer(r"docker compose run ([^\n`]+)", text):
        words = shlex.split(m.group(1).split(">")[0].split("|")[0])
        while words and words[0].startswith("-"):
            words.pop(0)  # --rm, --no-deps, -T (none of them takes a value)
        runs.append((words[0], words[1:]))
    return runs


def test_the_commands_in_the_compose_file_header_are_real(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _compose_runs(COMPOSE_TEXT)
    assert runs, "the header shows how to read results with `docker compose run`"
    for service, args in runs:
        assert entrypoint(SERVICES[service]) == ["lrsearch"], service
        resolve(args, monkeypatch, service_env(SERVICES[service]))
    assert re.search(r"docker compose up [^\n]*--scale worker=\d", COMPOSE_TEXT)


# --- the services --------------------------------------------------------------------------------


def test_postgres_is_the_official_image_with_a_health_check_and_a_volume() -> None:
    pg = SERVICES["postgres"]
    assert re.fullmatch(r"postgres:[\w.-]+", pg["image"])
    test = pg["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    mounts = [
        v.split(":") if isinstance(v, str) else [v["source"], v["target"]] for v in pg["volumes"]
    ]
    data = [m for m in mounts if m[1] == "/var/lib/postgresql/data"]
    assert data and data[0][0] in COMPOSE["volumes"], "a named volume keeps the database"
    # The password comes from .env or the environment, and Compose refuses to start without it.
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:?\?[^}]*\}", pg["environment"]["POSTGRES_PASSWORD"])
    with pytest.raises(MissingVariable):
        filled(pg["environment"], {})


def test_the_study_is_created_once_before_any_worker() -> None:
    create, worker = SERVICES["create"], SERVICES["worker"]
    assert argv(create)[1] == "create"
    assert argv(worker)[1] == "worker"
    assert create["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert create.get("restart", "no") == "no"
    for name in ("worker", "dashboard"):
        deps = SERVICES[name]["depends_on"]
        assert deps["create"]["condition"] == "service_completed_successfully", name
    spec = argv(create)[2]
    assert (ROOT / spec).is_file(), f"create runs {spec}, which is not in the repository"


@pytest.mark.parametrize("name", [n for n in SERVICES if n.startswith("worker")])
def test_workers_can_scale(name: str) -> None:
    worker = SERVICES[name]
    for key in ("container_name", "ports", "hostname"):
        assert key not in worker, f"{name}: {key} would stop `--scale {name}=N`"
    # Docker's default 10 s may cut short storing the interrupted trial.
    assert int(str(worker.get("stop_grace_period", "10s")).rstrip("s")) >= 30


def test_a_gpu_variant_is_there_and_off_by_default() -> None:
    gpu = [
        (name, s)
        for name, s in SERVICES.items()
        if any(
            "gpu" in d.get("capabilities", [])
            for d in s.get("deploy", {})
            .get("resources", {})
            .get("reservations", {})
            .get("devices", [])
        )
    ]
    assert gpu, "a service reserves GPUs"
    for name, service in gpu:
        assert service.get("profiles"), f"{name} starts only with its profile"
        assert "/cu" in service["build"]["args"]["TORCH_INDEX_URL"], "a CUDA build of torch"
        assert argv(service)[1] in ("worker", "launch")


def _ports(service: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    """``(host_ip, published)`` of each published port."""
    out: list[tuple[str | None, str]] = []
    for p in filled(service.get("ports", [])):
        if isinstance(p, dict):
            out.append((p.get("host_ip"), str(p.get("published"))))
            continue
        parts = str(p).rsplit(":", 2)
        out.append(
            (parts[0] if len(parts) == 3 else None, parts[-2] if len(parts) >= 2 else parts[0])
        )
    return out


def test_published_ports_are_bound_to_localhost() -> None:
    assert _ports(SERVICES["dashboard"]), "the dashboard is reachable from this host"
    for name, service in SERVICES.items():
        for host_ip, published in _ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes {published} on every interface"


def test_the_dashboard_reads_its_url_from_the_environment() -> None:
    dash = SERVICES["dashboard"]
    command = argv(dash)
    assert command[:2] == ["python", "-c"]
    code = command[2]
    compile(code, "dashboard", "exec")
    assert 'os.environ["DASHBOARD_STORAGE"]' in code and "run_server" in code
    container_port = _ports(dash)[0][1]
    assert f"port={container_port}" in code
    assert "optuna-dashboard" in " ".join(
        a for i, a in STAGES[build_target(dash) or ""] if i == "RUN"
    )


def test_no_password_in_any_command() -> None:
    userinfo = re.compile(r"://[^/\s:@]+:([^@\s]+)@")
    for name, service in SERVICES.items():
        for key in ("command", "entrypoint", "healthcheck"):
            raw = json.dumps(service.get(key))
            assert "password" not in raw.lower(), f"{name}.{key} names a password"
            assert not userinfo.search(raw), f"{name}.{key} holds a URL with a password"
            assert PASSWORD not in json.dumps(filled(service.get(key))), f"{name}.{key}"
        # In the environment, a URL's password is always a variable, never a literal.
        for var, value in (service.get("environment") or {}).items():
            for m in userinfo.finditer(str(value)):
                assert m.group(1).startswith("${"), f"{name}: {var} has a literal password"


@pytest.mark.parametrize("name", [*LRSEARCH_SERVICES, "dashboard"])
def test_storage_urls_reach_the_postgres_service(name: str) -> None:
    env = service_env(SERVICES[name])
    raw = env.get("LRSEARCH_STORAGE") or env.get("DASHBOARD_STORAGE")
    assert raw, f"{name} gets its storage URL from the environment"
    url = make_url(raw)
    pg = filled(SERVICES["postgres"]["environment"])
    assert url.drivername == "postgresql+psycopg"  # the driver the images install
    assert (url.host, url.port or 5432) == ("postgres", 5432)
    assert (url.username, url.password, url.database) == (
        pg["POSTGRES_USER"],
        PASSWORD,
        pg["POSTGRES_DB"],
    )


# --- the Dockerfile ------------------------------------------------------------------------------


def test_every_build_target_is_a_stage() -> None:
    targets = {build_target(s) for s in SERVICES.values()} - {None}
    assert targets and targets <= set(STAGES)


def _copied(stage: str) -> list[str]:
    sources = []
    for instruction, args in stage_chain(stage):
        if instruction in ("COPY", "ADD") and not args.startswith("--from"):
            sources.extend(shlex.split(args)[:-1])
    return [s.rstrip("/") for s in sources]


def test_the_image_holds_what_the_commands_need() -> None:
    stage = build_target(SERVICES["worker"]) or ""
    chain = stage_chain(stage)
    assert re.fullmatch(r"python:[^\s]*slim[^\s]*", chain[0][1].replace("${PYTHON_VERSION}", "3"))
    copied = _copied(stage)
    assert {"pyproject.toml", "README.md", "lrsearch", "studies"} <= set(copied)
    runs = " ".join(args for i, args in chain if i == "RUN")
    assert re.search(r"pip install [^&]*['\"]?\.\[postgres\]", runs), "the PostgreSQL driver"
    torch = re.search(r"pip install \S*torch\S* .*--index-url \S+", runs)
    assert torch, "torch from the PyTorch index, before the package"
    assert runs.index("torch") < runs.index(".[postgres]")
    assert "https://download.pytorch.org/whl/cpu" in DOCKERFILE_TEXT  # CPU by default
    users = [args for i, args in chain if i == "USER"]
    assert users and users[-1] not in ("root", "0"), "runs as a user, not root"
    entry = [json.loads(args) for i, args in chain if i == "ENTRYPOINT"]
    assert entry and entry[-1] == ["lrsearch"]
    # Every study file a service runs is in the image.
    for name in LRSEARCH_SERVICES:
        for arg in argv(SERVICES[name]):
            if arg.endswith(".toml"):
                assert (ROOT / arg).is_file() and arg.split("/")[0] in copied, (name, arg)


def test_the_dashboard_image_has_its_driver_and_no_root() -> None:
    chain = stage_chain(build_target(SERVICES["dashboard"]) or "")
    runs = " ".join(args for i, args in chain if i == "RUN")
    assert "optuna-dashboard" in runs and "psycopg" in runs
    users = [args for i, args in chain if i == "USER"]
    assert users and users[-1] not in ("root", "0")


def _ignored(path: str, patterns: list[str]) -> bool:
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern.lstrip("!").strip("/")
        p = p[3:] if p.startswith("**/") else p
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(x, p) or fnmatch.fnmatch(x.split("/")[-1], p) for x in prefixes):
            result = not negate
    return result


def test_dockerignore_keeps_secrets_out_and_what_is_copied_in() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in _copied(build_target(SERVICES["worker"]) or ""):
        assert not _ignored(path, patterns), f"{path} is copied but ignored"
    for path in (".env", ".git", ".venv", "studies.db", "lrsearch/__pycache__"):
        assert _ignored(path, patterns), f"{path} would be sent to the Docker daemon"


# --- the docs ------------------------------------------------------------------------------------


def test_the_docs_show_the_compose_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    assert re.search(r"docker compose up [^\n]*--scale worker=\d", readme)
    assert "POSTGRES_PASSWORD" in readme and ".env" in readme
    assert "--profile gpu" in readme
    for service, args in _compose_runs(readme):
        assert entrypoint(SERVICES[service]) == ["lrsearch"], service
        resolve(args, monkeypatch, service_env(SERVICES[service]))
