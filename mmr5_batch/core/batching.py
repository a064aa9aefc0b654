"""Turn a list-in, list-out `Engine` into an `AsyncEngine` by gathering requests.

Requests submitted while the engine is busy wait and go in together as the
next call, so every window that is ready when the engine frees up (from any
query, from any of the batches an actor works on at once) shares one
`generate` call. The call runs in a worker thread: the event loop stays free
to accept windows and to hand finished batches back to Ray Data meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mmr5_batch.core.engine_protocol import Completion, Engine, EngineRequest


class BatchingEngine:
    """An `AsyncEngine` over a batch `Engine`; one `generate` call runs at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._waiting: list[tuple[EngineRequest, asyncio.Future[Completion]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def generate_async(self, request: EngineRequest) -> Completion:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Completion] = loop.create_future()
        self._waiting.append((request, future))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        # Yield once first: the queries woken by the previous call (or started
        # together) each submit their next window in this turn of the loop.
        await asyncio.sleep(0)
        while self._waiting:
            taken, self._waiting = self._waiting, []
            requests = [request for request, _ in taken]
            try:
                completions = await asyncio.to_thread(self._generate, requests)
            except BaseException as error:  # the engine broke: every caller gets the error
                for _, future in taken:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(error, Exception):
                    raise
                continue
            for (_, future), completion in zip(taken, completions):
                if not future.done():
                    future.set_result(completion)
            await asyncio.sleep(0)

    def close(self) -> None:
        """Close the batch engine underneath, where it has something to release."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

    def _generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        completions = self.engine.generate(requests)
        if len(completions) != len(requests):
            raise RuntimeError(f"engine returned {len(completions)} completions for {len(requests)} requests")
        return completions
