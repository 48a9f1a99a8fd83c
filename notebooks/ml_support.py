"""The ExoFlow paper's ML pipeline, scaled down to a CPU: ETL -> augmentation -> training epochs.

Shared by the "ML training" notebook (``notebooks/ml_training.ipynb``) and the benchmark
(``bench/ml_pipeline.py``, issue 5 workload 6). NumPy only, no GPU, no torch.

The workload (every size is a field of :class:`Sizes`; data made here from a fixed seed, so
every configuration, run and process trains on the same bytes):

* **ETL** (cheap): :func:`extract` makes one partition of a synthetic binary-classification
  set (``rows`` x ``features``, about 1 % of rows with a missing value, some outliers);
  :func:`clean` drops the broken rows, clips outliers, casts to float32. One more partition is
  the held-out test set.
* **augmentation** (expensive, like image augmentation in the paper): :func:`augment` makes
  ``copies`` noisy copies of each partition - a random "mirror" flip (the feature order
  reversed; the labelling function is symmetric, so the label stays right, as with an
  image's horizontal flip) plus a smooth jitter (Gaussian noise smoothed ``smooth`` times
  along the features, like an elastic distortion).
* **training**: a 2-layer MLP (ReLU, logistic output) trained with minibatch SGD; each
  epoch is one task that takes the previous epoch's weights: a chain ``init -> epoch_1 ->
  ... -> epoch_E``, then :func:`evaluate` on the test set.

The four configurations of the paper (:data:`CONFIGS`) differ only in checkpoint annotations
(see :func:`build`): ``NoCkpt`` (``checkpoint=False`` everywhere), ``SyncCkpt`` (``"sync"``
everywhere), ``AsyncCkpt`` (``"async"`` everywhere) and ``Selective AsyncCkpt``:

    Selective AsyncCkpt checkpoints (asynchronously, off the critical path) only what is
    expensive to recompute: the augmented partitions (seconds of CPU each, and every
    remaining epoch needs all of them) and each epoch's weights (a recovery resumes from the
    last durable epoch instead of epoch 1; the weights are a few KB, so the checkpoint costs
    nothing). The ETL outputs are cheap to make again and large to write, and once the
    augmented data is durable no recovery needs them - so they carry no checkpoint at all;
    nor do ``init`` (microseconds) and the test set (cheap ETL, needed only by ``evaluate``).
    ``evaluate``'s small result is checkpointed so that a finished workflow's answer is
    durable.

A *driver* (``python notebooks/ml_support.py --work DIR --config selective ...``, see
:func:`main`) runs one configuration on its own store, or resumes it with ``--resume``; the
notebook and the benchmark kill it with SIGKILL (its whole process tree, :func:`crash`) at an
epoch. Two environment variables, read by the epoch tasks in the Ray workers (the driver
passes them in its job's ``runtime_env``), change only *when* things happen, never what is
computed: ``ML_SIGNAL_DIR`` (each finished epoch touches ``epoch-<k>`` there: the benchmark
kills the driver as soon as the file appears) and ``ML_HOLD`` (``K:PATH``: epoch K waits while
PATH exists, so the notebook's crash lands at the same point on every run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

import exoflow_kernel as exo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "demo"))
from proctree import all_dead, kill_tree  # noqa: E402  (shared with the demos)

WORKFLOW_ID = "ml"


@dataclass(frozen=True)
class Sizes:
    """Every size of the workload. The defaults are the benchmark's (about 10-20 s a run on 2 idle cores)."""

    partitions: int = 4       # training partitions (ETL and augmentation run once per partition)
    rows: int = 8_000         # rows per partition
    features: int = 32
    copies: int = 3           # augmented copies of each row (the original is kept too)
    smooth: int = 1000        # jitter smoothing passes: the cost knob of augmentation (see bench/ml_pipeline.py)
    hidden: int = 64
    epochs: int = 10
    batch: int = 256
    lr: float = 0.1
    seed: int = 7

    @classmethod
    def small(cls) -> "Sizes":
        """The notebook's size: a run takes a second or two."""
        return cls(partitions=2, rows=3_000, copies=3, smooth=200, hidden=64, epochs=6)


# -- the workload: plain functions (the notebook's cells and the tasks below call them) --------


