"""Settings per role, loaded once in ``main`` from an env file plus the environment.

Environment variables win over the env file. A bad or missing value stops the
process at start with one clear line per problem (``SettingsError``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Literal, TypeVar
from urllib.parse import SplitResult, urlsplit

import pydantic_settings
from dotenv import dotenv_values
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.env_names import env_file_problems, environment_problems
from shared.log_levels import LogLevel
from shared.tasks import ALL_TASKS
from shared.url_text import mask_credentials, sqlite_url_meant


def split_csv(value: object) -> object:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (env files and query strings); anything else unchanged."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+/?", re.IGNORECASE)  # what a browser sends as Origin


def csv_or_json_list(value: object) -> object:
    """A list setting as an operator writes it: ``a, b`` or a JSON list ``["a", "b"]``."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return split_csv(value)


# A list of strings read from one env var. pydantic-settings would parse the value as JSON only (so
# the comma lists this README documents stopped the process with its traceback); NoDecode hands the
# raw string to the validator instead.
CsvList = Annotated[list[str], NoDecode, BeforeValidator(csv_or_json_list)]


ALIAS_EXAMPLE = "Qwen/Qwen2.5-7B-Instruct=qwen2.5:7b"


def model_aliases(value: object) -> object:
    """``UPSTREAM_MODEL_ALIASES`` as an operator writes it, ``public=upstream, ...`` (or a JSON object): the name
    callers and validators ask for, and the model server's own for it. Each name on one side once, and no name on
    both: an upstream model served under two names, or a chain of them, would answer under a name nobody asked."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if isinstance(value, dict):
        pairs = [(str(k).strip(), str(v).strip()) for k, v in value.items()]
    elif isinstance(value, str):
        pairs = []
        for item in (part.strip() for part in value.split(",") if part.strip()):
            public, eq, upstream = (side.strip() for side in item.partition("="))
            if not eq or "=" in upstream:
                raise ValueError(f"{item!r} is not public=upstream (e.g. {ALIAS_EXAMPLE})")
            pairs.append((public, upstream))
    else:
        return value
    aliases: dict[str, str] = {}
    for public, upstream in pairs:
        if not public or not upstream:
            raise ValueError(f"{public}={upstream} leaves a name out (public=upstream, e.g. {ALIAS_EXAMPLE})")
        if public == "default":
            raise ValueError("'default' is no model's name: requests for it go to the first model served")
        if public in aliases or upstream in aliases.values():
            raise ValueError(f"{public}={upstream}: each public and each upstream name may be given once")
        aliases[public] = upstream
    if both := sorted(set(aliases) & set(aliases.values())):
        raise ValueError(f"{', '.join(both)} is both a public name and an upstream one")
    return aliases


# A table of model names read from one env var (``model_aliases``), not pydantic-settings' JSON alone.
ModelAliases = Annotated[dict[str, str], NoDecode, BeforeValidator(model_aliases)]


class SettingsError(Exception):
    """Raised with every bad setting, one ``NAME: what is wrong`` line each (the CLI prefixes each line
    with the command, so every line of a journal or pm2 log says on its own which process and setting)."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))


def problem_lines(command: str, error: Exception) -> str:
    """Each problem on a line of its own that names the command: ``sn1 api: API_PORT: ...``."""
    return "\n".join(f"sn1 {command}: {line.strip()}" for line in str(error).splitlines() if line.strip())


MIN_ADMIN_KEY = 16
# The characters after a repeated word that still make a key that word repeated ("adminadminadmin1")
REPEAT_TAIL = 2
# The characters a repetition must match to count as one: fewer, and a random key could (see ``repeats_itself``)
REPEAT_MATCHED = 8
MAKE_KEY = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one"
# Admin keys the README has shown in its examples: copied as they are, they open every API key to anyone.
PUBLISHED_ADMIN_KEYS = frozenset({"my-long-random-admin-key"})


def http_url(v: str) -> str:
    """A base URL the node calls: with its scheme (``localhost:8000`` started, then failed every call). The original
    subnet API's ``.env.api.example`` wrote ``VALIDATOR_API = "0.0.0.0:8094"``: such a host:port is told the URL to
    write rather than guessed (http or https is the operator's to say)."""
    if not re.match(r"^https?://[^/\s]+", v):
        shown = mask_credentials(v)
        fix = f": write http://{shown}" if re.match(r"^[^:/\s]+:\d+(/\S*)?$", v) else ""
        raise ValueError(f"{shown!r} is not an http(s) URL (http://host:port/...){fix}")
    return v


