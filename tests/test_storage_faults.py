"""Storage faults on a real store with real files: damaged or missing blobs, a DuckDB
file whose last transaction was cut short (a real ``kill -9`` inside the commit, and
a torn WAL tail), a full disk and a read-only store (small tmpfs mounts: root only,
skipped with the reason otherwise).

Every test checks the same two things: the fault is reported clearly, and nothing
that was committed is lost or silently replaced (checked by real rows, counts
and bytes on disk, not by our own status table alone).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

import exoflow_kernel as exo
from conftest import ROOT, count
from exoflow_kernel import blobs
from support.payments import PaymentService
from support.trials import Trial, crash, resume_and_check

SIZE = 200_000  # bytes: well above blobs.INLINE_LIMIT, so the checkpoint is a blob file


def tick(counter_dir, name):
    with open(Path(counter_dir) / name, "a") as f:
        f.write("x\n")


@exo.task
def make_det(counter_dir):
    tick(counter_dir, "make")
    return bytes(range(256)) * (SIZE // 256)


@exo.task(deterministic=False)
def make_nondet(counter_dir):
    tick(counter_dir, "make")
    return os.urandom(SIZE)


@exo.task
def digest(data, go, counter_dir):
    tick(counter_dir, "digest")
    return hashlib.sha256(data).hexdigest()


@exo.task(effect="transactional")
def save(n):
    exo.context().write("sales", [{"id": i} for i in range(n)])
    return n


@exo.task
def blob_of(n):
    return bytes(n)


@exo.task
def size_of(b):
    return len(b)


# -- damaged blobs -----------------------------------------------------------------------


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 17)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": _truncate, "flipped-byte": _flip, "missing": Path.unlink}
# What the error (or the planner's reason) says for each kind of damage.
REASON = {"truncated": "bytes", "flipped-byte": "checksum", "missing": "missing"}


def _committed_then_stopped(store: Path, workflow_id: str, make, counter_dir: Path) -> Path:
    """Run until ``make`` committed its blob, then stop the workflow (a real cancel) while
    ``digest`` still waits for an event; return the blob file."""
    future = exo.run_async(digest.bind(make.bind(str(counter_dir)), exo.wait_for_event("go"), str(counter_dir)),
                           workflow_id=workflow_id)
    deadline = time.monotonic() + 120
    while {r.task_id: r.state for r in exo.lineage(workflow_id)}.get("make") != "committed":
        assert time.monotonic() < deadline and not future.done(), "make never committed"
        time.sleep(0.05)
    exo.cancel(workflow_id)
    with pytest.raises(exo.WorkflowCanceledError):
        future.result(timeout=120)
    exo.send_event(workflow_id, "go", True)
    blob = next((store / "blobs" / workflow_id).glob("make.*.blob"))
    assert count(counter_dir, "make") == 1 and count(counter_dir, "digest") == 0
    return blob


def _committed_rows(store_root: Path, workflow_id: str, task_id: str) -> list[tuple]:
    return exo.sql(f"select run, state, location, size, checksum from exoflow.task_log where workflow_id = "
                   f"'{workflow_id}' and task_id = '{task_id}' and state = 'committed' order by seq")


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_blob_of_a_deterministic_task_is_recomputed(store, counter_dir, damage):
    wf = f"det-{damage}"
    blob = _committed_then_stopped(store, wf, make_det.options(name="make"), counter_dir)
    DAMAGE[damage](blob)
    expected = hashlib.sha256(bytes(range(256)) * (SIZE // 256)).hexdigest()
    assert exo.resume(wf) == expected
    assert count(counter_dir, "make") == 2 and count(counter_dir, "digest") == 1
    states = {r.task_id: r.state for r in exo.lineage(wf)}
    assert states["make"] == "re-executed", states
    assert exo.status(wf) == "SUCCESSFUL"
    # The recomputed value is durable again and reads back whole.
    assert exo.output(wf, task="make") == bytes(range(256)) * (SIZE // 256)
    rows = _committed_rows(store, wf, "make")
    assert len(rows) == 2 and rows[-1][0] == 2, rows  # a new commit, in run 2


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_blob_of_a_nondeterministic_task_fails_clearly_and_replaces_nothing(store, counter_dir, damage):
    wf = f"nondet-{damage}"
    blob = _committed_then_stopped(store, wf, make_nondet.options(name="make"), counter_dir)
    DAMAGE[damage](blob)
    damaged = blob.read_bytes() if blob.exists() else None
    rows_before = _committed_rows(store, wf, "make")

    for _ in range(2):  # and again: the first refusal must not have changed anything
        with pytest.raises(exo.CheckpointCorruptedError) as info:
            exo.resume(wf)
        message = str(info.value)
        assert "'make'" in message and repr(wf) in message
        assert "nondeterministic" in message and "re-running it could silently change results" in message
        assert str(store / "blobs") in message
        assert REASON[damage] in message, message
        assert "Restore the file from a backup" in message

    assert count(counter_dir, "make") == 1, "the nondeterministic task ran again"
    assert count(counter_dir, "digest") == 0
    assert (blob.read_bytes() if blob.exists() else None) == damaged, "the damaged blob was replaced"
    assert list(blob.parent.glob("make.*.blob")) == ([blob] if damaged is not None else [])
    assert _committed_rows(store, wf, "make") == rows_before
    assert exo.status(wf) in ("CANCELED", "FAILED")
    with pytest.raises(exo.CheckpointCorruptedError):
        exo.output(wf, task="make")


# -- a DuckDB transaction cut short -----------------------------------------------------------


@pytest.fixture(scope="module")
def payments():
    service = PaymentService()
    yield service
    service.close()


def _log(trial: Trial) -> list[tuple]:
    with trial.db() as con:
        return con.execute("select task_id, run, state, location, size, checksum, inline from exoflow.task_log "
                           "where workflow_id = ? and state in ('committed', 'continued') order by seq",
                           [trial.workflow_id]).fetchall()


def _tables(trial: Trial) -> set[str]:
    with trial.db() as con:
        return {r[0] for r in con.execute("select table_name from information_schema.tables "
                                          "where table_schema = 'main'").fetchall()}


def _check_checkpoints_read_back(trial: Trial, log: list[tuple]) -> None:
    for task_id, _, _, location, size, _, inline in log:
        if inline is not None:
            blobs.loads(inline)
        elif location is not None:
            path = trial.store / "blobs" / location
            assert path.stat().st_size == size, task_id
            blobs.read_file(path)


def test_kill_inside_a_commit_leaves_a_readable_db_with_every_earlier_commit(tmp_path, payments, ray_address):
    trial = Trial(tmp_path, payments, "cut-in-commit", ray_address)
    crash(trial, crash_at="in-commit:save")  # kill -9 between the rows' INSERT and COMMIT
    log = _log(trial)  # opens: DuckDB replays its WAL up to the last whole commit
    committed = {row[0] for row in log}
    assert {"load", "load.1", "load.2", "pick"} <= committed
    assert "save" not in committed
    assert "sales" not in _tables(trial), "rows of an uncommitted transaction are visible"
    _check_checkpoints_read_back(trial, log)

    resume_and_check(trial)
    after = _log(trial)
    assert after[: len(log)] == log, "a committed checkpoint was rewritten"
    assert not {row[0] for row in after[len(log):]} & committed, "a committed task committed again"


def test_torn_wal_tail_drops_the_last_commit_whole_and_resume_redoes_it_once(tmp_path, payments, ray_address):
    """Honest report: DuckDB fsyncs its WAL on COMMIT, so a torn tail needs the disk to
    lose acknowledged bytes. If it happens, DuckDB silently drops the torn transaction
    on replay (no error): the engine cannot know that commit ever existed. What we
    can promise, and check here, is that it goes *whole* (the task's commit, its
    rows and its effect record together), everything before it is intact, and a
    resume redoes that task once: rows exactly once, one charge per key."""
    trial = Trial(tmp_path, payments, "torn-wal", ray_address)
    crash(trial, crash_at="committed:save")  # kill -9 right after save's commit
    wal = trial.store / "lineage.duckdb.wal"
    assert wal.exists(), "expected the last commits to be in the WAL after a kill -9"
    log = _log(trial)
    assert "save" in {row[0] for row in log}
    with trial.db() as con:
        assert con.execute("select count(*) from main.sales").fetchall() == [(30,)]

    with open(wal, "r+b") as f:
        f.truncate(wal.stat().st_size - 5)
    torn = _log(trial)  # still opens, no error
    assert torn == log[: len(torn)], "an earlier commit changed"
    assert "save" not in {row[0] for row in torn}, "the torn commit survived?"
    assert "sales" not in _tables(trial), "rows survived without their task's commit"
    _check_checkpoints_read_back(trial, torn)

    resume_and_check(trial)
    assert trial.counts()["save"] == 2  # its commit was lost, so it ran again: rows still once


# -- a full disk and a read-only store (size-limited tmpfs mounts) -------------------------------
#
# The workflow that hits the full disk is a single task on purpose: when a task fails while
# others are in flight, the coordinator ray.cancel()s them, and Ray 2.60 can then abort the
# whole driver process (RAY_CHECK "Tried to complete task that was not pending", a race
# between cancel and the task's reply; see ray-project/ray#54798 for its sibling), which
# would take the pytest process down with it. Reported to the engine; not what we test here.


@pytest.fixture
def small_disk(tmp_path):
    """A 5 MB tmpfs: a disk that really fills up. Needs root (mount); skipped otherwise."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({proc.stderr.strip() or proc.returncode}); "
                    "full-disk and read-only tests need root")
    yield mnt
    try:
        exo.close()
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path, leave: int) -> Path:
    st = os.statvfs(mnt)
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def _committed_baseline(mnt: Path) -> Path:
    store = mnt / "store"
    exo.init(store)
    assert exo.run(save.bind(100), workflow_id="ok") == 100
    assert exo.run(size_of.bind(blob_of.bind(300_000)), workflow_id="ok-blob") == 300_000
    return store


