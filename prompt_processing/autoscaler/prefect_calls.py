"""The autoscaler's Prefect API calls: one async client on an event loop of its own, used from any thread.

Why: at LSSTCam scale one decision creates up to 189 flow runs. Made one POST at a time, in the
thread that also decides for every other instrument, they held up the other instruments for as long
as the whole burst took (about the time between two visits). Each creation is mostly the Prefect
server's own CPU (BENCHMARKS.md: ~80 ms per run on PostgreSQL, one server process here), so requests in
flight together are what lets several server processes (replicas) share a burst.

Guarantees:

- Every call is made on the one loop thread, through one ``PrefectClient`` (one connection pool);
  callers in other threads block on their own call only, with ``timeout_s`` per HTTP request.
- ``create_runs`` creates a decision's runs concurrently, at most ``max_in_flight`` at a time per
  instrument, so the instruments never wait on each other's creations. Each run is retried under its
  own idempotency key (the policy of ``adapters.retry``, transient errors only): a retried POST gets
  the run it already made, never a second one, and one run's retry pauses delay no other run.
- The client makes no retries of its own (``PREFECT_CLIENT_MAX_RETRIES`` 0): the policy above is the
  only one, so a call fails within its timeout and the caller decides.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from prefect.settings.legacy import Setting

from prompt_processing.adapters.retry import OutageWatch, async_retrying
from prompt_processing.autoscaler.metrics import JobCounts, count_jobs_async
from prompt_processing.settings import RetrySettings

_START_TIMEOUT_S = 30.0


@dataclass
class Creation:
    """What ``create_runs`` did: the ids of the runs made (in key order) and the first final error."""

    run_ids: list[str] = field(default_factory=list)
    error: BaseException | None = None
    requested: int = 0

    def summary(self) -> str | None:
        """None if all were created, else ``created k of n: <error>``."""
        if self.error is None:
            return None
        return f"created {len(self.run_ids)} of {self.requested}: {type(self.error).__name__}: {self.error}"


class PrefectCalls:
    """The Prefect API calls of the autoscaler; ``start()`` before use, ``close()`` after."""

    def __init__(self, api: dict[Setting, Any], *, timeout_s: float, max_in_flight: int, retry: RetrySettings) -> None:
        self.api = api  # prefect_api.client_settings: the server's URL and auth
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.retry = retry
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="prefect-calls", daemon=True)
        self._client: PrefectClient | None = None
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._closed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and open the client on it."""
        ready: Future[None] = Future()
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(ready), self._loop)
        ready.result(timeout=_START_TIMEOUT_S)

    def close(self) -> None:
        """Close the client and stop the loop; calls still in flight fail."""
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._closed.set)
        self._thread.join(timeout=self.timeout_s + 5)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.close()

    async def _open(self, ready: Future[None]) -> None:
        """Hold the client open until ``close()``; then stop the loop."""
        try:
            with temporary_settings(self.api | {PREFECT_CLIENT_MAX_RETRIES: 0}):
                client = get_client(httpx_settings={"timeout": self.timeout_s})
            async with client:
                self._client = client
                ready.set_result(None)
                await self._closed.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
        finally:
            self._client = None
            self._loop.stop()

    # -- calls (blocking, from any thread) --------------------------------------------------------

    def deployment(self, name: str) -> tuple[UUID, str | None]:
        """The deployment's id and work pool, by ``<flow>/<deployment>`` name."""

        async def read(client: PrefectClient) -> tuple[UUID, str | None]:
            deployment = await client.read_deployment_by_name(name)
            return deployment.id, deployment.work_pool_name

        return self._call(read)

    def count_jobs(self, deployment_id: UUID) -> JobCounts:
        """The deployment's unfinished runs and, of them, those not started."""
        return self._call(lambda client: count_jobs_async(client, deployment_id))

    def set_pool_limit(self, pool: str, limit: int) -> None:
        """The work pool's concurrency limit."""
        self._call(lambda client: client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=limit)))

    def create_runs(
        self, instrument: str, deployment_id: UUID, keys: Sequence[str], *, parameters: dict[str, Any],
        tags: list[str], attempts: int, give_up: Callable[[], bool], watch: OutageWatch,
    ) -> Creation:  # fmt: skip
        """One run per idempotency key, concurrently (see the module docstring); never raises."""

        async def create_all(client: PrefectClient) -> Creation:
            slots = self._slots.setdefault(instrument, asyncio.Semaphore(self.max_in_flight))
            policy = async_retrying(self.retry, f"flow-run creation for {instrument}", attempts=attempts,
                                    give_up=give_up, watch=watch)  # fmt: skip

            async def one(key: str) -> str:
                async with slots:
                    run: FlowRun = await policy(client.create_flow_run_from_deployment, deployment_id,
                                                parameters=parameters, idempotency_key=key, tags=tags)  # fmt: skip
                return str(run.id)

            results = await asyncio.gather(*(one(k) for k in keys), return_exceptions=True)
            done = Creation(requested=len(keys))
            for result in results:
                if isinstance(result, BaseException):
                    done.error = done.error or result
                else:
                    done.run_ids.append(result)
            return done

        return self._call(create_all)

    def _call[T](self, make: Callable[[PrefectClient], Coroutine[Any, Any, T]]) -> T:
        client = self._client
        if client is None:
            raise RuntimeError("PrefectCalls.start() was not called, or it was closed")
        return asyncio.run_coroutine_threadsafe(make(client), self._loop).result()
