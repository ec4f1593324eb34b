"""A valid storyboard's settings as plain values: what the commands read besides the shots.

`LoadedStoryboard.settings` holds them, made from the validated models on a cold run and from
the structure memo (see `storyboard.py`) on a warm one, so that a command that reads only
these never imports pydantic. The values are the validated ones: defaults filled in, prices
as numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kling_pipeline.plan.pricing import Rate

if TYPE_CHECKING:
    from kling_pipeline.storyboard.models import StoryboardHead


@dataclass(frozen=True)
class ProviderSettings:
    """Where requests go and how hard the tool may push (models.Provider's values)."""

    base_url: str
    api_key_env: str
    requests_per_minute: int
    concurrency: int
    prices: dict[str, Rate] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteSettings:
    """The storyboard's `remote:` (a plain string is a URL with no endpoint)."""

    url: str
    endpoint_url: str | None = None


@dataclass(frozen=True)
class BoardSettings:
    """Everything of a valid storyboard but its shots and defaults (models.StoryboardHead's)."""

    name: str
    output: str | None
    description: str | None
    provider: ProviderSettings
    vars: dict[str, Any]
    snippets: dict[str, str]
    remote: RemoteSettings | None = None

    @classmethod
    def of(cls, head: StoryboardHead) -> BoardSettings:
        provider = head.provider
        prices = {name: Rate(price.per_second, price.per_second_sound)
                  for name, price in provider.prices.items()}
        return cls(head.name, head.output, head.description,
                   ProviderSettings(provider.base_url, provider.api_key_env,
                                    provider.requests_per_minute, provider.concurrency, prices),
                   head.vars, head.snippets, _remote(head.remote))

    def to_json(self) -> dict[str, Any] | None:
        """The settings as JSON data, or None when JSON would not give them back exactly
        (a YAML date or a number key among the vars): such a storyboard is validated on every
        run, as before."""
        data = asdict(self)
        try:
            same = json.loads(json.dumps(data)) == data
        except (TypeError, ValueError, RecursionError):
            return None
        return data if same else None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BoardSettings:
        provider = dict(data["provider"])
        provider["prices"] = {name: Rate(**price) for name, price in provider["prices"].items()}
        remote = data.get("remote")
        return cls(**{**data, "provider": ProviderSettings(**provider),
                      "remote": None if remote is None else RemoteSettings(**remote)})


def _remote(value: Any) -> RemoteSettings | None:
    if value is None:
        return None
    return RemoteSettings(value.url, value.endpoint_url)