def _baseline_intact() -> None:
    assert exo.sql("select count(*), count(distinct id) from sales") == [(100, 100)]
    assert exo.output("ok-blob", task="blob_of") == bytes(300_000)
    assert dict(exo.list_workflows())["ok"] == "SUCCESSFUL"
    assert dict(exo.list_workflows())["ok-blob"] == "SUCCESSFUL"


def test_full_disk_fails_the_checkpoint_clearly_and_loses_nothing(small_disk):
    store = _committed_baseline(small_disk)
    filler = _fill(small_disk, leave=600_000)
    with pytest.raises(exo.ExoflowError, match="No space left on device") as info:
        exo.run(blob_of.bind(2_000_000), workflow_id="too-big")
    assert "blob_of" in str(info.value) and "too-big" in str(info.value)
    assert exo.status("too-big") == "FAILED"
    assert not list((store / "blobs" / "too-big").glob("blob_of.*.blob")), "a partial blob was committed"
    _baseline_intact()

    filler.unlink()  # room again: the same workflow resumes and finishes
    assert exo.resume("too-big") == bytes(2_000_000)
    assert exo.status("too-big") == "SUCCESSFUL"
    _baseline_intact()


def test_full_disk_error_names_the_store(small_disk):
    store = _committed_baseline(small_disk)
    _fill(small_disk, leave=600_000)
    with pytest.raises(exo.ExoflowError) as info:
        exo.run(blob_of.bind(2_000_000), workflow_id="too-big")
    assert str(store) in str(info.value)


