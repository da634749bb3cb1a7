"""What ``ingest_build_info`` reports: version, Python, and the commit when known."""

from __future__ import annotations

import platform
from pathlib import Path

from ingest import buildinfo

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER = "89abcdef0123456789abcdef0123456789abcdef"


def checkout(root: Path, head: str) -> Path:
    git = root / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text(head + "\n")
    return root


def test_the_commit_of_a_branch_with_a_loose_ref(tmp_path: Path) -> None:
    root = checkout(tmp_path, "ref: refs/heads/main")
    (root / ".git" / "refs" / "heads" / "main").write_text(SHA + "\n")
    assert buildinfo._git_commit(root) == SHA


def test_the_commit_of_a_packed_ref_and_of_a_detached_head(tmp_path: Path) -> None:
    root = checkout(tmp_path / "a", "ref: refs/heads/main")
    (root / ".git" / "packed-refs").write_text(
        f"# pack-refs with: peeled\n{OTHER} refs/heads/other\n{SHA} refs/heads/main\n"
    )
    assert buildinfo._git_commit(root) == SHA
    assert buildinfo._git_commit(checkout(tmp_path / "b", SHA)) == SHA


def test_no_checkout_means_an_unknown_commit(tmp_path: Path) -> None:
    assert buildinfo._git_commit(tmp_path) == ""
    assert buildinfo._commit(tmp_path / "package") == ""


def test_a_stamped_commit_wins_and_a_strange_one_is_refused(tmp_path: Path) -> None:
    package = checkout(tmp_path, SHA) / "ingest"
    package.mkdir()
    assert buildinfo._commit(package) == SHA  # from the checkout
    (package / "BUILD_COMMIT").write_text(OTHER + "\n")
    assert buildinfo._commit(package) == OTHER  # the image build's stamp
    (package / "BUILD_COMMIT").write_text('x"} 1\nevil{a="\n')
    assert buildinfo._commit(package) == ""  # never a label that breaks the exposition


def test_this_process_reports_its_version_and_python() -> None:
    info = buildinfo.build_info()
    assert info.python == platform.python_version()
    assert info.version
    assert info.version != "unknown"