def _teacher(sizes: Sizes) -> tuple[np.ndarray, np.ndarray]:
    """The labelling function's weights: rows of A mirrored (A[i] == A[d-1-i]), so reversing
    the feature order (the augmentation's flip) never changes a label."""
    rng = np.random.default_rng([sizes.seed, 99])
    d, k = sizes.features, 8
    a = rng.standard_normal((d, k))
    a = (a + a[::-1]) / np.sqrt(2 * d)
    return a, rng.standard_normal(k)


def extract(p: int, sizes: Sizes) -> dict:
    """Make partition ``p`` (``p == sizes.partitions``: the test set) from its own seeded generator."""
    rng = np.random.default_rng([sizes.seed, p])
    x = rng.standard_normal((sizes.rows, sizes.features))
    a, b = _teacher(sizes)
    y = (np.tanh(x @ a) @ b > 0).astype(np.float32)
    broken = rng.random(sizes.rows) < 0.01
    x[broken, rng.integers(0, sizes.features, int(broken.sum()))] = np.nan   # missing values
    wild = rng.random(sizes.rows) < 0.005
    x[wild] *= 40                                                           # outliers
    return {"x": x, "y": y}


def clean(raw: dict) -> dict:
    """Drop rows with a missing value, clip outliers to +-4 sigma, float32."""
    keep = ~np.isnan(raw["x"]).any(axis=1)
    return {"x": np.clip(raw["x"][keep], -4, 4).astype(np.float32), "y": raw["y"][keep]}


def augment(part: dict, p: int, sizes: Sizes) -> dict:
    """The partition plus ``copies`` augmented copies (random mirror flip + smooth jitter)."""
    xs, ys = [part["x"]], [part["y"]]
    for c in range(sizes.copies):
        rng = np.random.default_rng([sizes.seed, 1000 + p, c])
        z = part["x"].copy()
        flip = rng.random(len(z)) < 0.5
        z[flip] = z[flip, ::-1]
        noise = rng.standard_normal(z.shape, dtype=np.float32)
        for _ in range(sizes.smooth):
            noise = 0.25 * np.roll(noise, 1, axis=1) + 0.5 * noise + 0.25 * np.roll(noise, -1, axis=1)
        xs.append(z + 0.3 * noise / noise.std())
        ys.append(part["y"])
    return {"x": np.concatenate(xs), "y": np.concatenate(ys)}


def init_weights(sizes: Sizes) -> dict:
    rng = np.random.default_rng([sizes.seed, 3])
    d, h = sizes.features, sizes.hidden
    return {"w1": (rng.standard_normal((d, h)) * np.sqrt(2 / d)).astype(np.float32),
            "b1": np.zeros(h, np.float32), "w2": (rng.standard_normal(h) / np.sqrt(h)).astype(np.float32),
            "b2": np.float32(0), "history": []}


def train_epoch(weights: dict, parts: list[dict], epoch: int, sizes: Sizes) -> dict:
    """One pass of minibatch SGD over every augmented partition (shuffled with a per-epoch seed)."""
    _hold(epoch)
    x = np.concatenate([q["x"] for q in parts])
    y = np.concatenate([q["y"] for q in parts])
    order = np.random.default_rng([sizes.seed, 2000 + epoch]).permutation(len(x))
    w1, b1, w2, b2 = (weights[k].copy() for k in ("w1", "b1", "w2", "b2"))
    lr, total_loss, correct = np.float32(sizes.lr), 0.0, 0
    for i in range(0, len(x), sizes.batch):
        idx = order[i:i + sizes.batch]
        xb, yb = x[idx], y[idx]
        h = xb @ w1 + b1
        a = np.maximum(h, 0)
        prob = 1 / (1 + np.exp(-(a @ w2 + b2)))
        total_loss -= float(np.sum(yb * np.log(prob + 1e-7) + (1 - yb) * np.log(1 - prob + 1e-7)))
        correct += int(np.sum((prob > 0.5) == (yb > 0.5)))
        g = (prob - yb) / len(idx)
        ga = np.outer(g, w2)
        ga[h <= 0] = 0
        w2 -= lr * (a.T @ g)
        b2 -= lr * g.sum()
        w1 -= lr * (xb.T @ ga)
        b1 -= lr * ga.sum(axis=0)
    out = {"w1": w1, "b1": b1, "w2": w2, "b2": b2,
           "history": weights["history"] + [{"epoch": epoch, "loss": round(total_loss / len(x), 4),
                                             "train_accuracy": round(correct / len(x), 4)}]}
    _signal(epoch)
    return out


