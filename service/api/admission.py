"""Admission control: at most `limit` analyses in flight per worker; past that, 503 + Retry-After
at once instead of a growing queue (so admitted requests keep their latency under overload)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from service.errors import Overloaded


class AdmissionGate:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self.refused = 0

    @contextlib.asynccontextmanager
    async def admit(self, cost: int = 1) -> AsyncIterator[None]:
        """Hold `cost` slots for the body of the `async with`; Overloaded when they are not free."""
        if self.inflight + cost > self.limit and self.inflight > 0:
            self.refused += 1
            raise Overloaded(
                f"server busy: {self.inflight} analyses in flight (limit {self.limit}); retry shortly",
                retry_after_s=1.0,
                detail={"inflight": self.inflight, "limit": self.limit},
            )
        self.inflight += cost
        try:
            yield
        finally:
            self.inflight -= cost
