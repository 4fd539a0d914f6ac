"""The run folder names each of its files once; its default lives under the cache root (FLOWRING_HOME)."""

from __future__ import annotations

from pathlib import Path

from services.run_folder import RunFolder, default_run_dir


def test_the_files_of_a_run_folder(tmp_path):
    run = RunFolder(tmp_path)
    assert (run.cluster, run.pids, run.boards, run.logs, run.journal) == (
        tmp_path / "cluster.json", tmp_path / "pids.json", tmp_path / "boards.json", tmp_path / "logs",
        tmp_path / "journal.jsonl")


def test_the_default_folder_follows_flowring_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWRING_HOME", str(tmp_path))
    assert default_run_dir() == RunFolder.default().path == tmp_path / "run"
    monkeypatch.delenv("FLOWRING_HOME")
    assert default_run_dir() == Path.home() / ".cache" / "flowring" / "run"
