"""``/v1/usage``: usage totals for admin keys, from the ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Self

from fastapi import APIRouter, Query
from pydantic import BaseModel

from tessera.runtime.api.deps import AdminKey, Service
from tessera.runtime.api.openapi import errors
from tessera.runtime.billing import format_amount
from tessera.runtime.errors import InvalidParameter
from tessera.runtime.usage.formats import Rfc3339Time
from tessera.runtime.usage.summary import GroupBy, UsageTotals, summarize

router = APIRouter(tags=["usage"], responses=errors(401, 403, 422, 503))


class Totals(BaseModel):
    jobs: int
    images: int
    patches: int
    # An exact decimal, as text: a float would lose digits.
    amount: str

    @classmethod
    def of(cls, totals: UsageTotals, **more: str) -> Self:
        return cls(
            jobs=totals.jobs,
            images=totals.images,
            patches=totals.patches,
            amount=format_amount(totals.amount),
            **more,
        )


class Group(Totals):
    name: str


class UsageReport(BaseModel):
    start: datetime
    end: datetime
    group_by: GroupBy
    groups: list[Group]
    total: Totals


@router.get(
    "/usage",
    response_model=UsageReport,
    summary="Usage totals over a time range, by model or by key id (admin keys only)",
)
async def get_usage(
    _admin: AdminKey,
    service: Service,
    start: Annotated[Rfc3339Time, Query(description="first moment, RFC 3339 with an offset")],
    end: Annotated[Rfc3339Time | None, Query(description="end, excluded (default: now)")] = None,
    group_by: GroupBy = GroupBy.MODEL,
) -> UsageReport:
    end = end or datetime.now(UTC)
    if end <= start:
        raise InvalidParameter("end must come after start", field="end", rule="after_start")
    groups, overall = await summarize(service.store, start, end, group_by)
    return UsageReport(
        start=start,
        end=end,
        group_by=group_by,
        groups=[
            Group(name=name, **Totals.of(totals).model_dump()) for name, totals in groups.items()
        ],
        total=Totals.of(overall),
    )
