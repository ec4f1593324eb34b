"""Cost estimates: USD per second of video, from resellers' published prices.

Every figure here is an estimate (prices differ by router and change); a storyboard's
`provider.prices` overrides them by endpoint slug or by family. Those are the only names a
price may have (models.PRICE_NAMES): validation refuses any other, which would never be used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kling_pipeline.endpoints import get_endpoint
from kling_pipeline.models import PRICE_NAMES, Price
from kling_pipeline.render import ShotRequest

DEFAULT_PRICES: Mapping[str, Price] = {
    "kling-v3.0-std": Price(per_second=0.084, per_second_sound=0.126),
    "kling-v3.0-pro": Price(per_second=0.112, per_second_sound=0.168),
    "kling-v3.0-4k": Price(per_second=0.42, per_second_sound=0.63),
}
assert DEFAULT_PRICES.keys() <= PRICE_NAMES, "a built-in price names no endpoint or family"


@dataclass(frozen=True)
class PriceTable:
    """Overrides first (slug, then family), then the defaults."""

    overrides: Mapping[str, Price]

    def price_for(self, slug: str) -> Price | None:
        endpoint = get_endpoint(slug)
        family = endpoint.price_family if endpoint else None
        for table in (self.overrides, DEFAULT_PRICES):
            if slug in table:
                return table[slug]
            if family is not None and family in table:
                return table[family]
        return None

    def estimate(self, shot: ShotRequest) -> float | None:
        """Estimated USD for rendering `shot` once, or None when no price is known."""
        price = self.price_for(shot.endpoint)
        if price is None:
            return None
        rate = price.per_second
        if shot.sound and price.per_second_sound is not None:
            rate = price.per_second_sound
        return round(rate * shot.duration, 4)