def evaluate(weights: dict, test: dict) -> dict:
    """Test accuracy, the training history, and a checksum of the final weights (equal across runs)."""
    a = np.maximum(test["x"] @ weights["w1"] + weights["b1"], 0)
    accuracy = float(np.mean(((a @ weights["w2"] + weights["b2"]) > 0) == (test["y"] > 0.5)))
    checksum = float(sum(np.abs(weights[k]).sum(dtype=np.float64) for k in ("w1", "b1", "w2")))
    return {"test_accuracy": round(accuracy, 4), "epochs": len(weights["history"]),
            "history": weights["history"], "weights_checksum": round(checksum, 3)}


def _hold(epoch: int) -> None:
    """``ML_HOLD=K:PATH``: epoch K waits while PATH exists (at most 10 minutes)."""
    spec = os.environ.get("ML_HOLD", "")
    if ":" in spec:
        k, path = spec.split(":", 1)
        deadline = time.monotonic() + 600
        while int(k) == epoch and os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)


def _signal(epoch: int) -> None:
    """``ML_SIGNAL_DIR``: say that this epoch's function finished (an empty file ``epoch-<k>``)."""
    folder = os.environ.get("ML_SIGNAL_DIR")
    if folder:
        open(os.path.join(folder, f"epoch-{epoch}"), "w").close()


# -- the workflow: the four configurations as checkpoint annotations ---------------------------

# stage -> checkpoint option; stages: etl (extract/clean of training data), test (test-set ETL),
# augment, init, epoch, evaluate
CONFIGS: dict[str, dict[str, str | bool]] = {
    "NoCkpt": dict.fromkeys(("etl", "test", "augment", "init", "epoch", "evaluate"), False),
    "SyncCkpt": dict.fromkeys(("etl", "test", "augment", "init", "epoch", "evaluate"), "sync"),
    "AsyncCkpt": dict.fromkeys(("etl", "test", "augment", "init", "epoch", "evaluate"), "async"),
    "Selective AsyncCkpt": {"etl": False, "test": False, "augment": "async", "init": False, "epoch": "async",
                            "evaluate": "async"},
}
SLUGS = {"nockpt": "NoCkpt", "sync": "SyncCkpt", "async": "AsyncCkpt", "selective": "Selective AsyncCkpt"}


def config_name(name: str) -> str:
    """``selective`` / ``Selective AsyncCkpt`` -> ``Selective AsyncCkpt``."""
    return SLUGS.get(name.lower(), name)


def _epoch_task(weights: dict, epoch: int, sizes: Sizes, *parts: dict) -> dict:
    return train_epoch(weights, list(parts), epoch, sizes)


def build(config: str, sizes: Sizes):
    """The pipeline as ``exo.task`` nodes with ``config``'s checkpoint annotations.

    Task ids: ``extract_<p>``, ``clean_<p>``, ``augment_<p>`` for each partition, ``extract_test``,
    ``clean_test``, ``init``, ``epoch_1`` ... ``epoch_<E>``, ``evaluate``.
    """
    ck = CONFIGS[config_name(config)]

    def t(func, name: str, stage: str):
        return exo.task(func, name=name, checkpoint=ck[stage])

    augmented = []
    for p in range(sizes.partitions):
        raw = t(extract, f"extract_{p}", "etl").bind(p, sizes)
        part = t(clean, f"clean_{p}", "etl").bind(raw)
        augmented.append(t(augment, f"augment_{p}", "augment").bind(part, p, sizes))
    test = t(clean, "clean_test", "test").bind(t(extract, "extract_test", "test").bind(sizes.partitions, sizes))
    weights = t(init_weights, "init", "init").bind(sizes)
    for e in range(1, sizes.epochs + 1):
        weights = t(_epoch_task, f"epoch_{e}", "epoch").bind(weights, e, sizes, *augmented)
    return t(evaluate, "evaluate", "evaluate").bind(weights, test)


