"""Usage arithmetic: an image is billed by the 16x16-pixel patches it covers.

Pure functions over integers and ``Decimal``, so a price is exact to the last digit and the
same numbers come out of the API, the metrics and the usage ledger.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from decimal import Decimal

PATCH_SIDE = 16


def patches_per_image(width: int, height: int) -> int:
    """ceil(w/16) * ceil(h/16): a partly covered tile counts as a whole one."""
    return -(-width // PATCH_SIDE) * -(-height // PATCH_SIDE)


def job_patches(width: int, height: int, num_images: int) -> int:
    return patches_per_image(width, height) * num_images


# Amounts never round: 60 significant digits hold any ledger (a trillion dollars to 1e-40),
# and a product or sum that would need more raises rather than lose a digit.
EXACT = decimal.Context(prec=60, traps=[decimal.Inexact, decimal.Rounded, decimal.InvalidOperation])


def price(patches: int, price_per_patch: Decimal) -> Decimal:
    """Exact: Python's default context keeps 28 digits, so 4096 patches at a rate of 28
    significant digits would quietly lose the last three."""
    with decimal.localcontext(EXACT):
        return patches * price_per_patch


def total(amounts: Iterable[Decimal]) -> Decimal:
    """The exact sum of ``amounts``."""
    with decimal.localcontext(EXACT):
        return sum(amounts, start=Decimal(0))


def format_amount(amount: Decimal) -> str:
    """Fixed-point text (``0.00000079``, never ``7.9E-7``), for JSON and ledgers."""
    return f"{amount:f}"
