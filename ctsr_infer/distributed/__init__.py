"""Folders and datasets on a Ray cluster (the ``ray`` extra): Ray Data streams the files to a pool of
actors, each holding one loaded :class:`~ctsr_infer.pipeline.Upscaler`.

The work per file is the folder runner's, not a copy of it: each actor runs
:func:`~ctsr_infer.batch.run_steps` with :class:`~ctsr_infer.batch.FileSteps` on the batch it is
given, so naming (:func:`~ctsr_infer.plan.plan_jobs`), skip-existing with the settings check, the
settings record, atomic writes and per-file errors are exactly those of ``ctsr upscale`` without
``--ray``, and the files written are the same bytes (given the same CPU or GPU and dtype).

Data flow:

1. The driver plans the whole run (output names are unique by construction, and checked) before
   anything starts.
2. A Ray Dataset of small rows (the index, the source path and the output paths; for a Dataset
   source also the file's encoded bytes) goes through ``map_batches`` with an actor pool
   (``ActorPoolStrategy``): GPU actors where the cluster has GPUs, CPU actors otherwise. Files are
   read and decoded inside the actors, so the object store only carries paths (or the encoded
   bytes of a Dataset), and Ray Data's streaming executor bounds what is in flight.
   An actor whose model or options are refused (a missing model, an option its family does not
   take) touches no file and returns the error; the driver raises it as it is, so a bad option is
   one usage error, as without Ray, not a failure per file.
3. Each actor returns one report row per file; the driver streams them back (progress, ``on_item``)
   and returns a :class:`~ctsr_infer.batch.BatchReport` in plan order, optionally written as JSON or
   Parquet.

Fault tolerance is Ray's: Ray Data's actor pools restart a dead actor (``max_restarts=-1``) and
retry its task up to :data:`TASK_RETRIES` times, then the run stops with every file in the report. A
retried batch triages its files again, so outputs the dead attempt finished are skipped (same
settings) and never written twice; a file being written when the actor died was never renamed into
place, so no output is ever partial (the run sweeps the hidden ``.<name>.<random>.ctsr-tmp`` files
its dead attempts left).

Modules: :mod:`.run` (``upscale_dataset``: arguments, the actor pool, the report), :mod:`.sources`
(planning folders, URIs and Datasets), :mod:`.worker` (the actor and what it is given).
"""

from .run import TASK_RETRIES, quiet_ray_logs, upscale_dataset
from .worker import TEST_EXIT_FILE

__all__ = ["TASK_RETRIES", "TEST_EXIT_FILE", "quiet_ray_logs", "upscale_dataset"]
