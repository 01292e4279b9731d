"""Where `crate version` finds the commit of a source checkout
(crate_cli/version.py): a repository, a worktree of one, packed refs, a
detached HEAD, and what is no checkout at all."""

from __future__ import annotations

from pathlib import Path

from crate_cli.version import _git_commit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "89abcdef0123456789abcdef0123456789abcdef"


def repository(root: Path, branch: str = "main", packed: bool = False) -> Path:
    git = root / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
    if packed:
        (git / "packed-refs").write_text(
            f"# pack-refs with: peeled fully-peeled sorted\n{OTHER} refs/heads/other\n"
            f"{COMMIT} refs/heads/{branch}\n"
        )
    else:
        (git / "refs" / "heads" / branch).write_text(COMMIT + "\n")
    return git


def test_a_repository_with_a_loose_or_a_packed_ref(tmp_path: Path) -> None:
    repository(tmp_path / "loose")
    repository(tmp_path / "packed", packed=True)
    assert _git_commit(tmp_path / "loose") == COMMIT
    assert _git_commit(tmp_path / "packed") == COMMIT


def test_a_detached_head(tmp_path: Path) -> None:
    git = repository(tmp_path)
    (git / "HEAD").write_text(OTHER + "\n")
    assert _git_commit(tmp_path) == OTHER


def test_a_worktree_reads_its_head_and_the_repositorys_refs(tmp_path: Path) -> None:
    git = repository(tmp_path / "main")
    (git / "refs" / "heads" / "feature").write_text(OTHER + "\n")
    own = git / "worktrees" / "wt"
    own.mkdir(parents=True)
    (own / "HEAD").write_text("ref: refs/heads/feature\n")
    (own / "commondir").write_text("../..\n")
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / ".git").write_text(f"gitdir: {own}\n")
    assert _git_commit(worktree) == OTHER
    relative = tmp_path / "wt-relative"
    relative.mkdir()
    (relative / ".git").write_text("gitdir: ../main/.git/worktrees/wt\n")
    assert _git_commit(relative) == OTHER


def test_no_checkout_knows_no_commit(tmp_path: Path) -> None:
    assert _git_commit(tmp_path) is None
    (tmp_path / ".git").write_text("not a gitdir line\n")
    assert _git_commit(tmp_path) is None
    (tmp_path / ".git").write_text(f"gitdir: {tmp_path / 'gone'}\n")
    assert _git_commit(tmp_path) is None
