"""Directories as transactions: the lock, the staging directory and its swap, leftovers, atomic files."""

import errno
import os

import pytest

from ppl_vae.errors import StorageError
from ppl_vae.storage.atomic import atomic_path, check_writable, write_text
from ppl_vae.storage.directories import (
    locked,
    make_parents,
    remove_created,
    remove_leftovers,
    staging_dir,
    swap_in,
)


def test_a_second_writer_fails_at_once_naming_the_first(tmp_path):
    target = tmp_path / "run"
    with locked(target):
        lock = tmp_path / ".run.lock"
        assert lock.read_text() == str(os.getpid())
        with pytest.raises(StorageError, match=rf"being written by another ppl-vae process \(pid {os.getpid()}\)"):
            with locked(target):
                pass
    assert not lock.exists()  # released and removed
    with locked(target):  # and free again
        pass


def test_a_directory_has_one_lock_however_it_is_spelled(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    with locked("."):
        assert (tmp_path / ".run.lock").exists()
        with pytest.raises(StorageError, match="being written"):
            with locked(tmp_path / "run"):
                pass
    assert list((tmp_path / "run").iterdir()) == []


def test_swap_replaces_the_whole_directory_and_removes_the_old_content(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = staging_dir(target)
    assert staging.parent == tmp_path and staging.name.startswith(".run.staging-")
    (staging / "new.txt").write_text("new")
    swap_in(staging, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging or old copy left


def test_swap_into_a_missing_target_is_a_rename(tmp_path):
    staging = staging_dir(tmp_path / "run")
    (staging / "a").write_text("a")
    swap_in(staging, tmp_path / "run")
    assert (tmp_path / "run" / "a").read_text() == "a" and len(list(tmp_path.iterdir())) == 1


def test_leftovers_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "run"
    (target / "figures").mkdir(parents=True)
    mine = [tmp_path / ".run.staging-0123456789ab", tmp_path / ".run.old-0123456789ab"]
    for d in mine:
        d.mkdir()
        (d / "x").write_text("x")
    tmp_files = [target / ".history.csv.tmp-0123456789ab", target / "figures" / ".elbo.png.tmp-abcdef012345"]
    for f in tmp_files:
        f.write_text("half")
    others = [tmp_path / ".other.staging-0123456789ab", tmp_path / ".run.staging-notours", target / "notes.tmp"]
    others[0].mkdir()
    others[1].mkdir()
    others[2].write_text("the user's")
    removed = remove_leftovers(target, ("figures",))
    assert sorted(removed) == sorted(mine + tmp_files)
    assert all(p.exists() for p in others)


def test_make_parents_reports_what_it_created_and_removes_only_empty_ones(tmp_path):
    created = make_parents(tmp_path / "a" / "b" / "run")
    assert created == [tmp_path / "a", tmp_path / "a" / "b"]
    (tmp_path / "a" / "keep").write_text("k")
    remove_created(created)
    assert (tmp_path / "a").is_dir() and not (tmp_path / "a" / "b").exists()
    (tmp_path / "file").write_text("f")
    with pytest.raises(StorageError, match="not a directory"):
        make_parents(tmp_path / "file" / "x" / "run")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, "old")
    with pytest.raises(StorageError, match="No space left on device; nothing was replaced"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_writability_is_checked_by_writing(tmp_path):
    check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("f")
    with pytest.raises(StorageError, match="cannot write into"):
        check_writable(tmp_path / "file")
