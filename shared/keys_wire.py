"""Wire models of the key-management and usage endpoints, shared by the API and the admin client.

The API validates admin input with ``KeyParams`` and builds its answers from the
``*Out`` models; ``shared.admin_client`` parses the same models, so the two
cannot drift apart.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.store.base import KeyChanges, KeyRecord, UsageCounts, UsageReport
from shared.store.usage_models import MODELS_PER_DAY, OTHER, ModelCounts, listed

Scope = Literal["chat", "web_retrieval", "availability"]
MAX_RATE_LIMIT = 1_000_000
MAX_NAME = 100
MAX_MODELS = 64
MAX_DAILY_TOKENS = 10**12
MAX_CONCURRENT = 100_000
# A key's own daily storage budget: 1 TiB a day is past what any one key's day could need (the default is 256 MiB,
# and 0 already means "no limit"); a bigger number is a typo (a size in bits, a unit twice), told as a 400.
MAX_STORED_BYTES_PER_DAY = 1 << 40
NEVER = ("never", "none", "null")
# Each field that a null removes, with the word the admin client sends for it.
CLEARABLE = {"expires_at": "never", "daily_token_limit": "none"}
# Set back to the API's default (MAX_CONCURRENT_REQUESTS_PER_KEY, STORED_BYTES_PER_KEY_PER_DAY) by "default" or null:
# 0 is "no limit" there, so "none" (which would read as "no limit") is not one of their words.
DEFAULTABLE = {"max_concurrent_requests": "default", "max_stored_bytes_per_day": "default"}
DEFAULT_WORDS = ("default", "null")
FIRST_SECOND, LAST_SECOND = -62135596800.0, 253402300799.0  # 0001-01-01 and 9999-12-31T23:59:59, UTC


def iso(ts: float | None) -> str | None:
    """Unix seconds -> ``2025-01-31T12:00:00Z`` (what every answer shows); a time beyond what a date can
    show (a record from before expiries were bounded) is shown at the bound, never a failed listing."""
    if ts is None:
        return None
    ts = min(max(ts, FIRST_SECOND), LAST_SECOND)
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class KeyParams(BaseModel):
    """Create/modify input, from query parameters and/or a JSON body."""

    model_config = ConfigDict(extra="forbid")

    rate_limit: int | None = Field(default=None, ge=1, le=MAX_RATE_LIMIT, description="requests per minute")
    name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME)
    expires_at: datetime | None = Field(default=None, description="ISO 8601 or unix seconds; 'never' clears it")
    expires_in_days: float | None = Field(default=None, gt=0, le=36500)
    scopes: list[Scope] | None = Field(default=None, min_length=1)
    allowed_models: list[str] | None = Field(default=None, max_length=MAX_MODELS)
    daily_token_limit: int | None = Field(default=None, ge=1, le=MAX_DAILY_TOKENS,
                                          description="prompt + completion tokens per UTC day; 'none' removes it")
    max_concurrent_requests: int | None = Field(
        default=None, ge=0, le=MAX_CONCURRENT,
        description="requests in flight at once (0: no limit for this key); 'default' puts back the API's default")
    max_stored_bytes_per_day: int | None = Field(
        default=None, ge=0, le=MAX_STORED_BYTES_PER_DAY,
        description="bytes written to storage per UTC day (0: no limit for this key); 'default' puts back the API's "
                    "STORED_BYTES_PER_KEY_PER_DAY")

    @model_validator(mode="before")
    @classmethod
    def _never(cls, data: Any) -> Any:
        """``expires_at=never`` (or JSON null) removes the expiry, ``daily_token_limit=none`` (or null) the
        token limit, ``max_concurrent_requests=default`` (or null) the key's own concurrency limit,
        ``max_stored_bytes_per_day=default`` (or null) its own storage budget: each word is read as a null, and a
        field given as null is one to clear (``cleared``; a null for anything else is refused by ``_not_null``).
        No field of its own says so: a caller could have set it (``{"clear_expiry": true}`` removed an expiry)."""
        if not isinstance(data, dict):
            return data
        for name, value in list(data.items()):
            words = NEVER if name in CLEARABLE else DEFAULT_WORDS if name in DEFAULTABLE else ()
            if isinstance(value, str) and value.lower() in words:
                data = {**data, name: None}
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        """A null for a field that cannot be removed is an error, not a silent "no change", refused at the
        field so that the 400's ``param`` names it (refused for the whole body, its ``param`` was null)."""
        if value is None and info.field_name not in (*CLEARABLE, *DEFAULTABLE):
            raise ValueError(f"{info.field_name} cannot be null (leave it out to keep it as it is)")
        return value

    @field_validator("expires_at", mode="before")
    @classmethod
    def _unix_seconds(cls, v: Any) -> Any:
        """A number (or a numeric string) is unix seconds, whatever its size: pydantic takes one past 2e10 as
        milliseconds, so ``expires_at=32503680000`` (3000-01-01) set an expiry in 1971 and a modify revoked
        the key at once."""
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            return v
        try:
            seconds = float(v)
        except ValueError:
            return v  # ISO 8601
        if not math.isfinite(seconds) or not 0 <= seconds <= LAST_SECOND:
            raise ValueError("must fall between 1970 and the end of 9999 (UTC)")
        return datetime.fromtimestamp(seconds, UTC)

    @field_validator("expires_at")
    @classmethod
    def _representable(cls, v: datetime | None) -> datetime | None:
        """A date every answer and listing can show (a year past 9999 in UTC failed them all)."""
        if v is not None and not 0 <= (v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp() <= LAST_SECOND:
            raise ValueError("must fall between 1970 and the end of 9999 (UTC)")
        return v

    @field_validator("rate_limit", "daily_token_limit", "max_concurrent_requests", "max_stored_bytes_per_day",
                     mode="before")
    @classmethod
    def _no_bool_or_fraction(cls, v: Any) -> Any:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError("must be an integer")
        return v

    @field_validator("expires_in_days", mode="before")
    @classmethod
    def _no_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a number of days")
        return v

    @field_validator("allowed_models")
    @classmethod
    def _models(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not m or len(m) > 200 for m in v):
            raise ValueError("model names must be 1-200 characters")
        return v

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyParams:
        if (self.expires_at is not None) + (self.expires_in_days is not None) + self.cleared("expires_at") > 1:
            raise ValueError("give at most one of expires_at, expires_in_days")
        return self

    def expiry(self, now: float) -> float | None:
        if self.expires_in_days is not None:
            return now + self.expires_in_days * 86400
        if self.expires_at is not None:
            at = self.expires_at if self.expires_at.tzinfo else self.expires_at.replace(tzinfo=UTC)
            return at.timestamp()
        return None

    def cleared(self, name: str) -> bool:
        """``name`` (one of ``CLEARABLE`` or ``DEFAULTABLE``) was given as null, or its word for it: it is to be
        removed, or put back to the API's default."""
        return name in self.model_fields_set and getattr(self, name) is None

    def is_empty(self) -> bool:
        return not self.model_fields_set

    def changes(self, now: float) -> KeyChanges:
        return KeyChanges(
            rate_limit=self.rate_limit, name=self.name,
            scopes=tuple(self.scopes) if self.scopes is not None else None,
            allowed_models=tuple(self.allowed_models) if self.allowed_models is not None else None,
            expires_at=self.expiry(now), clear_expiry=self.cleared("expires_at"),
            daily_token_limit=self.daily_token_limit, clear_token_limit=self.cleared("daily_token_limit"),
            max_concurrent_requests=self.max_concurrent_requests,
            clear_concurrency=self.cleared("max_concurrent_requests"),
            max_stored_bytes_per_day=self.max_stored_bytes_per_day,
            clear_storage_budget=self.cleared("max_stored_bytes_per_day"),
        )


def key_settings(record: KeyRecord) -> dict[str, Any]:
    """What a key may do and until when, as the key list and a usage report show it alike."""
    return {"prefix": record.prefix, "scopes": list(record.scopes),
            "allowed_models": list(record.allowed_models) if record.allowed_models else None,
            "expires_at": iso(record.expires_at), "created_at": iso(record.created_at)}


class UsageTotalsOut(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    errors: int = 0
    rate_limited: int = 0

    @classmethod
    def of(cls, counts: UsageCounts) -> UsageTotalsOut:
        return cls(**counts.as_dict())


class UsageModelOut(BaseModel):
    """One model's part of a key's day: the requests answered with it and their tokens."""

    model: str = Field(description=f"The model the answers named; {OTHER!r}: names past the day's "
                                   f"{MODELS_PER_DAY} (and names no model may have)")
    requests: int = Field(default=0, description="Requests answered with this model (a refused one names none)")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, model: str, counts: ModelCounts) -> UsageModelOut:
        return cls(model=model, requests=counts.requests, prompt_tokens=counts.prompt_tokens,
                   completion_tokens=counts.completion_tokens, total_tokens=counts.tokens)


class UsageDayOut(UsageTotalsOut):
    date: str
    models: list[UsageModelOut] = Field(
        default_factory=list, description="The day's answered requests and tokens by model, by name, 'other' last: "
                                          "its tokens add up to the day's (a day counted before the breakdown has "
                                          "none)")

    @classmethod
    def of_day(cls, day: str, counts: UsageCounts) -> UsageDayOut:
        return cls(date=day, **counts.as_dict(), models=[UsageModelOut.of(m, c) for m, c in listed(counts.models)])


class KeyOut(BaseModel):
    id: str
    name: str | None
    prefix: str
    rate_limit: int
    scopes: list[str]
    allowed_models: list[str] | None
    expires_at: str | None
    created_at: str | None
    daily_token_limit: int | None = None
    max_concurrent_requests: int | None = Field(
        default=None, description="The key's own limit of requests in flight (0: none); null: the API's default")
    max_stored_bytes_per_day: int | None = Field(
        default=None, description="The key's own daily storage budget in bytes (0: none); null: the API's "
                                  "STORED_BYTES_PER_KEY_PER_DAY")
    last_used_at: str | None = None
    usage: UsageTotalsOut | None = None

    @classmethod
    def of(cls, record: KeyRecord, usage: UsageCounts | None = None) -> KeyOut:
        return cls(
            id=record.id, name=record.name, rate_limit=record.rate_limit, **key_settings(record),
            daily_token_limit=record.daily_token_limit, max_concurrent_requests=record.max_concurrent_requests,
            max_stored_bytes_per_day=record.max_stored_bytes_per_day,
            last_used_at=iso(record.last_used_at), usage=UsageTotalsOut.of(usage) if usage is not None else None,
        )


class CreatedKeyOut(KeyOut):
    message: str = "API key created"
    api_key: str


class LegacyKey(BaseModel):
    """A key's entry in the subnet's original API's key file (``API_KEYS_FILE``): its rate limit (its usage
    count is not carried over)."""

    model_config = ConfigDict(extra="ignore")
    rate_limit: int = Field(ge=1, le=1_000_000)


# The original's key file, as it is: ``{"<key>": {"rate_limit": N, "usage": M}, ...}``. Its keys were
# ``secrets.token_hex(16)``: 32 characters; a shorter one is refused as too easy to guess.
LEGACY_PATTERN = r"[A-Za-z0-9_-]{32,256}"  # the route's check and the API description's schema, alike
LEGACY_SECRET = re.compile(LEGACY_PATTERN)
MAX_IMPORTED_KEYS = 10_000
LegacySecret = Annotated[str, StringConstraints(pattern=f"^{LEGACY_PATTERN}$")]


class KeyImport(RootModel[dict[LegacySecret, LegacyKey]]):
    """The body's schema, for the API description (the route checks each entry itself: a refusal must not
    name a key, which is a secret)."""

    root: dict[LegacySecret, LegacyKey] = Field(max_length=MAX_IMPORTED_KEYS)


class ImportedKeysOut(BaseModel):
    message: str = "API keys imported"
    imported: int
    already_here: int = Field(description="keys of the file this store holds already: left as they are")
    data: list[KeyOut] = Field(description="the keys imported (never their secrets)")


class ModifiedKeyOut(KeyOut):
    message: str = "API key updated"  # the subnet's original API's word for it, first as there


class RotatedKeyOut(KeyOut):
    message: str = "API key rotated"
    api_key: str


MAX_KEYS_PER_PAGE = 1000


class KeyListQuery(BaseModel):
    """``GET /api_management/api-keys``: which keys, and a page of them (without ``limit``, every key that
    matches, as the list answered before it took any parameter). Keys are in the order they were made (``desc``:
    the newest first), so a key made while an admin pages through comes on a later page, not before it."""

    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(default=None, ge=1, le=MAX_KEYS_PER_PAGE,
                              description="Keys per page (absent: every key that matches)")
    after: str | None = Field(default=None, min_length=1, max_length=64,
                              description="The id of the key the page starts after: the last page's last_id")
    order: Literal["asc", "desc"] = Field(default="asc", description="asc: the oldest key first")
    name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME, description="Only keys of this name")
    scope: Scope | None = Field(default=None, description="Only keys with this scope")
    status: Literal["active", "expired"] | None = Field(
        default=None, description="Only keys that work now (active) or have passed their expiry (expired)")


class KeyListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyOut]
    first_id: str | None = Field(default=None, description="The first key's id on this page")
    last_id: str | None = Field(default=None, description="The last key's id on this page: the next page's after")
    has_more: bool = Field(default=False, description="More keys match after this page")


class DeletedKeyOut(BaseModel):
    message: str = "API key deleted"
    id: str
    deleted: bool = True


class UsageOut(BaseModel):
    object: Literal["usage"] = "usage"
    key_id: str
    name: str | None = None
    # The key's own settings, so that its holder can tell what it may do and until when without asking the
    # operator (a key's first sign of its expiry was the 401 ``expired_api_key``, of its scopes a 403).
    prefix: str | None = Field(default=None, description="The key's first characters, as the key list shows them")
    scopes: list[str] | None = Field(default=None, description="The routes' scopes this key may use")
    allowed_models: list[str] | None = Field(default=None, description="The models this key may use; null: any")
    expires_at: str | None = Field(default=None, description="When this key stops working (UTC); null: never")
    created_at: str | None = None
    rate_limit: int
    daily_token_limit: int | None = None
    tokens_remaining_today: int | None = Field(
        default=None, description="Under the daily token limit, as this process counts them (with a limit)")
    stored_bytes_today: int = Field(
        default=0, description="Bytes written to storage today (UTC): stored responses, conversations")
    stored_bytes_per_day: int | None = Field(
        default=None, description="Bytes this key may write to storage per UTC day, for the fleet (the key's own "
                                  "max_stored_bytes_per_day, else STORED_BYTES_PER_KEY_PER_DAY); null: no limit")
    max_concurrent_requests: int | None = Field(
        default=None, description="Requests this key may have in flight at once, for the fleet (the key's own limit, "
                                  "else MAX_CONCURRENT_REQUESTS_PER_KEY); null: no limit")
    requests_in_flight: int = Field(
        default=0, description="The key's counted requests in flight now, for the fleet")
    last_used_at: str | None
    totals: UsageTotalsOut
    days: list[UsageDayOut]

    @classmethod
    def of(cls, record: KeyRecord, report: UsageReport, *, today: str | None = None, stored_bytes_today: int = 0,
           stored_bytes_per_day: int | None = None, max_concurrent_requests: int | None = None,
           requests_in_flight: int = 0) -> UsageOut:
        limit = record.daily_token_limit
        used = report.days.get(today) if today is not None else None
        spent = used.tokens if used is not None else 0
        return cls(
            key_id=record.id, name=record.name, **key_settings(record), rate_limit=record.rate_limit,
            daily_token_limit=limit,
            tokens_remaining_today=max(0, limit - spent) if limit is not None else None,
            stored_bytes_today=stored_bytes_today, stored_bytes_per_day=stored_bytes_per_day,
            max_concurrent_requests=max_concurrent_requests, requests_in_flight=requests_in_flight,
            last_used_at=iso(max(filter(None, (report.last_used_at, record.last_used_at)), default=None)),
            totals=UsageTotalsOut.of(report.totals),
            days=[UsageDayOut.of_day(d, c) for d, c in report.days.items()],
        )

