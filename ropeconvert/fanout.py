"""Evaluations fan out through one interface: `Serial` (in-process, the default) or `RayPool` (Ray actors, each
holding its own model replica) — used by the LongRoPE search, `--method auto` and validation cells.

A job is a top-level function `job(worker, *args)`; `worker.runtime(ModelRef)` gives it a loaded model (loaded once
per worker, kept while jobs ask for the same one). `pool.imap(job, argument_tuples)` yields the results **in
submission order**, whatever order the workers finish in, so a caller that checkpoints after each result (the
search, auto) writes exactly what a serial run writes; the driver keeps every RNG. A Ray worker that dies has its
jobs re-queued on a fresh actor, at most RETRIES times each; a job that raises re-raises in the driver.

Ray is an optional extra (`pip install ropeconvert[ray]`). `--workers N` starts a local Ray instance (N actors, the
CPUs split evenly, or one GPU per actor — `--gpus-per-worker` for a model that needs several); `--ray ADDRESS` joins
a running cluster (`ray start --head`), where the model path must be readable on every node.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from ropeconvert.errors import InputError, RopeConvertError

RETRIES = 3  # a job whose worker died is re-queued on a fresh actor at most this many times
KILL_HOOK = "ROPECONVERT_TEST_KILL_WORKER"  # tests: a marker path; without it, a worker's third job exits (once)
KILL_AT = 3  # mid-run: after the model load and a job or two


@dataclass(frozen=True)
class ModelRef:
    """Which model a job runs on: `kind` "hf" loads it in transformers (validators.runtime.load); "validate" opens
    it as validate does (a GGUF export in llama.cpp, with `fmt` the export's format)."""

    path: str
    kind: str = "hf"
    device: str | None = None
    original_context: int | None = None
    fmt: str = "hf"
    engine: str = "native"  # validate --engine (vllm: validators/vllm_runtime.py)
    max_len: int | None = None


class Worker:
    """What a job sees: one loaded model at a time (a job asking for another frees the first)."""

    def __init__(self, preloaded: dict[ModelRef, Any] | None = None):
        self.preloaded = dict(preloaded or {})
        self.loaded: tuple[ModelRef, Any] | None = None

    def runtime(self, ref: ModelRef):
        if ref in self.preloaded:
            return self.preloaded[ref]
        if self.loaded is not None and self.loaded[0] == ref:
            return self.loaded[1]
        self.release()
        if ref.kind == "validate":
            from ropeconvert.validators.engines import open_runtime

            rt = open_runtime(ref.path, ref.fmt, ref.device, False, ref.engine, ref.max_len)
        else:
            from ropeconvert.validators.runtime import load

            rt = load(ref.path, device=ref.device, original_context=ref.original_context)
        self.loaded = (ref, rt)
        return rt

    def release(self) -> None:
        if self.loaded is not None:
            self.loaded[1].close()
            self.loaded = None


class Serial:
    """Jobs run here, one after the other, on the models the caller already loaded."""

    workers = 1

    def __init__(self, preloaded: dict[ModelRef, Any] | None = None):
        self.worker = Worker(preloaded)

    def imap(self, job: Callable, arguments: Iterable[tuple]) -> Iterator[Any]:
        for args in arguments:
            yield job(self.worker, *args)

    def share(self, obj: Any) -> Any:
        return obj

    def describe(self) -> str:
        return "serial"

    def close(self) -> None:
        self.worker.release()


@dataclass(frozen=True)
class Workers:
    """The fan-out the user asked for (`--workers`, `--ray`, `--gpus-per-worker`)."""

    workers: int | None = None
    ray: str | None = None
    gpus_per_worker: float = 1.0

    @classmethod
    def of(cls, options) -> "Workers":
        """From any options dataclass with the three fields (Convert/Search/ValidateOptions)."""
        return cls(getattr(options, "workers", None), getattr(options, "ray", None),
                   getattr(options, "gpus_per_worker", 1.0))

    @property
    def wanted(self) -> bool:
        return self.ray is not None or (self.workers or 1) > 1

    def check(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}", "e.g. --workers 2")
        if self.gpus_per_worker <= 0:
            raise InputError(f"--gpus-per-worker must be positive, got {self.gpus_per_worker:g}")
        if self.wanted:
            try:
                import ray  # noqa: F401
            except ImportError:
                raise InputError("--workers/--ray need Ray, which is not installed",
                                 "pip install 'ropeconvert[ray]' (or drop --workers/--ray to run serially)") from None


def pool(fan: Workers | None, preloaded: dict[ModelRef, Any] | None = None, say: Callable[[str], None] = print):
    """`Serial` unless the user asked for workers; then a RayPool (Ray checked first, one line if missing)."""
    if fan is None or not fan.wanted:
        return Serial(preloaded)
    fan.check()
    return RayPool(fan, say)


class RayPool:
    """N Ray actors; jobs go to whichever is free, results come back in submission order."""

    def __init__(self, fan: Workers, say: Callable[[str], None] = print):
        import ray

        if not ray.is_initialized():
            if fan.ray is not None:
                ray.init(address=fan.ray, log_to_driver=False, logging_level="ERROR")
            else:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR")
        gpus = ray.cluster_resources().get("GPU", 0)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = fan.workers or max(1, int(gpus // fan.gpus_per_worker) if gpus else 1)
        if gpus:
            self.options = {"num_gpus": fan.gpus_per_worker, "num_cpus": 1}
            self.threads = max(1, cpus // self.workers)
        else:  # CPU threads split evenly: two actors on 2 cores get one thread each
            self.threads = max(1, cpus // self.workers)
            self.options = {"num_cpus": self.threads}
        self.kill_marker = os.environ.get(KILL_HOOK)
        self.actors = [self._actor() for _ in range(self.workers)]
        self.restarts = 0
        say(f"fan-out: {self.workers} Ray worker(s), "
            + (f"{fan.gpus_per_worker:g} GPU each" if gpus else f"{self.threads} CPU thread(s) each")
            + (f", cluster {fan.ray}" if fan.ray else ", local"))
        self.say = say

    def _actor(self):
        import ray

        return ray.remote(_RayWorker).options(**self.options).remote(self.threads, self.kill_marker)

    def share(self, obj: Any) -> Any:
        """Into Ray's object store once; a job given the reference receives the object itself."""
        import ray

        return ray.put(obj)

    def describe(self) -> str:
        return f"ray, {self.workers} workers"

    def imap(self, job: Callable, arguments: Iterable[tuple]) -> Iterator[Any]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        todo = list(enumerate(arguments))
        results: dict[int, Any] = {}
        tries = {i: 0 for i, _ in todo}
        queue = list(todo)
        running: dict[Any, tuple[int, int, tuple]] = {}  # object ref → (job index, actor slot, args)
        free = list(range(len(self.actors)))
        emitted = 0
        while emitted < len(todo):
            while queue and free:
                (i, args), slot = queue.pop(0), free.pop(0)
                running[self.actors[slot].run.remote(job, *args)] = (i, slot, args)
            done, _ = ray.wait(list(running), num_returns=1)
            i, slot, args = running.pop(done[0])
            try:
                results[i] = ray.get(done[0])
            except RayTaskError as e:  # the job raised: the same error as a serial run would (the workers stay;
                # jobs still running finish into nothing, and the next imap queues behind them)
                raise (e.cause if isinstance(e.cause, BaseException) else e) from None
            except RayActorError:
                tries[i] += 1
                if tries[i] > RETRIES:
                    raise RopeConvertError(f"a Ray worker died {tries[i]} times running job {i + 1}",
                                           "check the worker logs (memory?), or run without --workers") from None
                self.say(f"fan-out: worker {slot + 1} died; job {i + 1} re-queued on a fresh worker")
                self.actors[slot] = self._actor()
                self.restarts += 1
                queue.insert(0, (i, args))
            free.append(slot)
            while emitted in results:
                yield results.pop(emitted)
                emitted += 1

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


class _RayWorker:
    """A Ray actor: one Worker (so one model replica) for its whole life."""

    def __init__(self, threads: int, kill_marker: str | None):
        import torch

        torch.set_num_threads(threads)
        self.worker, self.kill_marker, self.jobs = Worker(), kill_marker, 0

    def run(self, job: Callable, *args) -> Any:
        self.jobs += 1
        if self.kill_marker and self.jobs == KILL_AT and not os.path.exists(self.kill_marker):  # test hook: die
            open(self.kill_marker, "w").close()  # once, mid-run (the marker tells the fresh actor not to)
            os._exit(1)
        return job(self.worker, *args)