def redis_url(v: str) -> str:
    """A Redis ``STORE_URL`` whose port and database redis-py can read: it takes ``/sn1`` or ``/1l`` for
    database 0 without a word (another network's keys, or its own written into theirs), and a port that is no
    number was a traceback at the first connection."""
    parts = urlsplit(v)
    if address_cut_short(parts):
        raise ValueError(f"{mask_credentials(v)!r}: the password holds '/', '#' or '?', which end a URL's address "
                         "there: write each percent-encoded (%2F, %23, %3F)")
    try:
        parts.port  # noqa: B018 -- parsing it is the check
    except ValueError:
        raise ValueError(f"{mask_credentials(v)!r}: the port is not a number (redis://host:6379/0)") from None
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"{mask_credentials(v)!r}: the database {db!r} is not a number "
                         "(redis://host:6379/0: Redis databases are numbered)")
    return v



def repeats_itself(key: str) -> bool:
    """Whether ``key`` is a word or character repeated (``passwordpassword``, ``aaaaaaaaaaaaaaaa``), maybe with
    ``REPEAT_TAIL`` characters after (``adminadminadmin1``), or holds 2 different characters at most: what passes a
    length check and a guesser tries first. A random key is not refused: counting its different characters instead
    (8 at least) refused about one in 90 of ``openssl rand -hex 8``'s (16 hex digits), and a quarter of 16 random
    decimal ones. A repetition matches ``REPEAT_MATCHED`` characters at least, so a random key of 16 hex digits
    is one by chance about once in a billion."""
    if len(set(key)) <= 2:
        return True
    for tail in range(REPEAT_TAIL + 1):
        body = key[:len(key) - tail]
        if any(len(body) - period >= REPEAT_MATCHED and body[period:] == body[:-period]
               for period in range(1, len(body) // 2 + 1)):
            return True
    return False


def address_cut_short(parts: SplitResult) -> bool:
    """An '@' past where the URL's address ends: a '/', '#' or '?' in the password ended it early, so redis-py
    took the password's first part for the host (and an error quoting the URL showed the rest)."""
    names = [pair.partition("=")[0] for pair in parts.query.split("&")]
    return "@" not in parts.netloc and any("@" in part for part in (parts.path, parts.fragment, *names))


def ss58_addresses(values: list[str]) -> list[str]:
    """Hotkeys as SS58 addresses, each checked (its checksum too): one mistyped character in
    ``API_HOTKEYS`` made the validator refuse every organic payload, and nothing said so.

    Checked without the SDK (``shared.ss58``): a start that stops on another setting says so without loading
    it (~0.4 s of CPU), hotkeys listed or not."""
    if not values:
        return values
    from shared.ss58 import check_ss58

    for v in values:
        try:
            check_ss58(v)
        except ValueError as e:
            raise ValueError(f"{v!r} is not a hotkey's SS58 address (5...): {e}") from None
    return values


def one_credential(url_name: str, url: str | None, key_name: str, key: SecretStr | None) -> None:
    """A URL with credentials (``http://user:token@host/v1``) and a bearer key both make the
    Authorization header, and aiohttp refuses every request given both ("Cannot combine AUTHORIZATION
    header with ... credentials encoded in URL"): the miner served no model and said why only in a
    WARNING about listing them."""
    if url and key and key.get_secret_value() and re.match(r"^https?://[^/@\s]*@", url):
        raise SettingsError(f"{url_name}/{key_name}: {url_name} carries credentials (user:token@) and {key_name} "
                            "is set; the server gets one Authorization header: keep only one of them")


@contextlib.contextmanager
def setting_file(name: str) -> Iterator[None]:
    """A file a setting names that cannot be read or used: that setting's one-line start-up error
    (``DATASET_FILE: data.jsonl:3: ...``), not a traceback."""
    try:
        yield
    except (ValueError, OSError) as e:
        raise SettingsError(f"{name}: {e}") from None


# MAX_UNVERIFIED_BODY_BYTES (shared.byte_budget's ByteBudget): 8 miner bodies at their cap, or 4 validator ones.
UNVERIFIED_BODY_BYTES = 64 << 20
UNVERIFIED_HELP = ("Bytes of signed-request bodies read at once before their signature is checked (per process); "
                   "past it a 503")
# 256 MiB: a dozen requests at the 20 MiB a request's media may take (``media_urls``). The miner and the validator
# (its reference model) each fetch callers' media URLs and hold them until the model server's answer ends, as
# base64 in the JSON sent: about 1.4 times this while held, near 2.5 times for a moment as they are encoded
# (tests/integration/test_miner_media_memory.py).
MEDIA_BYTES_IN_FLIGHT = 256 << 20
MEDIA_HELP = ("Bytes of callers' media URLs fetched and held at once, for all requests (a miner's openai backend, "
              "a validator's reference model); past it the request is refused (the miner's 503 server_busy, a "
              "validator's job not scored); 0: no bound")
PRIVATE_MEDIA_HELP = ("Fetch callers' media URLs at private addresses too (127.0.0.1, 10.x, 169.254.169.254, ...): for a "
                      "network whose callers are all yours (a local network, a private test chain); any caller on a "
                      "public subnet could have this host fetch what only its network reaches")


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, env_file_encoding="utf-8")

    wallet_name: str = Field(default="validator", description="Wallet (coldkey) name")
    wallet_hotkey: str = Field(default="default", description="Hotkey name inside the wallet")
    wallet_path: str = Field(default="~/.bittensor/wallets", description="Wallet directory")
    netuid: int = Field(default=1, ge=0, le=65535)
    subtensor_network: str = Field(default="finney", description="finney, test, local or a ws(s):// URL")
    metagraph_file: str | None = Field(
        default=None, description="Read the metagraph from this JSON file instead of the chain (local network)"
    )
    metagraph_refresh_seconds: float = Field(default=60.0, gt=0)
    private_axons: bool = Field(default=False, description="The API and the validator call miners whose axon on "
                                "chain is a private address (10.x, 127.x, 169.254.x, ...): for a chain whose nodes "
                                "share a private network. Off, such a miner is never called (a WARNING names it). "
                                "A METAGRAPH_FILE's axons are all called")
    # 10 s: a client's request line and headers are one write (a few hundred bytes; a slow mobile link sends
    # them within a couple of round trips); nginx waits 60 s, which lets a flood hold six times the sockets.
    header_timeout: float = Field(default=10.0, gt=0, le=600, description="Seconds a connection has to send a "
                                  "whole request line and headers, from its opening or its next request's start")
    max_connections: int = Field(default=10_000, ge=1, description="Connections open at once per process; past it "
                                 "a new one is closed at once (lowered to fit the file descriptor limit)")
    # 1024: a miner's callers pool up to 256 connections per host and API worker (shared/miner_client.py).
    max_connections_per_ip: int = Field(default=1024, ge=1, description="Connections open at once from one client "
                                        "address (an IPv6 /64) per process; TRUSTED_PROXIES exempt")
    # 75 s: above the idle timeouts of the proxies and load balancers in front of an API (nginx's upstream
    # keepalive 60 s, AWS ALB 60 s), so they close first; aiohttp's own default, 3630 s, let a client that
    # sent one request hold its socket for an hour.
    keepalive_timeout: float = Field(default=75.0, gt=0, le=86400, description="Seconds an idle kept-alive "
                                     "connection stays open between requests")
    log_level: LogLevel = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, v: object) -> object:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("metagraph_file", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    def network_label(self) -> str:
        return f"file:{self.metagraph_file}" if self.metagraph_file else f"{self.subtensor_network}/netuid {self.netuid}"


class ApiSettings(CommonSettings):
    api_host: str = "0.0.0.0"
    api_port: int = Field(default=42170, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=256)
    validator_api: str = Field(default="http://127.0.0.1:8094", description="Base URL of the validator's API")
    validator_hotkey: str | None = Field(
        default=None, description="The validator's hotkey (receiver of /scoring); default: our own wallet's"
    )
    admin_key: SecretStr | None = Field(default=None, description="Admin key for /api_management; unset disables it")
    invalid_keys_per_minute: int = Field(default=60, ge=1, description="Wrong API keys one client address may "
                                         "send per minute (fleet-wide) before answers turn to 429")
    store_url: str = Field(default="sqlite:///./state/api.db", description="sqlite:///path or redis://host:port/db")
    store_namespace: str = Field(default="sn1", description="Key prefix in a shared Redis")
    default_k: int = Field(default=5, ge=1, le=256, description="Miners raced per chat request")
    request_timeout: float = Field(default=30.0, gt=0, le=600, description="Default per-request deadline (s)")
    max_request_timeout: float = Field(default=120.0, gt=0, le=600)
    # 4 MiB: a photo as a data URL (an image input) fits; the miners take twice that, so a body at the cap
    # plus the fields the API adds never meets a miner's 413 (which would score the miner 0).
    max_body_bytes: int = Field(default=4 << 20, ge=1024)
    miner_max_response_bytes: int = Field(
        default=2 << 20, ge=1024, description="A miner answer above this is cut and discarded (memory bound per miner)"
    )
    availability_refresh_seconds: float = Field(default=15.0, gt=0)
    availability_stale_seconds: float = Field(default=120.0, gt=0)
    # A miner failing its last requests is set aside until a probe finds it answering (api/miner_health.py)
    miner_failures_to_set_aside: int = Field(default=3, ge=0, description="Failed requests in a row that set a "
                                             "miner aside (no organic traffic until a probe answers); 0: never")
    miner_cooldown_seconds: float = Field(default=10.0, gt=0, description="First wait before a probe (doubled "
                                          "after each failed one)")
    miner_max_cooldown_seconds: float = Field(default=120.0, gt=0, description="Longest wait between probes")
    seconds_per_token: float = Field(
        default=0.05, ge=0, description="Deadline grows by this per requested token (see README)"
    )
    mixture_k: int = Field(default=3, ge=1, le=64, description="Answers gathered in a mixture's first stage")
    # The miners' own MAX_BODY_BYTES (their default): a mixture's synthesis holds every first-stage answer, and
    # over this limit every miner asked to write it refused it (413) and the caller got a 502.
    miner_max_body_bytes: int = Field(default=8 << 20, ge=1024, description="The largest request body the "
                                      "miners take: a mixture's first-stage answers are cut so its synthesis fits")
    web_retrieval_n_miners: int = Field(default=3, ge=1, le=64, description="Default n_miners for web retrieval")
    outbox_max_items: int = Field(default=10_000, ge=1, description="Scoring outbox bound (oldest dropped)")
    outbox_max_bytes: int = Field(default=256 << 20, ge=1 << 20,
                                  description="Scoring outbox bound in bytes of payload JSON (oldest dropped)")
    outbox_lease_seconds: float = Field(default=10.0, gt=0, description="Forwarder lease; a dead holder's expires")
    outbox_retry_max_seconds: float = Field(default=60.0, gt=0, description="The longest a failed delivery backs off: "
                                            "how late at most the outbox delivers again once the validator is back")
    # A day, not OpenAI's 30: what is kept is the users' prompts and answers, held by whoever runs this API.
    responses_retention_seconds: float = Field(
        default=86400, ge=0, description="How long a stored Responses API response is kept (previous_response_id); "
                                         "0 stores none")
    # 256 MiB a day: some 250 full-size (1 MiB) stored responses, far above an agent's day of turns, while one key
    # then holds about 512 MiB at worst with a day's retention (it could write some 86 GB a day unbounded).
    stored_bytes_per_key_per_day: int = Field(
        default=256 << 20, ge=0, description="Bytes one API key may write to storage (stored responses, "
                                             "conversations) per UTC day; past it nothing more is stored; 0: no limit")
    # 64: what a key holds open is its request rate times how long each lasts (Little's law); an app, an agent
    # with parallel tool calls or a chat UI holds a handful to a dozen, a batch job at 600 requests a minute of 5 s
    # answers some 50; a key past 64 is a runaway loop or one client flooding the miners (each stream holds a
    # miner's slot and API memory), and a batch key is given more (``max_concurrent_requests``).
    max_concurrent_requests_per_key: int = Field(
        default=64, ge=0, description="Requests (chat, completions, responses) one API key may have in flight at "
                                      "once, for every API process on the store; past it a 429; a key's own "
                                      "max_concurrent_requests overrides it; 0: no limit")
    concurrency_lease_seconds: float = Field(
        default=30.0, ge=1, le=3600, description="How long a slot of MAX_CONCURRENT_REQUESTS_PER_KEY outlives an "
                                                 "API process that died holding it (renewed every third of it)")
    # 30 s: what may come between a background response's answer and its record settled (the web search before
    # it, the store's writes, a slow event loop); a record pending past it was left by a process that died.
    background_grace_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="How long past its timeout a background response still pending "
                                                 "reads failed (the process answering it died)")
    max_background_responses: int = Field(
        default=256, ge=0, description="Background responses (background: true) one worker runs at once; past it a "
                                       "429; 0 serves none")
    max_background_responses_per_key: int = Field(
        default=32, ge=0, description="Of those, what one API key may have running on one worker at once (no key "
                                      "fills a worker's room); past it a 429")
    trusted_proxies: CsvList = Field(
        default_factory=list,
        description="Reverse proxies (IPs or CIDRs) whose X-Forwarded-For names the client address; empty: none")
    cors_origins: CsvList = Field(
        default_factory=lambda: ["*"],
        description="Origins a browser may call the API from: * (any), a comma list, or empty (CORS off)")

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: * or scheme://host[:port], no path "
                                 "(https://app.example.com)")
        return [o.rstrip("/") for o in v]

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        # imported for a value to check: its module loads aiohttp's server (~0.3 s of CPU), which neither
        # `sn1 keys`, the localnet's parent nor a start that stops on another setting needs
        if not v:
            return v
        from shared.client_address import parse_networks

        parse_networks(v)
        return v

    @field_validator("admin_key", mode="before")
    @classmethod
    def _empty_admin_key(cls, v: object) -> object:
        return None if v in ("", None) else v

    @field_validator("admin_key")
    @classmethod
    def _strong_admin_key(cls, v: SecretStr | None) -> SecretStr | None:
        """A key that guards every API key: long enough, one an ``admin-key`` header can carry (HTTP trims
        a value's ends, so a key ending in a space refused every admin call), not one the README
        printed as an example, which anyone can read, nor a word or character repeated (``repeats_itself``)."""
        if v is None:
            return v
        key = v.get_secret_value()
        if len(key) < MIN_ADMIN_KEY:
            raise ValueError(f"must be at least {MIN_ADMIN_KEY} characters (it manages every API key): {MAKE_KEY}")
        if key != key.strip() or not key.isprintable():
            raise ValueError("starts or ends with whitespace or holds a control character, which no admin-key "
                             "header can carry: every admin call would be refused")
        if key in PUBLISHED_ADMIN_KEYS:
            raise ValueError(f"is the README's example value, which anyone can read: {MAKE_KEY}")
        if repeats_itself(key):
            raise ValueError(f"is a word or character repeated, the first a guesser tries: {MAKE_KEY}")
        return v

    @field_validator("validator_api")
    @classmethod
    def _validator_url(cls, v: str) -> str:
        return http_url(v)

    @field_validator("validator_hotkey")
    @classmethod
    def _validator_hotkey(cls, v: str | None) -> str | None:
        return None if not v else ss58_addresses([v])[0]

    def check(self) -> None:
        if self.request_timeout > self.max_request_timeout:
            raise SettingsError(f"REQUEST_TIMEOUT: {self.request_timeout:g} s is above MAX_REQUEST_TIMEOUT "
                                f"({self.max_request_timeout:g} s), the longest deadline a caller may ask for")

    @field_validator("store_url")
    @classmethod
    def _store_scheme(cls, v: str) -> str:
        if not (v.startswith("sqlite:///") or v.startswith("redis://") or v.startswith("rediss://")):
            raise ValueError("must be sqlite:///path (one host), redis://host:port/db or rediss://... (a fleet)"
                             f"{sqlite_url_meant(v)}")
        return v if v.startswith("sqlite:///") else redis_url(v)


