"""Docker cannot run here, so check what can go wrong without it: every COPY source exists, the images pin
nothing that disagrees with pyproject.toml, they install the Makefile's system libraries, and compose points
at Dockerfiles and commands that exist."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from q2rl.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def project_pins() -> dict[str, str]:
    """name -> version of every `name==version` requirement in pyproject (dependencies and extras)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    pins = {}
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^;\s]+)", req.strip())
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


def makefile_apt_packages() -> set[str]:
    m = re.search(r"^APT_PACKAGES\s*:=\s*(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, "Makefile has no APT_PACKAGES line"
    return set(m.group(1).split())


def test_there_is_an_actor_and_a_learner_image():
    names = {p.name for p in DOCKERFILES}
    assert {"actor.Dockerfile", "learner.Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_file_exists_in_the_build_context(dockerfile):
    copies = [args for word, args in dockerfile_instructions(dockerfile) if word in ("COPY", "ADD")]
    assert copies, f"{dockerfile.name} copies nothing"
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY source {source} does not exist in the repo"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_package_folders_of_pyproject_are_all_copied(dockerfile):
    """An image that misses a package folder installs, then fails at import time on the robot."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    top_folders = {d.split("/")[0] for d in tool["package-dir"].values()}
    copied = set()
    for word, args in dockerfile_instructions(dockerfile):
        if word == "COPY":
            copied |= {p.rstrip("/").split("/")[0] for p in args.split()[:-1]}
    assert top_folders <= copied, f"{dockerfile.name} does not copy {sorted(top_folders - copied)}"
    assert "pyproject.toml" in copied


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_pins_in_the_images_match_pyproject(dockerfile):
    pins = project_pins()
    text = dockerfile.read_text()
    found = re.findall(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([0-9][^\s\"']*)", text)
    for name, version in found:
        assert name.lower() in pins, f"{dockerfile.name} pins {name}=={version}, which pyproject does not pin"
        assert pins[name.lower()] == version, f"{dockerfile.name}: {name}=={version}, pyproject says {pins[name.lower()]}"
    # Installing the project itself is what brings the pins: the image must install from pyproject.
    assert re.search(r"pip install[^\n]*-e \"?\.", text), f"{dockerfile.name} does not install the project"


def test_the_python_of_the_images_satisfies_requires_python():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    minimum = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", project["requires-python"]).group(1).split("."))
    actor_from = next(a for w, a in dockerfile_instructions(REPO / "docker/actor.Dockerfile") if w == "FROM")
    version = tuple(int(x) for x in re.search(r"python:(\d+\.\d+)", actor_from).group(1).split("."))
    assert version >= minimum


def test_learner_image_installs_cuda_jax_through_the_gpu_extra():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    gpu = project["optional-dependencies"]["gpu"]
    jax_pin = project_pins()["jax"]
    assert any(req.startswith("jax[cuda") and req.endswith(f"=={jax_pin}") for req in gpu), gpu
    assert '.[gpu]' in (REPO / "docker/learner.Dockerfile").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_the_makefiles_system_libraries(dockerfile):
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    installed = set()
    for m in re.finditer(r"apt-get install ([^&]+)", text):
        installed |= {w for w in m.group(1).split() if not w.startswith("-")}
    missing = makefile_apt_packages() - installed
    assert not missing, f"{dockerfile.name} does not install {sorted(missing)}"


def test_compose_builds_existing_dockerfiles_and_runs_existing_commands():
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    services = compose["services"]
    assert {"learner", "actor"} <= set(services)
    for name, service in services.items():
        context = (REPO / "docker" / service["build"]["context"]).resolve()
        assert context == REPO, f"{name}: build context must be the repository root"
        assert (context / service["build"]["dockerfile"]).is_file()
    entrypoints = {}
    for dockerfile in DOCKERFILES:
        for word, args in dockerfile_instructions(dockerfile):
            if word == "ENTRYPOINT":
                entrypoints[dockerfile.name] = yaml.safe_load(args)
    for name, argv in entrypoints.items():
        assert argv[0] == "q2rl" and argv[1] in COMMANDS, f"{name}: entrypoint {argv} is not a q2rl command"
    # The actor must reach the learner by its compose service name.
    actor_cmd = services["actor"]["command"]
    assert actor_cmd[actor_cmd.index("--learner") + 1].startswith("learner:")
    default_config = re.search(r":-([^}]+)\}", services["learner"]["command"][1]).group(1)
    assert (REPO / default_config).is_file(), f"compose's default config {default_config} does not exist"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_an_image_that_runs_make_installs_it(dockerfile):
    """python:*-slim has no make; `make protos` in a RUN then fails the build."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    runs = [args for word, args in dockerfile_instructions(dockerfile) if word == "RUN"]
    if not any(re.search(r"(^|&&|;)\s*make\b", args) for args in runs):
        return
    installed = set()
    for m in re.finditer(r"apt-get install ([^&]+)", text):
        installed |= {w for w in m.group(1).split() if not w.startswith("-")}
    assert "make" in installed, f"{dockerfile.name} runs make but does not install it"


def test_the_build_context_leaves_out_the_venv_the_runs_and_caches():
    path = REPO / ".dockerignore"
    assert path.is_file(), "no .dockerignore: the .venv (over a gigabyte) and runs/ go into every build context"
    patterns = {line.strip().rstrip("/") for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for needed in (".venv", "runs", ".git"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
    assert any("__pycache__" in p for p in patterns)
    # nothing an image copies is excluded
    for dockerfile in DOCKERFILES:
        for word, args in dockerfile_instructions(dockerfile):
            if word == "COPY":
                for source in args.split()[:-1]:
                    assert source.rstrip("/").split("/")[0] not in patterns, f"{dockerfile.name} copies {source}"


def test_a_second_compose_up_is_not_refused_for_a_fixed_run_name():
    """A fixed learner.run_name makes the second `up` stop on 'run directory exists'; the default must be empty
    (the learner then names the run <task>-<date>-<time>) unless the user names one."""
    command = yaml.safe_load((REPO / "docker/compose.yaml").read_text())["services"]["learner"]["command"]
    names = [a for a in command if a.startswith("learner.run_name=")]
    assert all(re.fullmatch(r"learner\.run_name=\$\{\w+:-\}", a) for a in names), names
