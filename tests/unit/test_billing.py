from decimal import Decimal

import pytest

from tessera.runtime.billing import format_amount, job_patches, patches_per_image, price


@pytest.mark.parametrize(
    ("width", "height", "patches"),
    [
        (1024, 1024, 4096),
        (512, 512, 1024),
        (1024, 768, 3072),
        (1536, 512, 3072),
        (16, 16, 1),
        (17, 16, 2),
        (1000, 600, 63 * 38),
        (1, 1, 1),
        (14142, 14142, 884 * 884),
    ],
)
def test_patches_are_covering_16px_tiles(width: int, height: int, patches: int) -> None:
    assert patches_per_image(width, height) == patches


def test_job_patches_sum_over_images() -> None:
    assert job_patches(1024, 768, 3) == 3 * 3072


def test_price_is_exact_decimal() -> None:
    assert price(4096, Decimal("0.00000079")) == Decimal("0.00323584")
    # 28 significant digits: the default context would round the product to 28 as well.
    assert price(4096, Decimal("0.1234567890123456789012345678")) == Decimal(
        "505.6790077945679007794567897088"
    )
    assert format_amount(Decimal("0.00000079")) == "0.00000079"
    assert format_amount(Decimal("7.9E-7") * 1_000_000) == "0.79000000"
