"""``sn1 keys create|list|modify|delete|usage``: manage API keys on a running API.

Built on ``shared.admin_client``. The API URL and admin key come from
``--api`` / ``--admin-key`` or the environment (``SN1_API_URL`` or ``SN1_API``, ``ADMIN_KEY``);
tables by default, ``--json`` for scripts. Exit codes: 0 ok, 1 the API said no,
2 bad usage or the API is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # loaded when a command runs: every `sn1 ...` builds this parser, and aiohttp costs ~0.3 s
    from shared.admin_client import AdminClient, UsageOut

DEFAULT_API = "http://127.0.0.1:42170"


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


# A key's own overrides of an API default: (its flag, its field, what it is, the flag back to the API's default, the
# setting that is the default); 0 is "no limit for this key" as the setting's own 0 is.
OVERRIDES = (
    ("--max-concurrent", "max_concurrent_requests", "requests in flight at once", "--default-concurrent",
     "MAX_CONCURRENT_REQUESTS_PER_KEY"),
    ("--stored-bytes-per-day", "max_stored_bytes_per_day", "bytes written to storage per UTC day (stored responses, "
     "conversations)", "--default-stored-bytes", "STORED_BYTES_PER_KEY_PER_DAY"),
)


def _key_fields(p: argparse.ArgumentParser, *, create: bool) -> None:
    p.add_argument("--rate-limit", type=int, required=create, help="requests per minute")
    p.add_argument("--name")
    p.add_argument("--scopes", type=_csv, help="comma-separated: chat,web_retrieval,availability (default all)")
    p.add_argument("--models", type=_csv, dest="allowed_models", help="comma-separated model allow-list")
    tokens = p.add_mutually_exclusive_group()
    tokens.add_argument("--daily-tokens", type=int, dest="daily_token_limit",
                        help="prompt + completion tokens per UTC day")
    if not create:
        tokens.add_argument("--no-daily-tokens", action="store_true", help="remove the key's daily token limit")
    for flag, field, what, back, setting in OVERRIDES:
        own = p.add_mutually_exclusive_group()
        own.add_argument(flag, type=int, dest=field, help=f"{what} (0: no limit; default: the API's {setting})")
        if not create:
            own.add_argument(back, action="store_true", dest=f"default_{field}",
                             help=f"drop the key's own {flag}: the API's {setting} applies again")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--expires-at", help="ISO 8601 time or unix seconds")
    expiry.add_argument("--expires-in-days", type=float)
    if not create:
        expiry.add_argument("--no-expiry", action="store_true", help="remove the key's expiry")


def _connection(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--api, --admin-key and --json: before the action, or after it (``sn1 keys list --json``), where
    they are SUPPRESSed when absent so the value given before the action stands."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    # SN1_API too: the README's client examples export it, and with it alone sn1 keys went to the default port
    api = os.environ.get("SN1_API_URL") or os.environ.get("SN1_API") or DEFAULT_API
    p.add_argument("--api", default=default(api),
                   help=f"API base URL (env SN1_API_URL, else SN1_API; default {DEFAULT_API})")
    p.add_argument("--admin-key", default=default(None),
                   help="admin key (env ADMIN_KEY, better: a command line is visible to every user in ps)")
    p.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of a table")


def add_keys_arguments(p: argparse.ArgumentParser) -> None:
    _connection(p, defaults=True)
    anywhere = argparse.ArgumentParser(add_help=False)
    _connection(anywhere, defaults=False)
    sub = p.add_subparsers(dest="action", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[anywhere])

    _key_fields(action("create", "create a key (its secret is printed once)"), create=True)
    listing = action("list", "list keys with usage totals (oldest first)")
    listing.add_argument("--name", help="only keys of this name")
    listing.add_argument("--scope", choices=["chat", "web_retrieval", "availability"], help="only keys with this scope")
    listing.add_argument("--status", choices=["active", "expired"], help="only keys that work now, or expired ones")
    listing.add_argument("--limit", type=int, help="keys per page (1-1000; default: every key); --json then prints "
                                                   "the page: data, first_id, last_id, has_more")
    listing.add_argument("--after", help="the page after this key id (the last page's last_id)")
    listing.add_argument("--desc", action="store_true", help="the newest key first")
    modify = action("modify", "change a key's limit, name, scopes, models or expiry")
    modify.add_argument("key", help="the key's id or secret")
    _key_fields(modify, create=False)
    action("rotate", "give a key a new secret (printed once; the old one stops working), keeping its id, settings "
                     "and usage").add_argument("key", help="the key's id or secret")
    action("delete", "delete a key").add_argument("key", help="the key's id or secret")
    action("import", "import the subnet's original API's key file (API_KEYS_FILE): its keys keep working, with "
                     "their rate limits").add_argument("file", help="the original API's JSON key file")
    usage = action("usage", "a key's usage, totals and per day")
    usage.add_argument("key", help="the key's id or secret")
    usage.add_argument("--days", type=int, default=30)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def _run(args: argparse.Namespace, admin: AdminClient) -> str:

    fields = {k: getattr(args, k, None) for k in ("rate_limit", "name", "scopes", "allowed_models", "expires_at",
                                                   "expires_in_days", "daily_token_limit",
                                                   *(field for _, field, *_ in OVERRIDES))}
    if args.action == "create":
        created = await admin.create_key(**fields)
        if args.json:
            return created.model_dump_json(indent=2)
        return (f"API key created (shown once, store it now):\n  {created.api_key}\n\n"
                + table([_key_row(created)], KEY_HEADERS))
    if args.action == "list":
        return await _list(args, admin)
    if args.action == "modify":
        key = await admin.modify_key(args.key, **_changes(args, fields))
        return key.model_dump_json(indent=2) if args.json else table([_key_row(key)], KEY_HEADERS)
    if args.action == "rotate":
        rotated = await admin.rotate_key(args.key)
        if args.json:
            return rotated.model_dump_json(indent=2)
        return (f"API key rotated (the new secret, shown once; the old one no longer works):\n  {rotated.api_key}\n\n"
                + table([_key_row(rotated)], KEY_HEADERS))
    if args.action == "import":
        done = await admin.import_keys(_key_file(args.file))
        if args.json:
            return done.model_dump_json(indent=2)
        return (imported_line(done.imported, done.already_here)
                + ("\n\n" + table([_key_row(k) for k in done.data], KEY_HEADERS) if done.data else ""))
    if args.action == "delete":
        deleted = await admin.delete_key(args.key)
        return deleted.model_dump_json(indent=2) if args.json else f"deleted key {deleted.id}"
    report = await admin.usage(args.key, days=args.days)
    if args.json:
        return report.model_dump_json(indent=2)
    return _usage_text(report)


def _changes(args: argparse.Namespace, fields: dict[str, Any]) -> dict[str, Any]:
    """``sn1 keys modify``'s changes: ``fields`` given, and each ``--no-...`` or ``--default-...`` as the admin API
    clears a setting; nothing to change is the command's error."""
    from shared.admin_client import AdminError

    fields = dict(fields)
    if args.no_expiry:
        fields["expires_at"] = "never"
    if args.no_daily_tokens:
        fields["daily_token_limit"] = "none"
    for _, field, *_ in OVERRIDES:
        if getattr(args, f"default_{field}"):
            fields[field] = "default"
    if all(v is None for v in fields.values()):
        raise AdminError(0, "nothing to change: give --rate-limit, --name, --scopes, --models, --daily-tokens, "
                            "--max-concurrent, --stored-bytes-per-day or an expiry")
    return fields


