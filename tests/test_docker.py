"""The container recipes in docker/: lint them, and run every command the images run, here.

No Docker engine is needed: the Dockerfiles are linted with hadolint (and the entry-point script
with shellcheck), their build contexts are checked against ``.dockerignore``, the wheel they
install is checked to carry the package data (shipped priors, configs), and every command the
images and the compose file run is executed in this virtual environment, with only the host,
port and data paths substituted:

- the build-time checks in ``RUN`` lines (``mrprior --help``, ``python -m gadgetron``, ...);
- the server images' default command ``mrprior serve --host 0.0.0.0 --port 9002`` (on a free
  loopback port) and their ``HEALTHCHECK``;
- the compose file's ``replay`` one-shot against that server;
- the Gadgetron image's node launch ``python -m gadgetron <port> <module> <target>``, exactly as
  Gadgetron runs it for the shipped chain, with the node module found only where the image puts
  it (``$GADGETRON_HOME/share/gadgetron/python``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = {p.name: p for p in sorted(DOCKER.glob("Dockerfile.*"))}
COMPOSE = DOCKER / "compose.yaml"
BIN = Path(sys.executable).parent
#: the chain that the README's `gadgetron_ismrmrd_client -c ...` command names
GADGETRON_CHAIN = "mrprior_prior_recon.xml"
#: build-time checks that run here too: `mrprior ...`, `ls ...`, `python -c ...` and
#: `python -m gadgetron` (package installs, venv creation etc. are left to the image build)
LOCAL_COMMANDS = {"mrprior", "ls"}
LOCAL_PYTHON_FORMS = (["-c"], ["-m", "gadgetron"])


# --------------------------------------------------------------------------------------------
# a small Dockerfile reader
# --------------------------------------------------------------------------------------------
@dataclass
class Instruction:
    """One Dockerfile instruction (continuation lines joined, comments dropped)."""

    keyword: str
    value: str
    line: int

    def exec_form(self) -> list[str]:
        """JSON exec form as a list; shell form as ``/bin/sh -c <value>``."""
        value = self.value
        if self.keyword == "HEALTHCHECK":
            value = value[value.index("CMD") + 3 :].strip()
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return ["/bin/sh", "-c", value]
        assert isinstance(parsed, list), f"line {self.line}: {value}"
        return [str(v) for v in parsed]


def read_dockerfile(path: Path) -> list[list[Instruction]]:
    """Instructions grouped by build stage (index 0: before the first FROM)."""
    stages: list[list[Instruction]] = [[]]
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (also inside continuations) and blank lines
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = (pending + stripped).strip()
        pending = ""
        keyword, _, value = text.partition(" ")
        ins = Instruction(keyword.upper(), value.strip(), start)
        if ins.keyword == "FROM":
            stages.append([])
        stages[-1].append(ins)
    return stages


def build_args(stages: list[list[Instruction]]) -> dict[str, str]:
    """Every ``ARG NAME=default`` of the file."""
    args = {}
    for ins in (i for stage in stages for i in stage if i.keyword == "ARG"):
        name, _, default = ins.value.partition("=")
        args[name.strip()] = default.strip().strip('"')
    return args


def expand(text: str, variables: dict[str, str]) -> str:
    """Expand ``${NAME}`` and ``$NAME`` as Docker does for ARG/ENV values."""
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)",
        lambda m: variables.get(m.group(1) or m.group(2), m.group(0)),
        text,
    )


def default_command(stages: list[list[Instruction]]) -> list[str]:
    """ENTRYPOINT + CMD of the final stage."""
    final = stages[-1]
    entry = [i.exec_form() for i in final if i.keyword == "ENTRYPOINT"]
    cmd = [i.exec_form() for i in final if i.keyword == "CMD"]
    return (entry[-1] if entry else []) + (cmd[-1] if cmd else [])


def copies(stages: list[list[Instruction]]) -> list[tuple[list[str], str, Instruction]]:
    """``(sources, destination, instruction)`` of every COPY/ADD from the build context."""
    out = []
    for ins in (i for stage in stages for i in stage if i.keyword in {"COPY", "ADD"}):
        words = [w for w in shlex.split(ins.value) if not w.startswith("--")]
        if any(w.startswith("--from") for w in shlex.split(ins.value)):
            continue
        out.append((words[:-1], words[-1], ins))
    return out


def run_segments(stages: list[list[Instruction]]) -> list[str]:
    """The ``&&``-separated parts of RUN lines whose command can run here (build checks)."""
    segments = []
    for ins in (i for stage in stages for i in stage if i.keyword == "RUN"):
        for part in ins.value.split("&&"):
            part = part.strip()
            words = shlex.split(part)
            while words and re.fullmatch(r"\w+=.*", words[0]):
                words = words[1:]  # leading VAR=value assignments
            if not words:
                continue
            if words[0] in LOCAL_COMMANDS or (
                words[0] in {"python", "python3"}
                and any(words[1 : 1 + len(f)] == f for f in LOCAL_PYTHON_FORMS)
            ):
                segments.append(part)
    return segments


def mrprior_argv(argv: list[str]) -> list[str]:
    """Run ``mrprior ...`` with this environment's entry point (``python -m mrprior`` if absent)."""
    assert argv and argv[0] == "mrprior", argv
    exe = BIN / "mrprior"
    return ([str(exe)] if exe.exists() else [sys.executable, "-m", "mrprior"]) + argv[1:]