class ValidatorSettings(CommonSettings):
    scoring_api_host: str = "0.0.0.0"
    scoring_api_port: int = Field(default=8094, ge=1, le=65535)
    api_hotkeys: CsvList = Field(
        default_factory=list, description="Hotkeys allowed to POST /scoring (default: our own)"
    )
    max_unverified_body_bytes: int = Field(default=UNVERIFIED_BODY_BYTES, ge=1024, description=UNVERIFIED_HELP)
    state_dir: str = Field(default="./state/validator")
    scoring_inbox_file: str | None = Field(
        default=None, description="SQLite file of the organic payloads accepted and not scored yet, and of the "
                                  "payloads seen (default: <STATE_DIR>/scoring_inbox.db)")
    weights_ledger_file: str | None = Field(default=None, description="Local network: write weights here")
    availability_interval: float = Field(default=30.0, gt=0, description="Seconds between availability polls")
    availability_timeout: float = Field(default=3.0, gt=0, description="Per-miner timeout of POST /availability")
    availability_concurrency: int = Field(default=32, ge=1, description="Availability polls in flight at once")
    neuron_disable_set_weights: bool = Field(default=False, description="Compute and log weights, never set them")
    synthetic_enabled: bool = Field(default=True, description="Send synthetic tasks (false: score organic traffic only)")
    synthetic_interval: float = Field(default=20.0, gt=0, description="Seconds between synthetic task cycles")
    synthetic_sample_size: int = Field(default=8, ge=1, le=256, description="Miners sent each synthetic task")
    synthetic_timeout: float = Field(default=15.0, ge=0.5, le=600, description="Deadline of a synthetic task (s)")
    synthetic_concurrency: int = Field(default=2, ge=1, le=64, description="Synthetic cycles in flight at once")
    scoring_workers: int = Field(default=2, ge=1, le=64, description="Workers draining the scoring queue")
    media_bytes_in_flight: int = Field(default=MEDIA_BYTES_IN_FLIGHT, ge=0, description=MEDIA_HELP)
    private_media_urls: bool = Field(default=False, description=PRIVATE_MEDIA_HELP)
    scoring_queue_size: int = Field(default=10_000, ge=1, description="Bound of the scoring queue's organic lane (503 when full)")
    scoring_queue_bytes: int = Field(default=256 << 20, ge=1 << 20, description="The organic lane's bound in bytes of "
                                     "payloads held (503 past it; an empty lane takes any one batch)")
    organic_timeout: float = Field(default=30.0, gt=0, description="Deadline assumed for organic latency penalties (s)")
    organic_max_age_seconds: float = Field(
        default=3600.0, gt=0, description="An organic payload older than this (since its request) is dropped "
                                          "unscored and counted: an outbox backlog after an outage (s)")
    latency_grace: float = Field(default=0.25, ge=0, lt=1,
                                 description="First chunk within this fraction of the deadline: no latency penalty")
    score_alpha: float = Field(default=0.1, gt=0, le=1, description="EMA weight of a new reward")
    organic_share: float = Field(
        default=0.25, ge=0, le=1, description="Share of a task's score that organic answers' average holds (the rest: "
                                              "synthetic jobs'); 1 when SYNTHETIC_ENABLED is false")
    task_probabilities: dict[str, float] | None = Field(
        default=None, description='JSON {task: probability}; default {"InferenceTask": 0.5, "QuestionAnsweringTask": '
                                  '0.2, "ArithmeticTask": 0.15, "WebRetrievalTask": 0.15}')
    weights_interval: float = Field(default=600.0, gt=0, description="Seconds between weight settings")
    weights_power: float = Field(default=3.0, gt=0, le=16,
                                 description="Scores are raised to this power before normalising (sharpening)")
    max_weight_limit: float = Field(default=1.0, gt=0, le=1,
                                    description="Local network: max share of one uid (on chain: the subnet's)")
    min_allowed_weights: int = Field(default=1, ge=0, description="Local network: min non-zero weights (on chain: the subnet's)")
    reference_llm_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL of the reference model (unset: the deterministic model)")
    reference_llm_api_key: SecretStr | None = Field(default=None, description="Bearer key of the reference LLM")
    reference_llm_model: str | None = Field(default=None, description="Model name sent to the reference LLM")
    reference_llm_reproducible: bool = Field(
        default=False, description="The reference LLM reproduces answers exactly for a seed (exact-match rewards)")
    dataset_file: str | None = Field(default=None, description="JSONL of prompts / QA items replacing the generators")
    corpus_file: str | None = Field(default=None, description="JSONL {url,title,content} web corpus (miners must share it)")

    @field_validator("api_hotkeys")
    @classmethod
    def _api_hotkeys(cls, v: list[str]) -> list[str]:
        return ss58_addresses(v)

    @field_validator("reference_llm_url", "dataset_file", "corpus_file", "reference_llm_model", "scoring_inbox_file",
                     mode="before")
    @classmethod
    def _empty_optional(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("reference_llm_url")
    @classmethod
    def _reference_url(cls, v: str | None) -> str | None:
        return None if v is None else http_url(v)

    @field_validator("task_probabilities")
    @classmethod
    def _known_tasks(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        unknown = sorted(set(v) - set(ALL_TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; the tasks are {', '.join(ALL_TASKS)}")
        if any(p < 0 for p in v.values()) or not any(p > 0 for p in v.values()):
            raise ValueError("probabilities must be non-negative, and at least one positive")
        return v

    def check(self) -> None:
        one_credential("REFERENCE_LLM_URL", self.reference_llm_url, "REFERENCE_LLM_API_KEY", self.reference_llm_api_key)

    def scoring_inbox_path(self) -> Path:
        """Where accepted organic payloads wait to be scored: beside the scores unless said otherwise."""
        return Path(self.scoring_inbox_file) if self.scoring_inbox_file else Path(self.state_dir) / "scoring_inbox.db"

    def check_state_dir(self) -> None:
        """At start: the state directory must be writable (scores are saved after every job; one that
        cannot hold them failed every job, each with a traceback, while the validator looked up)."""
        if why := unwritable(Path(self.state_dir)):
            raise SettingsError(f"STATE_DIR: {self.state_dir} is not a writable directory ({why})")

    def check_weights_ledger(self) -> None:
        """At start, on the local network: the weights ledger, and the metagraph file whose incentives it moves, are
        written at every weights cycle; a directory that cannot take them was a WARNING a ``WEIGHTS_INTERVAL`` (10
        minutes) after the start, then at every cycle, and no weights were ever set."""
        if not self.weights_ledger_file or self.neuron_disable_set_weights:
            return
        for name, file in (("WEIGHTS_LEDGER_FILE", self.weights_ledger_file), ("METAGRAPH_FILE", self.metagraph_file)):
            if file and (why := unwritable(Path(file).parent)):
                raise SettingsError(f"{name}: {file} cannot be written, as the weights ledger does at every weights "
                                    f"cycle: {Path(file).parent} is not a writable directory ({why})")


def unwritable(directory: Path) -> str | None:
    """Why a file cannot be written into ``directory`` (made if missing), or None: tried, as a write is the only
    test that knows of read-only mounts, ACLs and full disks."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror or str(e)
    return None


class MinerSettings(CommonSettings):
    wallet_name: str = "miner"
    miner_host: str = "0.0.0.0"
    miner_port: int = Field(default=8091, ge=1, le=65535)
    miner_backend: Literal["deterministic", "openai"] = "deterministic"
    miner_model: str = Field(default="sn1/deterministic", description="Model name served by the deterministic backend")
    upstream_url: str | None = Field(default=None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    upstream_api_key: SecretStr | None = None
    upstream_timeout: float = Field(default=120.0, gt=0)
    upstream_models: CsvList = Field(
        default_factory=list,
        description="Upstream models to serve, in order (the first answers 'default'); empty: every chat model "
                    "its /models lists")
    upstream_extra_fields: CsvList = Field(
        default_factory=list,
        description="Request fields beyond OpenAI's sent to the model server (e.g. chat_template_kwargs); empty: "
                    "none (any caller on the network reaches them)")
    upstream_model_aliases: ModelAliases = Field(
        default_factory=dict,
        description=f"Models served under another public name, public=upstream (e.g. {ALIAS_EXAMPLE}): advertised "
                    "and answered as the public name, asked of the model server as its own")
    allowed_hotkeys: CsvList = Field(default_factory=list, description="Callers accepted even without a permit")
    max_body_bytes: int = Field(default=8 << 20, ge=1024)  # twice the API's default: what it forwards fits
    max_unverified_body_bytes: int = Field(default=UNVERIFIED_BODY_BYTES, ge=1024, description=UNVERIFIED_HELP)
    media_bytes_in_flight: int = Field(default=MEDIA_BYTES_IN_FLIGHT, ge=0, description=MEDIA_HELP)
    private_media_urls: bool = Field(default=False, description=PRIVATE_MEDIA_HELP)
    miner_profile: str = Field(default="honest", description="Behaviour profile (local network and tests)")
    # A request carries no deadline (synthetic ones look organic): the slow profile takes its requests to have
    # this one, the validator's SYNTHETIC_TIMEOUT (the local network passes it), and answers at 80 % of it.
    slow_profile_deadline: float = Field(default=15.0, gt=0, le=600)
    corpus_file: str | None = Field(
        default=None, description="JSONL {url,title,content} web corpus for web retrieval (default: built-in)"
    )

    @field_validator("allowed_hotkeys")
    @classmethod
    def _allowed_hotkeys(cls, v: list[str]) -> list[str]:
        return ss58_addresses(v)

    @field_validator("upstream_url", mode="before")
    @classmethod
    def _empty_upstream(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("upstream_url")
    @classmethod
    def _upstream_url(cls, v: str | None) -> str | None:
        return None if v is None else http_url(v)

    def check(self) -> None:
        if self.miner_backend == "openai" and not self.upstream_url:
            raise SettingsError("UPSTREAM_URL: required when MINER_BACKEND=openai")
        one_credential("UPSTREAM_URL", self.upstream_url, "UPSTREAM_API_KEY", self.upstream_api_key)


S = TypeVar("S", bound=CommonSettings)
# Every name any process reads: a name of another process in an env file or the environment is no typo.
SETTING_NAMES = frozenset(name.upper() for cls in (ApiSettings, ValidatorSettings, MinerSettings)
                          for name in cls.model_fields)
SHOWN_CHARS = 80


def problem_line(cls: type[CommonSettings], err: ErrorDetails) -> str:
    """``API_PORT: Input should be less than or equal to 65535 (got '70000')``: the variable as the operator
    wrote it, pydantic's reason without its ``Value error,`` prefix, and the value it was given, so a typo
    in it can be seen (never a secret's, and a URL's credentials are masked)."""
    loc = err["loc"]
    name = str(loc[0]).upper() if loc else "settings"
    if len(loc) > 1:
        name += f" (item {loc[1]})" if isinstance(loc[1], int) else f" ({loc[1]})"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "dict_type":
        message = 'must be a JSON object ({"name": value, ...})'
    field = cls.model_fields.get(str(loc[0])) if loc else None
    secret = field is not None and "SecretStr" in repr(field.annotation)
    value = err.get("input")
    if isinstance(value, str | int | float) and not secret:
        shown = mask_credentials(str(value))
        shown = shown if len(shown) <= SHOWN_CHARS else shown[:SHOWN_CHARS] + "..."
        if repr(shown) not in message:  # a validator that quotes the value already
            message += f" (got {shown!r})"
    return f"{name}: {message}"


@contextlib.contextmanager
def quiet_dotenv() -> Iterator[None]:
    """python-dotenv's own "could not parse statement" warning, said better by ``env_file_problems``."""
    dotenv_log = logging.getLogger("dotenv.main")
    was = dotenv_log.disabled
    dotenv_log.disabled = True
    try:
        yield
    finally:
        dotenv_log.disabled = was


def env_file_values(env_file: Path) -> dict[str, str]:
    """The env file's ``NAME=value`` entries, names upper-cased as the settings read them."""
    with quiet_dotenv():
        return {k.upper(): v or "" for k, v in dotenv_values(env_file).items()}


def misplaced_admin_key(cls: type[CommonSettings], values: dict[str, str], env_file: Path,
                        warn: Callable[[str], None]) -> None:
    """``ADMIN_KEY`` in a validator's (or miner's) env file: the subnet's original API doc put it in
    ``.env.validator``, so an operator moving here sets it there, and the API's admin routes stay off (403)
    with nothing said where it was set. The value is never shown."""
    if "admin_key" not in cls.model_fields and values.get("ADMIN_KEY"):
        warn(f"ADMIN_KEY ({env_file}) is the API's setting (.env.api), not this process's: ignored here "
             "(the original subnet API read it from .env.validator)")


def emptied_by_environment(cls: type[CommonSettings], values: dict[str, str], env_file: Path,
                           warn: Callable[[str], None]) -> None:
    """A setting the env file gives a value and the environment an empty one: the environment wins, so
    ``export ADMIN_KEY="$SN1_ADMIN_KEY"`` with that variable unset (the README's ``sn1 keys`` step) turned
    off the admin routes of an API started from the same shell, its ``.env.api`` key unread, in silence."""
    environ = {k.upper(): v for k, v in os.environ.items()}
    for name in sorted(n.upper() for n in cls.model_fields):
        if values.get(name) and environ.get(name) == "":
            warn(f"{name} is empty in the environment, which overrides its value in {env_file} (the environment "
                 f"wins): `unset {name}` to use the file's")


def load_settings(cls: type[S], env_file: str | Path | None = None, *,
                  warn: Callable[[str], None] | None = None, **overrides: object) -> S:
    """Build settings from ``env_file`` (if it exists), the environment and ``overrides``.

    Every problem is reported at once: mistyped names (``env_names``) with the bad values. ``warn`` hears
    env-file names that are no setting at all, and environment variables one edit from a setting (ignored,
    not refused: another program's ``LOGLEVEL`` is one edit from ``LOG_LEVEL``, and stopped the start).
    """
    env = str(env_file) if env_file and Path(env_file).is_file() else None
    if env_file and env is None and overrides.pop("_require_env_file", False):
        raise SettingsError(f"env file {env_file} not found")
    warn = warn or (lambda _line: None)
    for line in environment_problems(os.environ, SETTING_NAMES):  # the environment is everyone's: told, not refused
        warn(line)
    problems: list[str] = []
    if env is not None:
        try:
            problems += env_file_problems(Path(env), SETTING_NAMES, warn)
            file_values = env_file_values(Path(env))
            misplaced_admin_key(cls, file_values, Path(env), warn)
            emptied_by_environment(cls, file_values, Path(env), warn)
        except (OSError, UnicodeDecodeError) as e:  # unreadable, or not UTF-8 text: was a traceback
            raise SettingsError(f"env file {env}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        with quiet_dotenv():
            settings = cls(_env_file=env, **overrides)  # type: ignore[call-arg]
    except pydantic_settings.SettingsError as e:  # a value its source could not decode (JSON for a list)
        field = re.search(r'field "(\w+)"', str(e))
        name = field.group(1).upper() if field else "settings"
        raise SettingsError(*problems, f"{name}: not valid JSON ({e.__cause__})") from None
    except ValidationError as e:
        raise SettingsError(*problems, *(problem_line(cls, err) for err in e.errors())) from None
    if problems:
        raise SettingsError(*problems)
    check = getattr(settings, "check", None)
    if callable(check):
        check()
    return settings