def _key_file(path: str) -> Any:
    """``sn1 keys import``'s file, read at once before any request (a key file is small); unreadable, the command's
    error."""
    from shared.admin_client import AdminError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AdminError(0, f"cannot read {path}: {e}") from None


def _usage_text(report: UsageOut) -> str:
    """``sn1 keys usage``'s report as a person reads it: the key's limits and use today, then a row a day and the
    totals, then (when the days name any) a row a day and model."""
    t = report.totals
    rows = [[d.date, d.requests, d.prompt_tokens, d.completion_tokens, d.errors, d.rate_limited] for d in report.days]
    rows.append(["total", t.requests, t.prompt_tokens, t.completion_tokens, t.errors, t.rate_limited])
    tokens = (f", {report.daily_token_limit} tokens/day ({report.tokens_remaining_today} left today)"
              if report.daily_token_limit is not None else "")
    stored = (f", {report.stored_bytes_today} of {report.stored_bytes_per_day} stored bytes today"
              if report.stored_bytes_per_day is not None else "")
    in_flight = (f", {report.requests_in_flight} of {report.max_concurrent_requests} requests in flight"
                 if report.max_concurrent_requests is not None else "")
    return (f"key {report.key_id} ({report.name or 'unnamed'}), {report.rate_limit}/min{tokens}{stored}{in_flight}, "
            f"last used {report.last_used_at or 'never'}\n"
            + table(rows, ["day", "requests", "prompt_tok", "completion_tok", "errors", "rate_limited"])
            + _by_model(report))