def parse_cli(argv: list[str]) -> object:
    """Parse a ``mrprior ...`` command line with the real parser (fails on unknown options)."""
    from mrprior.cli import build_parser

    assert argv[0] == "mrprior", argv
    return build_parser().parse_args(argv[1:])


def substitute(argv: list[str], table: dict[str, str]) -> list[str]:
    """Replace option values / words (``--host``'s value, ``/data/...`` prefixes, ...)."""
    out = []
    for word in argv:
        for old, new in table.items():
            if word == old or (old.endswith("/") and word.startswith(old)):
                word = new + word[len(old) :]
                break
        out.append(word)
    return out


def local_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "2")
    env.pop("PYTHONPATH", None)
    return env


def shepp_logan(path: Path) -> Path:
    """A small raw file from ismrmrd-tools' phantom generator: 32x32, 4 coils, R=2 with 12
    calibration lines and a noise scan."""
    cmd = ["ismrmrd_generate_cartesian_shepp_logan", "-m", "32", "-c", "4", "-a", "2", "-w", "12"]
    cmd.append("-C")
    subprocess.run([*cmd, "-o", str(path)], check=True, capture_output=True, cwd=path.parent)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# .dockerignore (Docker's rules: patterns in order, the last match wins, "!" re-includes, a
# pattern that matches a directory covers everything below it)
# --------------------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(rel_path: str, patterns: list[str]) -> bool:
    """True when ``rel_path`` (posix, relative to the context) is left out of the context."""
    parts = rel_path.split("/")
    candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pat = raw[1:] if negate else raw
        pat = os.path.normpath(pat.strip()).lstrip("/")
        rx = _pattern_regex(pat)
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    assert path.is_file(), "the build context (repository root) needs a .dockerignore"
    lines = (ln.strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


# --------------------------------------------------------------------------------------------
# lint
# --------------------------------------------------------------------------------------------
def test_the_three_images_and_compose_exist():
    assert set(DOCKERFILES) == {"Dockerfile.gadgetron", "Dockerfile.server", "Dockerfile.cuda"}
    assert COMPOSE.is_file()


def _tool(name: str) -> str:
    exe = BIN / name
    found = str(exe) if exe.exists() else shutil.which(name)
    assert found, f"{name} not installed: pip install -e '.[dev]' provides it"
    return found


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_is_clean(name: str):
    proc = subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "info", str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\nUSER root\n")
    proc = subprocess.run(
        [_tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "DL3006" in proc.stdout and "DL3008" in proc.stdout


def test_entrypoint_script_passes_shellcheck():
    for stages in map(read_dockerfile, DOCKERFILES.values()):
        for sources, _, _ in copies(stages):
            for src in sources:
                if src.endswith(".sh"):
                    proc = subprocess.run(
                        [_tool("shellcheck"), str(ROOT / src)], capture_output=True, text=True
                    )
                    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# build context and package contents
# --------------------------------------------------------------------------------------------
def test_dockerignore_rules():
    patterns = dockerignore_patterns()
    for kept in ("pyproject.toml", "mrprior/pipeline.py", "gadgets/mrprior_gadget.py"):
        assert not dockerignore_excludes(kept, patterns), kept
    for dropped in (".venv/bin/python", ".git/HEAD", "runs/x/ckpt.pt", "tests/test_batch.py"):
        assert dockerignore_excludes(dropped, patterns), dropped
    assert dockerignore_excludes("mrprior/__pycache__/cli.cpython-311.pyc", patterns)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copy_sources_are_in_the_build_context(name: str):
    patterns = dockerignore_patterns()
    stages = read_dockerfile(DOCKERFILES[name])
    assert copies(stages), "an image of mrprior copies its sources"
    for sources, _, ins in copies(stages):
        for src in sources:
            matches = sorted(ROOT.glob(src))
            assert matches, f"{name}:{ins.line}: COPY source {src} does not exist"
            for match in matches:
                files = [match] if match.is_file() else [p for p in match.rglob("*") if p.is_file()]
                kept = [
                    f
                    for f in files
                    if not dockerignore_excludes(str(f.relative_to(ROOT)), patterns)
                ]
                assert kept, f"{name}:{ins.line}: .dockerignore leaves out all of {src}"


def test_the_installed_package_carries_its_data(tmp_path: Path):
    """The images `pip install` the project (not editable) from what the server Dockerfile
    copies: the wheel built from exactly those files must carry every data file under mrprior/
    (configs, shipped priors, bundled anatomy)."""
    context = tmp_path / "context"
    stages = read_dockerfile(DOCKERFILES["Dockerfile.server"])
    for sources, dest, _ in copies(stages):
        for src in sources:
            target = context / dest.removeprefix("./") if dest.rstrip("/") != "." else context
            if (ROOT / src).is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(ROOT / src, target, ignore=ignore)
            else:
                context.mkdir(exist_ok=True)
                shutil.copy(ROOT / src, context / Path(src).name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.append("--no-build-isolation")  # offline when the build backend is at hand
    proc = subprocess.run([*cmd, str(context)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("mrprior-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "mrprior").rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts
    ]
    assert "mrprior/configs/recon.yaml" in data
    missing = sorted(set(data) - names)
    assert not missing, f"not packaged (extend [tool.setuptools.package-data]): {missing}"
    assert "mrprior/pipeline.py" in names and "mrprior/batch.py" in names


# --------------------------------------------------------------------------------------------
# the commands the images run
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gadgetron_home(tmp_path_factory) -> Path:
    """The Gadgetron image's $GADGETRON_HOME as far as the Dockerfile's COPYs build it."""
    stages = read_dockerfile(DOCKERFILES["Dockerfile.gadgetron"])
    args = build_args(stages)
    home = tmp_path_factory.mktemp("gadgetron_home")
    prefix = args["GADGETRON_HOME"]
    placed = 0
    for sources, dest, _ in copies(stages):
        dest = expand(dest, args)
        if not dest.startswith(prefix + "/"):
            continue
        target = home / dest[len(prefix) + 1 :]
        target.mkdir(parents=True, exist_ok=True)
        for src in sources:
            for match in ROOT.glob(src):
                shutil.copy(match, target / match.name)
                placed += 1
    assert placed, "the Gadgetron image copies nothing into GADGETRON_HOME"
    return home


def _segment_cases() -> list[tuple[str, str]]:
    return [
        (name, seg)
        for name, path in DOCKERFILES.items()
        for seg in run_segments(read_dockerfile(path))
    ]


@pytest.mark.parametrize(("name", "segment"), _segment_cases())
def test_build_time_checks_run_here(name: str, segment: str, gadgetron_home: Path, tmp_path):
    if "cupy" in segment:
        pytest.importorskip("cupy")
    env = local_env()
    args = build_args(read_dockerfile(DOCKERFILES[name]))
    env.update(args)
    env["GADGETRON_HOME"] = str(gadgetron_home)
    proc = subprocess.run(
        ["bash", "-c", segment], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{name}: {segment}\n{proc.stdout}{proc.stderr}"


def test_every_image_checks_its_commands_at_build_time():
    for name, path in DOCKERFILES.items():
        segments = run_segments(read_dockerfile(path))
        assert any(s.startswith("mrprior ") for s in segments), name
    gadgetron = run_segments(read_dockerfile(DOCKERFILES["Dockerfile.gadgetron"]))
    assert "python -m gadgetron" in gadgetron  # Gadgetron's own "is Python usable" probe
    assert any("import mrprior_gadget" in s for s in gadgetron)
    assert any(GADGETRON_CHAIN in s for s in gadgetron)


def test_server_images_serve_on_all_interfaces_and_expose_the_port():
    for name in ("Dockerfile.server", "Dockerfile.cuda"):
        stages = read_dockerfile(DOCKERFILES[name])
        argv = default_command(stages)
        assert argv == ["mrprior", "serve", "--host", "0.0.0.0", "--port", "9002"], name
        args = parse_cli(argv)
        exposed = [i.value for i in stages[-1] if i.keyword == "EXPOSE"]
        assert exposed == [str(args.port)], name
        assert any(i.keyword == "USER" and not i.value.startswith("0") for i in stages[-1]), name


def test_gadgetron_image_runs_gadgetron_through_the_entrypoint():
    stages = read_dockerfile(DOCKERFILES["Dockerfile.gadgetron"])
    argv = default_command(stages)
    assert argv[:2] == ["/tini", "--"]
    script = next(
        ROOT / src for sources, dest, _ in copies(stages) for src in sources if dest == argv[2]
    )
    text = script.read_text()
    assert "conda activate gadgetron" in text and 'exec gadgetron "$@"' in text
    # mrprior's environment goes first on PATH *after* the activation, so Gadgetron's `python`
    # for external nodes is the one with mrprior installed
    assert text.index("conda activate gadgetron") < text.index("MRPRIOR_ENV")
    subprocess.run(["bash", "-n", str(script)], check=True)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_consistent():
    spec = compose()
    services = spec["services"]
    assert set(services) == {"server", "replay"}
    server, replay = services["server"], services["replay"]
    assert (COMPOSE.parent / server["build"]["context"]).resolve() == ROOT
    assert (ROOT / server["build"]["dockerfile"]).resolve() == DOCKERFILES["Dockerfile.server"]
    assert replay["image"] == server["image"]  # built once, by the server service
    assert replay["depends_on"]["server"]["condition"] == "service_healthy"
    stages = read_dockerfile(DOCKERFILES["Dockerfile.server"])
    assert server["entrypoint"] + server["command"] == default_command(stages)
    image_check = next(i for i in stages[-1] if i.keyword == "HEALTHCHECK").exec_form()
    assert server["healthcheck"]["test"] == ["CMD", *image_check]
    for svc in services.values():
        args = parse_cli(svc["entrypoint"] + svc["command"])
        assert args.command in {"serve", "replay"}
    replay_args = parse_cli(replay["entrypoint"] + replay["command"])
    assert replay_args.host == "server" and replay_args.port == 9002
    assert any(v.endswith(":/data") for v in replay["volumes"])


@contextlib.contextmanager
def running(cmd: list[str], log: Path, **kwargs) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` with its output in ``log``; interrupt (then kill) it on exit if still alive."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _healthcheck(check: list[str], port: int) -> subprocess.CompletedProcess:
    argv = [sys.executable if w == "python" else w for w in check]
    argv = [w.replace("9002", str(port)) for w in argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=local_env())


@pytest.mark.ismrmrd_tools
def test_server_command_healthcheck_and_compose_replay_work(tmp_path: Path):
    services = compose()["services"]
    server, replay = services["server"], services["replay"]
    port = free_port()
    check = server["healthcheck"]["test"][1:]
    assert _healthcheck(check, port).returncode != 0, "the health check must fail with no server"

    data = tmp_path / "data"
    data.mkdir()
    shepp_logan(data / "raw.h5")
    log = tmp_path / "server.log"
    argv = substitute(server["entrypoint"] + server["command"], {"0.0.0.0": "127.0.0.1"})
    argv = substitute(argv, {"9002": str(port)})
    with running(mrprior_argv(argv), log, env=local_env()) as proc:
        deadline = time.monotonic() + 60
        while (status := _healthcheck(check, port)).returncode != 0:
            assert proc.poll() is None, f"server exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"server never healthy: {status.stderr}"
            time.sleep(0.5)
        argv = substitute(
            replay["entrypoint"] + replay["command"],
            {"server": "127.0.0.1", "9002": str(port), "/data/": f"{data}/"},
        )
        done = subprocess.run(
            mrprior_argv(argv), capture_output=True, text=True, timeout=300, env=local_env()
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert proc.poll() is None, "the server must survive a connection"
    assert proc.returncode in (0, 130), log.read_text()
    assert "listening on 127.0.0.1:" in log.read_text()

    import ismrmrd

    with ismrmrd.Dataset(str(data / "out.h5"), "dataset", create_if_needed=False, mode="r") as ds:
        groups = [name for name in ds.list() if name.startswith("image")]
        images = [ds.read_image(g, i) for g in groups for i in range(ds.number_of_images(g))]
    assert images and all(im.data.size > 0 for im in images)


def _chain_external(chain: Path) -> tuple[ET.Element, ET.Element]:
    root = ET.parse(chain).getroot()
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    external = next(root.iter(f"{ns}external"))
    execute = external.find(f"{ns}execute")
    assert execute is not None, f"{chain.name}: the chain must start the node (<execute>)"
    configuration = external.find(f"{ns}configuration")
    if configuration is None:
        configuration = ET.Element("configuration")
    return execute, configuration


@pytest.mark.ismrmrd_tools
def test_gadgetron_launches_the_shipped_node_as_the_image_installs_it(
    gadgetron_home: Path, tmp_path: Path
):
    import ismrmrd

    from mrprior.io.protocol import MRDConnection
    from mrprior.replay import stream

    chain = gadgetron_home / "share/gadgetron/config" / GADGETRON_CHAIN
    assert chain.is_file(), f"{GADGETRON_CHAIN} is not copied into Gadgetron's config folder"
    execute, configuration = _chain_external(chain)
    assert execute.get("type") == "python"
    module, target = execute.get("name"), execute.get("target")
    python_dir = gadgetron_home / "share/gadgetron/python"
    assert (python_dir / f"{module}.py").is_file(), f"{module}.py not on Gadgetron's Python path"

    raw = tmp_path / "raw.h5"
    shepp_logan(raw)
    with ismrmrd.Dataset(str(raw), "dataset", create_if_needed=False, mode="r") as ds:
        header = ds.read_xml_header()
        acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    header = header.decode() if isinstance(header, bytes) else header

    env = local_env()
    env["PYTHONPATH"] = str(python_dir)  # what Gadgetron sets; the package comes from the env
    env["GADGETRON_EXTERNAL_LOG_LEVEL"] = "INFO"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(120)
        port = listener.getsockname()[1]
        argv = ["python", "-m", "gadgetron", str(port), module] + ([target] if target else [])
        node_log = tmp_path / "node.log"
        # cwd is not the repository: nothing becomes importable by accident
        with running([sys.executable, *argv[1:]], node_log, cwd=tmp_path, env=env) as proc:
            sock, _ = listener.accept()
            config = ET.tostring(configuration, encoding="unicode")
            result = stream(MRDConnection(sock), header, acqs, config=config, timeout=300)
            proc.wait(60)
    log = node_log.read_text()
    assert not result.errors, f"{result.errors}\n{log}"
    assert result.closed_cleanly and result.images, log
    assert proc.returncode == 0, log