def timed_run(config: str, sizes: Sizes, workflow_id: str, watch: bool = False) -> tuple[float, dict, dict]:
    """Run one configuration in this process (best with Ray already up); return (seconds,
    result, when): with ``watch``, ``when["task:state"]`` is the time since the run started at
    which that state was first seen (the lineage polled every 20 ms), else ``{}``."""
    node = build(config, sizes)
    t0 = time.perf_counter()
    future = exo.run_async(node, workflow_id=workflow_id)
    when = watch_states(workflow_id, future, t0) if watch else {}
    result = future.result()
    return time.perf_counter() - t0, result, when


def epoch_states(workflow_id: str) -> dict[str, list[int]]:
    """Which epochs ended in which state after the last run (``recovered``, ``re-executed``, ...)."""
    out: dict[str, list[int]] = {}
    for rec in exo.lineage(workflow_id):
        if rec.task_id.startswith("epoch_"):
            out.setdefault(rec.state, []).append(int(rec.task_id.split("_")[1]))
    return {state: sorted(epochs) for state, epochs in sorted(out.items())}


# -- the driver process, and crashing it -------------------------------------------------------


def start_driver(work: str | os.PathLike, config: str, sizes: Sizes, *, ray_address: str | None = None,
                 resume: bool = False, hold_epoch: int | None = None, signal: bool = False,
                 progress: bool = False, warm: bool = True) -> subprocess.Popen:
    """Start ``python ml_support.py --work WORK ...`` (store in WORK/store, log in WORK/driver.log).

    ``ray_address``: join that Ray (a kill then takes down the driver alone, as when a kernel
    dies and its cluster stays); else the driver starts a local Ray of its own (2 CPUs).
    ``hold_epoch``: that epoch waits while WORK/hold exists (see :func:`release`).
    ``signal``: each finished epoch touches WORK/signal/epoch-<k>. ``progress``: the driver
    writes its task states to WORK/progress.json (see :func:`wait_for`). ``warm``: start two
    Ray workers (:func:`warm_up`) before the clock starts.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--config", config,
           "--sizes", json.dumps(asdict(sizes))]
    if ray_address:
        cmd += ["--ray-address", ray_address]
    if resume:
        cmd.append("--resume")
    if hold_epoch is not None:
        (work / "hold").touch()
        cmd += ["--hold-epoch", str(hold_epoch)]
    if signal:
        (work / "signal").mkdir(exist_ok=True)
        cmd.append("--signal")
    if progress:
        cmd.append("--progress")
    if not warm:
        cmd.append("--no-warm-up")
    env = {k: v for k, v in os.environ.items() if k not in ("EXOFLOW_STORE", "EXOFLOW_CRASH_AT", "ML_HOLD",
                                                            "ML_SIGNAL_DIR")}
    with open(work / ("resume.log" if resume else "driver.log"), "w") as log:
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=str(HERE))


def events(work: str | os.PathLike, resume: bool = False) -> list[dict]:
    """The JSON lines a driver printed (``{"event": "start"|"done", ...}``)."""
    try:
        text = (Path(work) / ("resume.log" if resume else "driver.log")).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"event"')]


def progress(work: str | os.PathLike) -> dict:
    """``{"states": {task: state}, "at": {"task:state": seconds since the run started}}``."""
    try:
        return json.loads((Path(work) / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"states": {}, "at": {}}


def wait_for(work: str | os.PathLike, proc: subprocess.Popen, wanted: dict[str, str], timeout: float = 300) -> dict:
    """Wait until the driver reports each task of ``wanted`` in that state; return its progress."""
    deadline = time.monotonic() + timeout
    while True:
        seen = progress(work)
        if all(seen["states"].get(t) == s for t, s in wanted.items()):
            return seen
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                crash(proc)
            log = (Path(work) / "driver.log").read_text()[-3000:]
            raise RuntimeError(f"the driver never reached {wanted} (exit code {proc.returncode}); its log:\n{log}")
        time.sleep(0.02)


def crash(proc: subprocess.Popen) -> list[int]:
    """kill -9 the driver and every process under it; return their pids, all dead."""
    killed = [int(n.split(":")[0]) for n in kill_tree(proc.pid)]
    proc.wait()
    assert all_dead(killed)
    return killed


def release(work: str | os.PathLike) -> None:
    """Let a held epoch go (after the crash: a worker Ray has not ended yet does not wait on)."""
    try:
        (Path(work) / "hold").unlink()
    except FileNotFoundError:
        pass


def warm_up() -> None:
    """Two Ray workers of this job up, NumPy and this module imported in them: the timed run
    then measures the pipeline, not worker start-up."""
    import ray

    @ray.remote(num_cpus=1)
    def warm() -> int:
        import ml_support  # noqa: F401
        time.sleep(0.3)
        return os.getpid()

    ray.get([warm.remote() for _ in range(2)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run (or resume) the ML pipeline as a driver process (it may be killed).")
    ap.add_argument("--work", required=True, help="folder: WORK/store, WORK/progress.json")
    ap.add_argument("--config", default="selective", help="nockpt | sync | async | selective")
    ap.add_argument("--sizes", default="{}", help="JSON of Sizes fields")
    ap.add_argument("--ray-address", default=None, help="join this Ray (default: start a local one, 2 CPUs)")
    ap.add_argument("--resume", action="store_true", help="exo.resume the workflow instead of running it")
    ap.add_argument("--hold-epoch", type=int, default=None)
    ap.add_argument("--signal", action="store_true")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--no-warm-up", action="store_true", help="do not start two workers before the clock starts")
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    sizes = replace(Sizes(), **json.loads(args.sizes))
    import ray

    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    if args.hold_epoch is not None:
        env_vars["ML_HOLD"] = f"{args.hold_epoch}:{work / 'hold'}"
    if args.signal:
        env_vars["ML_SIGNAL_DIR"] = str(work / "signal")
    if args.ray_address:
        ray.init(address=args.ray_address, log_to_driver=False, runtime_env={"env_vars": env_vars})
    else:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env_vars})
    if not args.no_warm_up:
        warm_up()
    exo.init(work / "store")

    def emit(**fields) -> None:
        print(json.dumps({"event": fields.pop("event"), **fields}), flush=True)

    emit(event="start", t=time.time(), pid=os.getpid())
    t0 = time.perf_counter()
    if args.resume:
        result = exo.resume(WORKFLOW_ID)
    else:
        future = exo.run_async(build(args.config, sizes), workflow_id=WORKFLOW_ID)
        if args.progress:
            watch_states(WORKFLOW_ID, future, t0, lambda states, when: _write_progress(work, states, when))
        result = future.result()
    seconds = time.perf_counter() - t0
    states: dict[str, int] = {}
    for rec in exo.lineage(WORKFLOW_ID):
        states[rec.state] = states.get(rec.state, 0) + 1
    emit(event="done", t=time.time(), seconds=seconds, states=states, epochs=epoch_states(WORKFLOW_ID),
         test_accuracy=result["test_accuracy"], weights_checksum=result["weights_checksum"])
    return 0


def watch_states(workflow_id: str, future, t0: float, on_change=None) -> dict[str, float]:
    """Until ``future`` is done, poll the workflow's task states every 20 ms; return when each
    ``task:state`` was first seen (seconds since ``t0``), calling ``on_change(states, when)``
    whenever they change."""
    last: dict[str, str] = {}
    when: dict[str, float] = {}
    while True:
        done = future.done()
        states = {r.task_id: r.state for r in exo.lineage(workflow_id)}
        if states != last:
            now = time.perf_counter() - t0
            for task, state in states.items():
                when.setdefault(f"{task}:{state}", round(now, 3))
            if on_change is not None:
                on_change(states, when)
            last = states
        if done:
            return when
        time.sleep(0.02)


def _write_progress(work: Path, states: dict, when: dict) -> None:
    tmp = work / "progress.json.tmp"
    tmp.write_text(json.dumps({"states": states, "at": when}))
    os.replace(tmp, work / "progress.json")


if __name__ == "__main__":
    # Run as the module ``ml_support`` (not ``__main__``), so the tasks pickle by reference and a
    # fresh process (the notebook's kernel, a resume) finds them by that name.
    import ml_support

    sys.exit(ml_support.main())
