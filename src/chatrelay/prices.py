"""What a reply costs: prices per million tokens, and the cost of a reply's usage.

A models-file alias may name its own `price` (`price = { input = 3.0, output = 15.0 }`);
otherwise the packaged table `prices.toml` answers by the upstream model id (dated, sourced
rows, first match wins, as in catalog.py). The table is read when the app starts (`Prices.
packaged()`), not when this module is imported. A model neither knows has no price: its
replies' cost is None (unknown), never 0.

A reply's `input_tokens` counts all of its input, cached or not (events.Usage): the uncached
part is what is left after the cache reads and writes, each part billed at its own price. A
price that names no cache prices bills the cache at the input price.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from datetime import date
from fnmatch import fnmatchcase
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .models import ModelSpec

MILLION = 1_000_000
MICRO = 1_000_000  # budgets are counted in micro-dollars, as integers


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens; None cache prices: the input price."""

    input: float
    output: float
    cache_write: float | None = None
    cache_read: float | None = None

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int | None = None,
        cache_write_tokens: int | None = None,
    ) -> float:
        """The cost in dollars of a reply's usage (input counting its cached part)."""
        read = cache_read_tokens or 0
        write = cache_write_tokens or 0
        uncached = max(0, input_tokens - read - write)
        total = (
            uncached * self.input
            + write * (self.input if self.cache_write is None else self.cache_write)
            + read * (self.input if self.cache_read is None else self.cache_read)
            + output_tokens * self.output
        ) / MILLION
        return round(total, 9)  # no float dust below a nano-dollar

    def worst_case(self, input_tokens: int, max_tokens: int) -> float:
        """The most a request may cost: all of its input uncached, all of max_tokens."""
        return (input_tokens * self.input + max_tokens * self.output) / MILLION


def micro_usd(dollars: float) -> int:
    """Dollars as whole micro-dollars, rounded up (a budget never undercounts)."""
    return math.ceil(round(dollars * MICRO, 3))


@dataclass(frozen=True, slots=True)
class PriceRow:
    provider: str
    pattern: str
    price: Price
    noted: date
    source: str


class Prices:
    """The packaged table, and the lookup that puts an alias's own price first."""

    def __init__(self, rows: tuple[PriceRow, ...] = ()) -> None:
        self.rows = rows

    @classmethod
    def packaged(cls) -> Prices:
        """The table shipped with chatrelay (read once per process)."""
        return _packaged()

    @classmethod
    def parse(cls, text: str, where: str) -> Prices:
        try:
            raw = tomllib.loads(text)
            rows = tuple(_row(entry) for entry in raw.get("price", []))
        except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return cls(rows)

    def lookup(self, provider: str, model: str) -> PriceRow | None:
        """The first row of this provider whose pattern matches the upstream id."""
        if provider == "openai":
            model = model.removeprefix("openai/")
        for row in self.rows:
            if row.provider == provider and fnmatchcase(model, row.pattern):
                return row
        return None

    def of(self, spec: ModelSpec) -> Price | None:
        """An alias's price: its own, else the table's for its upstream model, else None."""
        if spec.price is not None:
            return spec.price
        if spec.provider == "mock":
            return None
        row = self.lookup(spec.provider, spec.model)
        return row.price if row is not None else None


def _row(entry: dict[str, Any]) -> PriceRow:
    def number(name: str) -> float | None:
        value = entry.get(name)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{entry.get('model')!r}: {name} must be a number >= 0")
        return float(value)

    input_price, output_price = number("input"), number("output")
    if input_price is None or output_price is None:
        raise ValueError(f"{entry.get('model')!r}: input and output prices are required")
    noted = entry["noted"]
    if not isinstance(noted, date):
        raise ValueError(f"{entry.get('model')!r}: noted must be a date")
    return PriceRow(
        provider=str(entry["provider"]),
        pattern=str(entry["model"]),
        price=Price(input_price, output_price, number("cache_write"), number("cache_read")),
        noted=noted,
        source=str(entry["source"]),
    )


@cache
def _packaged() -> Prices:
    text = resources.files("chatrelay").joinpath("prices.toml").read_text(encoding="utf-8")
    return Prices.parse(text, "chatrelay/prices.toml")
