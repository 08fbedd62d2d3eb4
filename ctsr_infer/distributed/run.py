"""``upscale_dataset``: a planned run through a Ray Data actor pool, the report rows streamed back."""

from __future__ import annotations

import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..atomic import TMP_MARK
from ..batch import BatchItem, BatchReport, Job, check_report_path
from ..errors import DeviceError, InvalidInputError, MissingDependencyError
from ..progress import ProgressCallback, emit
from ..tmap import TMap
from .sources import _for_workers, _is_uri, _plan
from .worker import _FORWARDED, _RunConfig, _UpscaleActor

__all__ = ["TASK_RETRIES", "quiet_ray_logs", "upscale_dataset"]

logger = logging.getLogger(__name__)


_MAX_BLOCKS = 4096
"""At most this many blocks for a planned run (a block is the unit Ray Data hands to an actor)."""


_RAY_LOG_LEVEL = [logging.WARNING]
"""The level of Ray's own loggers when :func:`upscale_dataset` starts Ray (:func:`quiet_ray_logs` raises it)."""


def quiet_ray_logs() -> None:
    """Keep Ray's progress bars, notices and warnings off the terminal (the CLI draws its own progress
    and summary; Ray's errors still show)."""
    ray = _import_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    _RAY_LOG_LEVEL[0] = logging.ERROR
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _import_ray() -> Any:
    """``ray`` with Ray Data, or :class:`MissingDependencyError` naming the extra."""
    try:
        import ray
        import ray.data  # Ray Data needs pyarrow and more: the `data` extra of ray
    except ImportError as exc:
        raise MissingDependencyError(
            f"running on Ray (`--ray`, `ctsr_infer.distributed`) needs Ray Data ({exc.name or 'ray'} is missing); "
            "install it with `pip install 'ctsr-infer[ray]'`."
        ) from None
    return ray


TASK_RETRIES = 3
"""Retries of a batch whose worker died (each on a restarted worker) before its files are reported failed."""


def _sweep_temporaries(items: Sequence[BatchItem], *, since: float) -> None:
    """Remove the temporary files dead attempts left: for each output of this run, whatever its
    status, ``.<output name>.<random>.ctsr-tmp`` made since the run started (a worker killed
    mid-write cannot remove its own; beside a complete output it is a second name of it, beside a
    failed one a partial file). Outputs themselves are never touched; each output folder is listed
    once; a folder the driver cannot see (not mounted here) is left alone."""
    complete: dict[Path, set[str]] = {}
    for item in items:
        for output in item.outputs:
            complete.setdefault(output.parent, set()).add(output.name)
    removed = 0
    for folder, names in complete.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if not (name.startswith(".") and name.endswith(TMP_MARK)):
                continue
            target = name[1 : -len(TMP_MARK)].rpartition(".")[0]  # .<name>.<random>.ctsr-tmp
            try:
                if target in names and entry.stat().st_mtime >= since - 1:
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
            except OSError:
                continue
    if removed:
        logger.info("removed %d temporary file(s) left by workers that died mid-write", removed)


# -- running ---------------------------------------------------------------------------------


