"""The Ray engine: one Ray task per job on a cluster (or a new local instance), retried on worker loss."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence

from dreamperp.batch.jobs import Job
from dreamperp.batch.local import thread_env
from dreamperp.batch.process import JobProcessLost, count_attempts, job_outcome, run_job
from dreamperp.batch.reports import say
from dreamperp.errors import UsageError, first_line

CONNECT_TIMEOUT_S = 20.0  # reaching a Ray cluster: TCP check, then ray.init itself
RAY_MISSING = "the ray engine needs Ray: pip install 'dreamperp[ray]' (or pip install ray)"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """UsageError unless a TCP connection to ``host:port`` (or ``ray://host:port``) opens within ``timeout``."""
    if address == "auto":
        return
    hostport = address[len("ray://") :] if address.startswith("ray://") else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address '{address}': use auto, HOST:PORT (e.g. 10.0.0.1:6379) or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, socket.timeout) else (err.strerror or first_line(err))
        raise UsageError(
            f"cannot reach the Ray cluster at {address}: {reason} (start it with 'ray start --head' on that machine, or check the address and port)"
        ) from None


class RayEngine:
    """One Ray task per job (``num_gpus=--gpus-per-run``, ``num_cpus=--cpus-per-run``), retried on worker or node loss."""

    def __init__(self, batch: Any, ray: Any):
        self.batch = batch
        self.ray = ray

    @staticmethod
    def connect(address: Optional[str]) -> Any:
        """ray.init: the cluster at ``address``, or a new local instance; UsageError within a bounded time.
        Ray's own console output (C++ retry warnings, a line per second while it waits) goes to a temp
        file meanwhile, so a failure is one line; its authentication complaint becomes a hint."""
        ray = import_ray()
        if address is not None:
            check_reachable(address)
        where = address or "a new local instance"
        done = threading.Event()
        saved = os.dup(2)

        def give_up() -> None:  # ray.init can wait on a half-open cluster for minutes
            if not done.wait(CONNECT_TIMEOUT_S * 2):
                os.write(
                    saved,
                    f"dreamperp batch: error: no answer from the Ray cluster at {where} within {CONNECT_TIMEOUT_S * 2:.0f} s\n".encode(),
                )
                os._exit(2)

        threading.Thread(target=give_up, daemon=True).start()
        import logging
        import tempfile

        with tempfile.TemporaryFile() as captured:
            sys.stderr.flush()
            os.dup2(captured.fileno(), 2)
            try:
                kwargs: Dict[str, Any] = {
                    "log_to_driver": False,
                    "logging_level": logging.WARNING,
                    "configure_logging": True,
                }
                if address is None:
                    kwargs["include_dashboard"] = False
                ray.init(address=address or "local", **kwargs)  # "local": a new instance, never someone's running one
            except Exception as err:  # ConnectionError, RuntimeError, ValueError: Ray's own, all one line here
                chain, cause = [], err
                while cause is not None:
                    chain.append(str(cause))
                    cause = cause.__cause__ or cause.__context__
                captured.seek(0)
                text = " ".join(chain) + captured.read().decode(errors="replace")
                hint = ""
                if "InvalidAuthToken" in text or "AuthenticationError" in text:
                    hint = (
                        " (the cluster uses token authentication: set RAY_AUTH_MODE=token and give this machine the cluster's "
                        "token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
                    )
                raise UsageError(f"cannot connect to the Ray cluster at {where}: {first_line(err)}{hint}") from None
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                done.set()
                os.close(saved)
        return ray

    @staticmethod
    def check_resources(ray: Any, jobs: Sequence[Job], gpus_per_run: float) -> None:
        """UsageError when GPU jobs could never be scheduled (Ray would wait for GPUs forever)."""
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if any(j.needs_gpu for j in jobs) and gpus_per_run > gpus:
            raise UsageError(
                f"the Ray cluster has {gpus:g} GPU(s), fewer than --gpus-per-run {gpus_per_run:g} "
                f"(pass --gpus-per-run 0, or device=cpu, to train on CPUs)"
            )

    def run(self, todo: List[Job]) -> None:
        ray, b, args = self.ray, self.batch, self.batch.args
        gpus = float(ray.cluster_resources().get("GPU", 0))
        per_run = args.gpus_per_run if any(j.needs_gpu for j in todo) else 0
        cpus = args.cpus_per_run or 1
        env = thread_env(cpus)
        remote = ray.remote(run_job)
        options = dict(num_cpus=cpus, max_retries=args.max_retries, retry_exceptions=[JobProcessLost])
        gpu_task, cpu_task = remote.options(num_gpus=per_run, **options), remote.options(num_gpus=0, **options)
        limit = args.parallel or len(todo)
        say(
            f"running {len(todo)} job(s) on Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs, {gpus:g} GPUs), "
            f"{per_run:g} GPU(s) and {cpus} CPU(s) per job" + (f", at most {limit} at a time" if args.parallel else "")
        )
        queue = list(todo)
        in_flight: Dict[Any, tuple[Job, float]] = {}
        seen_attempts: Dict[str, int] = {}
        cancelled = False
        while queue or in_flight:
            if b.halted:
                queue.clear()
            if b.stop.signum is not None and not cancelled:
                queue.clear()
                for ref in list(in_flight):
                    ray.cancel(ref)  # KeyboardInterrupt in the task: its job process saves and stops
                cancelled = True
            while queue and len(in_flight) < limit and b.stop.signum is None:
                job = queue.pop(0)
                fn = gpu_task if job.needs_gpu else cpu_task
                in_flight[fn.remote(asdict(job), b.batch_id, env)] = (job, time.monotonic())
            for job, _ in in_flight.values():  # start lines from the attempts each task records
                n = count_attempts(job, b.batch_id)
                if n > seen_attempts.get(job.name, 0):
                    seen_attempts[job.name] = n
                    b.progress.started(job, n)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            for ref in ready:
                job, t0 = in_flight.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as err:  # retries used up, cancelled, or the node is gone
                    cause = getattr(err, "cause", None)
                    message = first_line(cause) if isinstance(cause, JobProcessLost) else first_line(err)
                    attempts = count_attempts(job, b.batch_id)
                    rc = 130 if b.stop.signum is not None else 1
                    rec = job_outcome(
                        job, rc, f"{message} (after {attempts} attempt(s))", attempts, time.monotonic() - t0
                    )
                b.record(job, rec)
                b.progress.finished(job, rec)
