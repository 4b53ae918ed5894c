"""Counting hand-offs to threads: each one is a wake-up of another thread and one back."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Callable
from typing import Any


class HopCountingLoop(asyncio.SelectorEventLoop):
    """An event loop that names each function it hands to a thread (``run_in_executor``,
    which ``asyncio.to_thread`` uses too): each is a thread hand-off and back."""

    def __init__(self) -> None:
        super().__init__()
        self.hops: Counter[str] = Counter()

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> Any:
        called = func
        if isinstance(func, functools.partial):  # asyncio.to_thread: partial(context.run, f)
            called = func.args[0] if func.func.__name__ == "run" else func.func
        self.hops[called.__qualname__] += 1
        return super().run_in_executor(executor, func, *args)