def test_full_disk_leaves_no_partial_temp_file(small_disk):
    store = _committed_baseline(small_disk)
    _fill(small_disk, leave=600_000)
    with pytest.raises(exo.ExoflowError):
        exo.run(blob_of.bind(2_000_000), workflow_id="too-big")
    assert not list((store / "blobs").rglob("*.tmp"))


def test_full_disk_during_the_duckdb_commit_loses_nothing_committed(small_disk):
    """The blob fits, the group commit's WAL write does not: the transaction rolls back."""
    _committed_baseline(small_disk)
    filler = _fill(small_disk, leave=600_000)
    with pytest.raises(exo.StoreError) as info:
        exo.run(save.bind(100_000), workflow_id="rows-too-big")
    assert "No space left on device" in str(info.value)
    _baseline_intact()  # still readable in this process, and no partial rows
    filler.unlink()
    assert exo.resume("rows-too-big") == 100_000
    assert exo.sql("select count(*), count(distinct id) from sales") == [(100_100, 100_000)]


def test_full_disk_during_the_duckdb_commit_is_a_store_error(small_disk):
    store = _committed_baseline(small_disk)
    _fill(small_disk, leave=600_000)
    with pytest.raises(exo.StoreError) as info:
        exo.run(save.bind(100_000), workflow_id="rows-too-big")
    assert str(store) in str(info.value)


def test_read_only_store_is_refused_clearly_and_kept_intact(small_disk):
    store = _committed_baseline(small_disk)
    exo.close()
    size_before = {p: p.stat().st_size for p in store.rglob("*") if p.is_file()}
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        with pytest.raises(exo.StoreError, match="not writable") as info:
            exo.init(store)
        assert str(store) in str(info.value) and "Read-only file system" in str(info.value)
        cli = subprocess.run([sys.executable, "-m", "exoflow_kernel.cli", "--store", str(store), "status", "ok"],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert cli.returncode == 2, cli.stderr
        assert cli.stderr.startswith(f"exoflow: error: Cannot use the ExoFlow store at {store}")
        assert "Traceback" not in cli.stderr
        with duckdb.connect(str(store / "lineage.duckdb"), read_only=True) as con:
            assert con.execute("select count(*) from main.sales").fetchall() == [(100,)]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert {p: p.stat().st_size for p in store.rglob("*") if p.is_file()} == size_before
    exo.init(store)
    _baseline_intact()