def _pool(ray: Any, *, num_workers: int | None, concurrency: int | tuple[int, int] | None,
          num_gpus_per_worker: float | None, num_cpus_per_worker: float | None, reads: bool) -> tuple[Any, float, float]:
    """The actor pool strategy and each actor's CPUs and GPUs: GPU actors (one GPU each, one actor
    per GPU by default) where the cluster has GPUs, CPU actors otherwise (the CPUs shared out).
    ``reads``: the source is a Dataset whose read tasks need a CPU of their own, so by default the
    actors leave one CPU of the cluster free (else they would hold every CPU and the reads wait forever)."""
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    per_gpu = (1.0 if gpus else 0.0) if num_gpus_per_worker is None else float(num_gpus_per_worker)
    if per_gpu > 0 and gpus < per_gpu:
        raise InvalidInputError(f"`num_gpus_per_worker` is {per_gpu:g}, but the Ray cluster has {gpus:g} GPUs; "
                                "use 0 (CPU workers) or connect to a cluster with GPUs (--ray-address).")
    if isinstance(concurrency, tuple):
        strategy = ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
        most = concurrency[1]
    else:
        if concurrency is not None:
            size = concurrency
        elif num_workers is not None:
            size = num_workers
        elif per_gpu > 0:
            size = max(1, int(gpus // per_gpu))
        else:
            size = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
        strategy = ray.data.ActorPoolStrategy(size=size)
        most = size
    if num_cpus_per_worker is not None:
        per_cpu = float(num_cpus_per_worker)
    elif per_gpu > 0:
        per_cpu = 1.0  # the GPU computes; one core decodes and encodes
    else:
        per_cpu = float(max(1, math.floor(cpus / most)))  # the cluster's cores shared out among the actors
    if reads and num_cpus_per_worker is None and per_cpu * most > cpus - 1:
        per_cpu = max(0.0, (cpus - 1) / most)
    return strategy, per_cpu, per_gpu


def _whole(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def _check_arguments(*, batch_size: Any, num_workers: Any, concurrency: Any, num_gpus_per_worker: Any,
                     num_cpus_per_worker: Any, output: Any) -> None:
    if not _whole(batch_size):
        raise InvalidInputError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    if num_workers is not None and concurrency is not None:
        raise InvalidInputError("give `num_workers` (a fixed pool) or `concurrency` (a fixed size, or (min, max) to "
                                "autoscale), not both.")
    if num_workers is not None and not _whole(num_workers):
        raise InvalidInputError(f"`num_workers` must be an integer >= 1, got {num_workers!r}.")
    pair = isinstance(concurrency, tuple) and len(concurrency) == 2 and all(_whole(v) for v in concurrency)
    if concurrency is not None and not _whole(concurrency) and not (pair and concurrency[0] <= concurrency[1]):
        raise InvalidInputError(f"`concurrency` must be an integer >= 1 or a (min, max) pair with 1 <= min <= max, got {concurrency!r}.")
    for name, value in (("num_gpus_per_worker", num_gpus_per_worker), ("num_cpus_per_worker", num_cpus_per_worker)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf):
            raise InvalidInputError(f"`{name}` must be a number >= 0, got {value!r}.")
    if num_cpus_per_worker is not None and num_cpus_per_worker == 0 and not num_gpus_per_worker:
        raise InvalidInputError("`num_cpus_per_worker` must be > 0 for CPU workers (num_gpus_per_worker 0), got 0.")
    if _is_uri(str(output)):
        raise InvalidInputError(f"`output` {str(output)!r} must be a folder path every worker can write (local, or a shared "
                                "mount such as NFS): outputs are written atomically by a rename, which object stores lack.")



def upscale_dataset(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Any,
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    t: float | TMap | Sequence[float | TMap] | None = None,
    scale: float | None = None,
    base: str | os.PathLike[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    compile: bool = False,
    threads: int | None = None,
    recursive: bool = False,
    fmt: str | None = None,
    suffix: str = "",
    overwrite: bool = False,
    quality: int | None = None,
    png_level: int | None = None,
    keep_metadata: bool = False,
    num_workers: int | None = None,
    concurrency: int | tuple[int, int] | None = None,
    num_gpus_per_worker: float | None = None,
    num_cpus_per_worker: float | None = None,
    batch_size: int = 1,
    filesystem: Any = None,
    address: str | None = None,
    report: str | os.PathLike[str] | None = None,
    on_item: Callable[[BatchItem], None] | None = None,
    on_progress: ProgressCallback | None = None,
    **options: Any,
) -> BatchReport:
    """Upscale a folder, files, or a Ray Dataset of images on a Ray cluster, as ``ctsr upscale`` does
    on one machine: the same output names, skip-existing with the settings check, settings record,
    atomic writes and per-file failures (see :mod:`ctsr_infer.distributed`).

    Args:
        source: local files and folders (as :func:`~ctsr_infer.plan.plan_jobs` takes them); a folder or
            file on another file system, as a URI pyarrow opens (``s3://bucket/photos``, ``gs://...``,
            ``file:///...``) or a path in ``filesystem``; or a ``ray.data.Dataset`` with a ``path``
            and a ``bytes`` column (``ray.data.read_binary_files(paths, include_paths=True)``), whose
            outputs mirror the paths below their common folder (planning reads its paths: one pass
            over the dataset).
        output: the output folder; every worker must be able to write it (local on one machine, a
            shared mount on a cluster).
        model, base, device, dtype, compile, threads: as :func:`ctsr_infer.load`, in each actor (a model
            file must exist on every node; ``threads`` defaults to a CPU actor's CPUs).
        t, scale, **options: as ``Upscaler.upscale``; a list of t writes one ``_t0.50`` file per value.
        recursive, fmt, suffix, overwrite, quality, png_level, keep_metadata: as ``ctsr upscale``.
        num_workers: actors in a fixed pool; or ``concurrency``: a fixed size, or (min, max) to
            autoscale. Default: one actor per GPU (per ``num_gpus_per_worker``), else one per node.
        num_gpus_per_worker: GPUs per actor; default 1 where the cluster has GPUs, else 0 (CPU actors).
        num_cpus_per_worker: CPUs per actor; default 1 for GPU actors, else the cluster's CPUs shared
            out among the actors (for a Dataset source, one CPU is left to its read tasks).
        batch_size: files per actor call; of these, small ones of equal size share one network call
            (as ``--batch-size``; 1, the default, writes the same bytes as a folder run's default).
        filesystem: a pyarrow or fsspec file system holding ``source``.
        address: the cluster, when Ray is not initialised yet: ``auto`` (a running one),
            ``ray://host:10001``, or None (``RAY_ADDRESS``, else a local cluster started for this
            run and stopped after it).
        report: also write the report here: ``.json`` (counts and rows) or ``.parquet`` (rows).
        on_item: called on the driver with each file's :class:`BatchItem` as it finishes (any order).
        on_progress: receives ``file`` events (files done, of the total) on the driver.

    Returns:
        The :class:`~ctsr_infer.batch.BatchReport`, one item per input in plan order, with the
        model's name in ``model``.

    Raises:
        MissingDependencyError: Ray Data is not installed (the ``ray`` extra).
        InvalidInputError: a bad argument, plan, model option or worker count; raised before any
            file is read or written.
    """
    # 1. check the arguments and plan every output before anything runs
    ray = _import_ray()
    _check_arguments(batch_size=batch_size, num_workers=num_workers, concurrency=concurrency,
                     num_gpus_per_worker=num_gpus_per_worker, num_cpus_per_worker=num_cpus_per_worker, output=output)
    if report is not None:
        check_report_path(report, overwrite=overwrite)
    ts: list[float | TMap] | None
    if t is None:
        ts = None
    elif isinstance(t, (int, float, TMap)):
        ts = [t]
    else:
        ts = list(t)
    if scale is not None:
        options["scale"] = scale
    output = Path(output)
    jobs, fs, dataset = _plan(ray, source, output, filesystem=filesystem, ts=ts, recursive=recursive, fmt=fmt, suffix=suffix)
    if not jobs:
        return BatchReport()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, logging_level=_RAY_LOG_LEVEL[0])
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"at `address` {address!r}" if address else "(RAY_ADDRESS, or a new local one)"
            raise DeviceError(f"cannot start or reach a Ray cluster {where}: {exc}; give `auto` for a running "
                                    "cluster (`ray start --head`), ray://HOST:10001 for a remote one, or nothing for a local one.") from None
    items: dict[int, BatchItem] = {}
    name: str | None = None
    stopped: BaseException | None = None
    started_at = time.time()
    try:
        # 2. the actors' resources
        strategy, per_cpu, per_gpu = _pool(ray, num_workers=num_workers, concurrency=concurrency,
                                           num_gpus_per_worker=0 if device == "cpu" and num_gpus_per_worker is None else num_gpus_per_worker,
                                           num_cpus_per_worker=num_cpus_per_worker, reads=dataset is not None)
        if per_gpu == 0 and device == "auto":  # an actor holding no GPU still sees them (CUDA_VISIBLE_DEVICES is left as is)
            device = "cpu"
        plan = ({str(job.source): (i, [str(p.absolute()) for p in job.outputs]) for i, job in enumerate(jobs)}
                if dataset is not None else None)
        config = _RunConfig(
            model=None if model is None else str(model), base=None if base is None else str(base), device=device,
            dtype=dtype, compile=compile, threads=threads if threads is not None or per_gpu > 0 else max(1, int(per_cpu)),
            ts=ts, overwrite=overwrite, quality=quality, png_level=png_level, keep_metadata=keep_metadata,
            batch_size=batch_size, options=options, filesystem=fs,
            environment={variable: os.environ[variable] for variable in _FORWARDED if variable in os.environ},
        )
        # 3. stream small rows through the actor pool, and the report rows back
        if dataset is None:
            # absolute: workers do not share the driver's working directory (only a local cluster does)
            rows = [{"index": i, "source": _for_workers(job.source, fs), "outputs": [str(p.absolute()) for p in job.outputs]}
                    for i, job in enumerate(jobs)]
            stream = ray.data.from_items(rows, override_num_blocks=min(_MAX_BLOCKS, math.ceil(len(rows) / batch_size)))
        else:
            stream = dataset.select_columns(["path", "bytes"])
        # a batch whose worker dies is retried up to TASK_RETRIES times (on a restarted worker); after
        # that Ray stops the run, and the files without a result are reported failed (below): a file
        # that crashes its worker every time (a decoder segfault, an out-of-memory kill) ends the run
        # with a report instead of restarting workers forever (Ray's default)
        results = stream.map_batches(
            _UpscaleActor, fn_constructor_kwargs={"config": config, "plan": None if plan is None else ray.put(plan)},
            batch_size=batch_size, batch_format="pyarrow", compute=strategy, num_cpus=per_cpu, num_gpus=per_gpu or None,
            max_restarts=-1, max_task_retries=TASK_RETRIES,
        )
        emit(on_progress, "file", 0, len(jobs))
        try:
            for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
                _collect(batch, jobs, items, on_item, on_progress)
                name = name or _model_name(batch)
        except ray.exceptions.RayError as exc:
            stopped = exc
            logger.warning("the Ray run stopped after %d of %d files: %s", len(items), len(jobs), str(exc).splitlines()[0])
    finally:
        if started:
            ray.shutdown()
    why = (f"the Ray run stopped before this file's result came back ({type(stopped).__name__}); when a worker dies "
           f"{TASK_RETRIES + 1} times on one batch, a file of it crashes the worker or runs it out of memory: run the failed "
           "files alone to find it" if stopped is not None else "no result came back from the Ray cluster")
    for index, job in enumerate(jobs):
        if index not in items:  # outputs a dying attempt of this run completed are there, whole (atomic writes)
            made = all(_made_since(path, started_at) for path in job.outputs)
            items[index] = BatchItem(job.source, job.outputs, "ok" if made else "failed", None if made else why)
    _sweep_temporaries([items[i] for i in sorted(items)], since=started_at)  # of the outputs complete by now
    result = BatchReport(items=[items[index] for index in range(len(jobs))], model=name)
    if report is not None:
        result.write(report)
    return result


def _made_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since - 1
    except OSError:
        return False


def _model_name(batch: Any) -> str | None:
    names = batch.column("model").to_pylist()
    return names[0] if names else None


def _collect(batch: Any, jobs: list[Job], items: dict[int, BatchItem], on_item: Callable[[BatchItem], None] | None,
             on_progress: ProgressCallback | None) -> None:
    """The report rows of one result batch into ``items`` (the first report of a file stands: a
    retried batch may report again)."""
    for row in batch.to_pylist():
        if row["refused"] is not None:  # the model or the options, refused where the actors run
            raise pickle.loads(row["refused"])  # written by this run's own actors
        index = int(row["index"])
        if index in items:
            continue
        job = jobs[index]
        items[index] = BatchItem(job.source, job.outputs, row["status"], row["error"], float(row["seconds"]))
        if on_item is not None:
            on_item(items[index])
        emit(on_progress, "file", len(items), len(jobs))