def _by_model(report: UsageOut) -> str:
    """The days' models, a row each (what answered, with how many tokens); "" when no day names one."""
    rows = [[d.date, m.model, m.requests, m.prompt_tokens, m.completion_tokens] for d in report.days for m in d.models]
    return "\n\nby model\n" + table(rows, ["day", "model", "requests", "prompt_tok", "completion_tok"]) if rows else ""


async def _list(args: argparse.Namespace, admin: AdminClient) -> str:
    """``sn1 keys list``: every key that matches, or (``--limit``) a page of them, ending with the command for the
    next page when there is one."""
    page = await admin.key_page(limit=args.limit, after=args.after, order="desc" if args.desc else None,
                                name=args.name, scope=args.scope, status=args.status)
    if args.json:
        return page.model_dump_json(indent=2) if args.limit is not None else \
            json.dumps([k.model_dump(mode="json") for k in page.data], indent=2)
    shown = table([_key_row(k) for k in page.data], KEY_HEADERS) if page.data else "no keys"
    return shown + (f"\nmore keys: add --after {page.last_id}" if page.has_more else "")


KEY_HEADERS = ["id", "name", "prefix", "rate/min", "tokens/day", "concurrent", "stored/day", "scopes", "models",
               "expires", "created", "last used", "requests", "tokens"]


def imported_line(imported: int, already_here: int) -> str:
    """``sn1 keys import``'s summary, in words a person reads (one key is "1 key")."""
    return f"imported {imported} key{'' if imported == 1 else 's'} ({already_here} already here)"


def _key_row(k: Any) -> list[Any]:
    usage = k.usage
    shown = k.prefix if "..." in k.prefix else k.prefix + "..."  # an imported key's shows its last 4 too
    return [k.id, k.name, shown, k.rate_limit, k.daily_token_limit or "any",
            _own(k.max_concurrent_requests), _own(k.max_stored_bytes_per_day), ",".join(k.scopes),
            ",".join(k.allowed_models) if k.allowed_models else "any", k.expires_at or "never", k.created_at,
            k.last_used_at, usage.requests if usage else None, usage.total_tokens if usage else None]


def _own(limit: int | None) -> int | str:
    """A key's own override as listed: ``default`` (the API's setting applies), ``any`` (0: no limit), or it."""
    return "default" if limit is None else (limit or "any")


def run_keys(args: argparse.Namespace) -> int:
    admin_key = args.admin_key or os.environ.get("ADMIN_KEY")
    if not admin_key:  # said before the imports below (~0.3 s): a forgotten key costs no wait
        print("sn1 keys: no admin key: pass --admin-key or set ADMIN_KEY", file=sys.stderr)
        return 2
    # here, not at the top: every `sn1 ...` builds this module's parser (asyncio alone is ~30 ms)
    import asyncio

    from shared.admin_client import AdminClient, AdminError
    from shared.settings import http_url

    try:  # `SN1_API_URL=127.0.0.1:42170` was "cannot reach the API ...: NonHttpUrlClientError ..."
        http_url(args.api)
    except ValueError as e:
        print(f"sn1 keys: --api / SN1_API_URL: {e}", file=sys.stderr)
        return 2

    async def go() -> str:
        async with AdminClient(args.api, admin_key) as admin:
            return await _run(args, admin)

    try:
        answer = asyncio.run(go())
    except AdminError as e:
        source = "--admin-key" if args.admin_key else "ADMIN_KEY in the environment"
        hint = f" (the key sent came from {source})" if e.code == "invalid_admin_key" else ""
        print(f"sn1 keys {args.action}: {e}{hint}", file=sys.stderr)
        return 2 if e.status == 0 else 1
    return _show(answer, args.action)


SHOWS_A_SECRET = ("create", "rotate")


def _show(answer: str, action: str) -> int:
    """Print the answer. A reader that stops early (``sn1 keys list --json | head``) was a BrokenPipeError
    traceback; now it is a quiet 0, unless the answer held a secret shown once (create, rotate): then the
    action is done but its secret may be lost, which is said, with status 1."""
    try:
        print(answer, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would raise again
        if action not in SHOWS_A_SECRET:
            return 0
        print(f"sn1 keys {action}: done, but its output was cut off (the reader closed the pipe), so the new "
              "secret may not have been seen whole: `sn1 keys rotate <id>` makes another", file=sys.stderr)
        return 1
    return 0
