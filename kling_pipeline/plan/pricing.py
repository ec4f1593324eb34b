"""Cost estimates: USD per second of video, from resellers' published prices.

Every figure here is an estimate (prices differ by router and change); a storyboard's
`provider.prices` overrides them by endpoint slug or by family. Those are the only names a
price may have (models.PRICE_NAMES): validation refuses any other, which would never be used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from kling_pipeline.storyboard.endpoints import get_endpoint
from kling_pipeline.storyboard.render import ShotRequest


class PriceLike(Protocol):
    """A price: `models.Price` (a storyboard's) or `Rate` (the built-in ones)."""

    @property
    def per_second(self) -> float: ...

    @property
    def per_second_sound(self) -> float | None: ...


@dataclass(frozen=True)
class Rate:
    """US dollars per second of video, with sound when given: a plain value, so that the
    built-in prices do not import pydantic (a test keeps their names in models.PRICE_NAMES)."""

    per_second: float
    per_second_sound: float | None = None


DEFAULT_PRICES: Mapping[str, Rate] = {
    "kling-v3.0-std": Rate(per_second=0.084, per_second_sound=0.126),
    "kling-v3.0-pro": Rate(per_second=0.112, per_second_sound=0.168),
    "kling-v3.0-4k": Rate(per_second=0.42, per_second_sound=0.63),
}


@dataclass(frozen=True)
class PriceTable:
    """Overrides first (slug, then family), then the defaults."""

    overrides: Mapping[str, PriceLike]

    def price_for(self, slug: str) -> PriceLike | None:
        endpoint = get_endpoint(slug)
        family = endpoint.price_family if endpoint else None
        tables: tuple[Mapping[str, PriceLike], ...] = (self.overrides, DEFAULT_PRICES)
        for table in tables:
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
