"""Sharing a store between processes: one owner writes, others read through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from exoflow_kernel.errors import StoreError
from exoflow_kernel.store import Store

HOLD_AS_READER = """
import sys, time
from exoflow_kernel.store import Store
s = Store(sys.argv[1], role="reader")
print(s.mode, flush=True)
time.sleep(float(sys.argv[2]))
s.close()
"""
HOLD_AS_WRITER = HOLD_AS_READER.replace('role="reader"', 'role="writer"')


def test_a_writer_waits_for_a_short_lived_reader(tmp_path):
    root = tmp_path / "store"
    Store(root).close()  # create it
    reader = subprocess.Popen([sys.executable, "-c", HOLD_AS_READER, str(root), "2"], stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "owner"
    store = Store(root)  # the reader lets go within READER_GRACE: we become the owner
    try:
        assert store.mode == "owner"
        assert reader.wait(timeout=30) == 0
    finally:
        store.close()


def _store_with_one_workflow(root: Path) -> None:
    store = Store(root)
    with store.transaction() as cur:
        cur.execute("insert into exoflow.workflows values ('w', 'SUCCESSFUL', 'r', null, null, now(), now())")
    store.close()


def test_readers_share_the_file_and_leave_each_others_record(tmp_path):
    """DuckDB lets many processes open a file read-only: a second reader reads alongside
    the first, and does not delete the owner.json that makes writers wait for the first."""
    root = tmp_path / "store"
    _store_with_one_workflow(root)
    first = subprocess.Popen([sys.executable, "-c", HOLD_AS_READER, str(root), "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "owner"
        second = Store(root, role="reader")
        assert (second.mode, second.list_workflows()) == ("owner", [("w", "SUCCESSFUL")])
        second.close()
        assert json.loads((root / "owner.json").read_text())["pid"] == first.pid
    finally:
        assert first.wait(timeout=30) == 0
    assert not (root / "owner.json").exists()


def test_a_file_locked_by_a_foreign_process_is_a_clear_error(tmp_path, monkeypatch):
    """Someone's DuckDB shell holds lineage.duckdb: we wait a moment (it could be an owner
    opening), then say who holds it and what to do; the store is intact afterwards."""
    import exoflow_kernel.store as store_module

    root = tmp_path / "store"
    _store_with_one_workflow(root)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, duckdb; con = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(60)"),
        str(root / "lineage.duckdb")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(store_module, "READER_GRACE", 0.5)
        with pytest.raises(StoreError) as err:
            Store(root, role="reader")
        assert "stayed locked by a process that is not ExoFlow's" in str(err.value)
        assert "Close whatever holds the file" in str(err.value)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    store = Store(root)
    try:
        assert store.list_workflows() == [("w", "SUCCESSFUL")]
    finally:
        store.close()


def test_a_reader_whose_owner_exits_answers_by_itself(tmp_path):
    """The CLI asked the notebook's process; the notebook exits before the next question:
    the reader opens the store itself and answers, instead of failing on a dead socket."""
    root = tmp_path / "store"
    _store_with_one_workflow(root)
    writer = subprocess.Popen([sys.executable, "-c", HOLD_AS_WRITER,
                               str(root), "2"], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "owner"
    reader = Store(root, role="reader")
    try:
        assert reader.mode == "remote"
        assert reader.list_workflows() == [("w", "SUCCESSFUL")]  # asked the writer
        assert writer.wait(timeout=30) == 0
        assert reader.list_workflows() == [("w", "SUCCESSFUL")]  # its socket is gone: read the file
        assert reader.mode == "owner"
    finally:
        reader.close()
    assert not (root / "owner.json").exists()


def test_a_killed_owner_not_yet_reaped_is_dead(tmp_path):
    """kill -9 leaves a zombie until its parent waits for it (here: this test, on purpose
    not yet): its pid still answers, but the store must treat it as dead, take it over and
    remove its record, or its Ray leftovers are never killed."""
    root = tmp_path / "store"
    _store_with_one_workflow(root)
    writer = subprocess.Popen([sys.executable, "-c", HOLD_AS_WRITER,
                               str(root), "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "owner"
        dead = json.loads((root / "owner.json").read_text())
        os.kill(writer.pid, 9)
        while psutil.Process(writer.pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.05)
        reader = Store(root, role="reader")
        try:
            assert reader.mode == "owner"  # not "remote" to a socket nobody serves
            assert json.loads((root / "owner.json").read_text())["pid"] == os.getpid()
            assert reader.list_workflows() == [("w", "SUCCESSFUL")]
        finally:
            reader.close()
        assert not Path(dead["socket"]).exists()  # the dead owner's socket went with it
    finally:
        writer.wait(timeout=30)
    assert not (root / "owner.json").exists()


def test_a_reader_does_not_wait_for_a_writer(tmp_path):
    root = tmp_path / "store"
    writer = Store(root)
    try:
        with writer.transaction() as cur:
            cur.execute("insert into exoflow.workflows values ('w', 'SUCCESSFUL', 'r', null, null, now(), now())")
        proc = subprocess.run([sys.executable, "-c", (
            "import sys; from exoflow_kernel.store import Store; s = Store(sys.argv[1], role='reader'); "
            "print(s.mode, s.list_workflows())"), str(root)], capture_output=True, text=True, timeout=60)
        assert proc.stdout.strip() == "remote [('w', 'SUCCESSFUL')]", proc.stderr
    finally:
        writer.close()


def test_a_long_tmpdir_still_leaves_room_for_the_owner_socket(tmp_path):
    """Unix socket paths are limited to ~100 bytes: a long $TMPDIR must not break the owner."""
    long_tmp = tmp_path / ("t" * 100)
    long_tmp.mkdir()
    root = tmp_path / "store"
    writer = subprocess.Popen([sys.executable, "-c", HOLD_AS_WRITER,
                               str(root), "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "TMPDIR": str(long_tmp)})
    try:
        assert writer.stdout.readline().strip() == "owner", writer.stderr.read() if writer.poll() else ""
        proc = subprocess.run([sys.executable, "-c", (
            "import sys; from exoflow_kernel.store import Store; s = Store(sys.argv[1], role='reader'); "
            "print(s.mode, s.list_workflows())"), str(root)], capture_output=True, text=True, timeout=60)
        assert proc.stdout.strip() == "remote []", proc.stderr  # asked through the owner's socket
    finally:
        writer.kill()
        writer.wait()


FIRST_COMMIT = """
import sys
from pathlib import Path
from exoflow_kernel import commit
from exoflow_kernel.store import Store
store = Store(sys.argv[1])
tasks = [(f"t{i}", "t", "sync", True, None, [f"t{i - 1}"] if i else [], None) for i in range(50)]
commit.start_run(store, "wf", 1, {}, new=("t49", b"dag", tasks))
rows = store.query("select count(*), count(distinct upstream) from exoflow.tasks where workflow_id = 'wf'")
print(rows, sorted(m for m in ("pandas", "pyarrow") if m in sys.modules))
"""


def test_a_first_commit_of_many_rows_imports_neither_pandas_nor_pyarrow(tmp_path):
    """A process's first big commit (a resume's too) used to import pandas through
    pyarrow: 0.3-2 s. The rows must still all land, list columns included."""
    out = subprocess.run([sys.executable, "-c", FIRST_COMMIT, str(tmp_path / "store")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[(50, 50)] []", out.stdout


def test_opening_a_store_sweeps_sockets_that_killed_owners_left(tmp_path):
    """A kill -9'd owner cannot remove its socket, and its store may never be opened again."""
    writer = subprocess.Popen([sys.executable, "-c", HOLD_AS_WRITER,
                               str(tmp_path / "dead"), "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "owner"
        dead_socket = Path(json.loads((tmp_path / "dead" / "owner.json").read_text())["socket"])
        assert dead_socket.exists() and f"-{writer.pid}-" in dead_socket.name
    finally:
        writer.kill()
        writer.wait()
    live = Store(tmp_path / "other")  # another store: its opening sweeps the dead one's socket
    try:
        assert not dead_socket.exists()
        assert Path(live.owner.socket).exists()
    finally:
        live.close()
