"""Usage totals over a time range, grouped by model or by key id (``GET /v1/usage``).

Read from the ledger, not from metrics: per-key totals exist only there (no metric carries
a key), and amounts stay exact decimals.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from tessera.runtime.billing import total
from tessera.runtime.jobs.base import JobStore, UsageRecord

PAGE_SIZE = 1000


class GroupBy(enum.StrEnum):
    MODEL = "model"
    KEY_ID = "key_id"


@dataclass
class UsageTotals:
    jobs: int = 0
    images: int = 0
    patches: int = 0
    amount: Decimal = Decimal(0)

    def add(self, record: UsageRecord) -> None:
        self.jobs += 1
        self.images += record.images
        self.patches += record.patches
        self.amount = total([self.amount, record.amount])


async def summarize(
    store: JobStore, start: datetime, end: datetime, group_by: GroupBy
) -> tuple[dict[str, UsageTotals], UsageTotals]:
    """Totals per group and overall, for the records that finished in ``[start, end)``."""
    cursor = await store.usage_cursor_at(start)
    until = await store.usage_cursor_at(end)
    groups: dict[str, UsageTotals] = {}
    overall = UsageTotals()
    while True:
        page = await store.usage(cursor, until, PAGE_SIZE)
        if not page.records:
            return dict(sorted(groups.items())), overall
        for record in page.records:
            if start <= record.finished_at < end:
                name = record.model if group_by is GroupBy.MODEL else record.key_id
                groups.setdefault(name, UsageTotals()).add(record)
                overall.add(record)
        cursor = page.cursor
