"""API keys: random, shown once, stored only as SHA-256 hashes with a name and scopes.

Two stores behind one interface: a JSON file (the single-machine default) and Redis (when `REDIS_URL` is
set, so every gateway replica sees the same keys). Also a command line:

    python -m gateway.keys create --name NAME --scopes tabular,nlp
    python -m gateway.keys create --name NAME --scopes model:iris,model:fraud
    python -m gateway.keys create --name NAME --scopes admin
    python -m gateway.keys revoke --name NAME
    python -m gateway.keys list
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Counter

from gateway.lru import Lru
from gateway.redis_client import make_redis, with_reconnect
from modelgate_core.errors import ServiceUnavailable
from modelgate_core.repository.settings import is_model_name

if TYPE_CHECKING:
    from gateway.config import GatewaySettings

logger = logging.getLogger("gateway.keys")

KEY_STORE_OUTAGE = Counter(
    "modelgate_key_store_outage_total",
    "Key lookups that Redis could not answer: served from the last confirmed record, or refused (503).",
    ["outcome"],
)

# A service's name lets a key use that service's domain routes and every model it holds; `model:<name>`
# one model (through the /v2 and :predict routes) wherever it lives; `admin` the repository extension
# (index, load, unload); `*` everything.
SERVICE_SCOPES = frozenset({"tabular", "vision", "nlp"})
ADMIN_SCOPE = "admin"
ALL_SCOPES = "*"
MODEL_SCOPE_PREFIX = "model:"
SCOPES = SERVICE_SCOPES | {ADMIN_SCOPE, ALL_SCOPES}
KEY_PREFIX = "mg_"
_REDIS_KEYS = "modelgate:api-keys"  # hash: key hash -> record JSON


class KeyError_(ValueError):
    """A key command was given bad input (unknown scope, duplicate or unknown name)."""


class KeyStoreUnavailable(ServiceUnavailable):
    """The key store (Redis) did not answer: we cannot tell a good key from a bad one."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What the gateway knows about a key: never the key itself."""

    name: str
    scopes: tuple[str, ...]
    key_hash: str
    created: str
    # Per-key rate limit (requests/s and burst); None means the gateway's default plan.
    rate: float | None = None
    burst: int | None = None

    def allows(self, scope: str) -> bool:
        """Whether the key carries `scope`. `*` allows everything, `admin` included; no other scope
        implies another (`admin` alone cannot call a model, a service scope cannot administer)."""
        return ALL_SCOPES in self.scopes or scope in self.scopes

    def allows_model(self, model: str, service: str) -> bool:
        """Whether the key may call `model`, held by `service`: the service's scope or `model:<name>`."""
        return self.allows(service) or self.allows(MODEL_SCOPE_PREFIX + model)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> ApiKey:
        data = json.loads(raw)
        return cls(
            data["name"],
            tuple(data["scopes"]),
            data["key_hash"],
            data["created"],
            data.get("rate"),
            data.get("burst"),
        )


def generate_key() -> str:
    """A new key: a recognisable prefix and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """SHA-256 of the key. Keys are 256 random bits, so a fast hash is enough (no salt needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def is_scope(scope: str) -> bool:
    """A known scope, or `model:<name>` with a valid model name."""
    if scope.startswith(MODEL_SCOPE_PREFIX):
        return is_model_name(scope.removeprefix(MODEL_SCOPE_PREFIX))
    return scope in SCOPES


def parse_scopes(raw: str) -> tuple[str, ...]:
    scopes = tuple(sorted({s.strip() for s in raw.split(",") if s.strip()}))
    unknown = sorted(s for s in scopes if not is_scope(s))
    if not scopes or unknown:
        raise KeyError_(
            f"scopes must be a comma list of {', '.join(sorted(SCOPES))} or model:<name> "
            f"(name: 1-64 of A-Z a-z 0-9 _ . -); got {raw!r}"
        )
    return scopes


class KeyStore(ABC):
    """Extension point: where key records live."""

    @abstractmethod
    async def find(self, key_hash: str) -> ApiKey | None:
        """The record with this hash, or None."""

    @abstractmethod
    async def all(self) -> list[ApiKey]:
        """Every record."""

    @abstractmethod
    async def add(self, record: ApiKey) -> None:
        """Store a new record."""

    @abstractmethod
    async def remove(self, name: str) -> bool:
        """Remove the record with this name; False if there was none."""

    async def ping(self) -> bool:
        """Whether the store answers (for readiness)."""
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook; the file store holds nothing
        """Release connections."""

    async def authenticate(self, presented: str) -> ApiKey | None:
        """The record for a presented key, compared in constant time, or None."""
        candidate = hash_key(presented)
        record = await self.find(candidate)
        if record is None or not hmac.compare_digest(record.key_hash, candidate):
            return None
        return record

    async def create(
        self, name: str, scopes: tuple[str, ...], rate: float | None = None, burst: int | None = None
    ) -> tuple[str, ApiKey]:
        """Make a key; returns it (shown once) and its stored record."""
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
            raise KeyError_("name must be 1-64 letters, digits, '-' or '_'")
        if any(r.name == name for r in await self.all()):
            raise KeyError_(f"a key named {name!r} exists; revoke it first")
        key = generate_key()
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if (rate is not None and rate <= 0) or (burst is not None and burst < 1):
            raise KeyError_("rate must be > 0 and burst >= 1")
        record = ApiKey(name, scopes, hash_key(key), created, rate, burst)
        await self.add(record)
        return key, record


class FileKeyStore(KeyStore):
    """Keys in a JSON file, re-read when it changes (so the CLI's writes are seen without restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._by_hash: dict[str, ApiKey] = {}

    def _load(self) -> dict[str, ApiKey]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._mtime, self._by_hash = None, {}
            return self._by_hash
        if mtime != self._mtime:
            data = json.loads(self.path.read_text() or "{}")
            self._by_hash = {r["key_hash"]: ApiKey.from_json(json.dumps(r)) for r in data.get("keys", [])}
            self._mtime = mtime
        return self._by_hash

    def _save(self, records: list[ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"keys": [asdict(r) for r in records]}, indent=2)
        # Write then rename, so a gateway reading concurrently never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".api_keys.")
        with os.fdopen(fd, "w") as fh:
            fh.write(payload)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    async def find(self, key_hash: str) -> ApiKey | None:
        return self._load().get(key_hash)

    async def all(self) -> list[ApiKey]:
        return list(self._load().values())

    async def add(self, record: ApiKey) -> None:
        self._save([*self._load().values(), record])

    async def remove(self, name: str) -> bool:
        records = list(self._load().values())
        kept = [r for r in records if r.name != name]
        if len(kept) == len(records):
            return False
        self._save(kept)
        return True


@dataclass(frozen=True, slots=True)
class _Confirmed:
    """A record as Redis last returned it, and when (the store's clock)."""

    at: float
    record: ApiKey


class RedisKeyStore(KeyStore):
    """Keys in one Redis hash, shared by every gateway worker and replica.

    Lookups are remembered in two bounded LRUs: records Redis returned (`max_entries` of them), and
    hashes it did not know (as many). Within `cache_seconds` either answers without asking Redis, so a
    revoked key stops working within that delay. When Redis cannot be reached, a key that Redis
    confirmed within `outage_grace_seconds` keeps working; any other key cannot be verified and is a
    503 (`KeyStoreUnavailable`), never a 401. After a failed call Redis is left alone for
    `retry_seconds`: during an outage each request would otherwise wait out a timeout first.
    """

    def __init__(
        self,
        url: str,
        cache_seconds: float = 5.0,
        *,
        timeout: float = 0.25,
        max_entries: int = 10_000,
        outage_grace_seconds: float = 900.0,
        retry_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis.asyncio as redis

        self.redis = make_redis(url, timeout=timeout)
        self._redis_error = redis.RedisError
        self.cache_seconds = cache_seconds
        self.outage_grace_seconds = outage_grace_seconds
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._confirmed: Lru[str, _Confirmed] = Lru(max_entries)
        # Unknown hashes, kept apart so that a scanner's stream of them cannot evict the good keys.
        self._unknown: Lru[str, float] = Lru(max_entries)
        self._redis_down_until = -math.inf

    async def find(self, key_hash: str) -> ApiKey | None:
        now = self._clock()
        confirmed = self._confirmed.get(key_hash)
        if confirmed is not None and now - confirmed.at < self.cache_seconds:
            return confirmed.record
        unknown_at = self._unknown.get(key_hash)
        if unknown_at is not None and now - unknown_at < self.cache_seconds:
            return None
        if now < self._redis_down_until:
            return self._without_redis(confirmed, now)
        try:
            raw = await with_reconnect(self.redis, lambda: self.redis.hget(_REDIS_KEYS, key_hash))
        except (self._redis_error, OSError) as exc:
            self._redis_down_until = now + self.retry_seconds
            logger.warning("API key store unavailable", extra={"error": repr(exc)})
            return self._without_redis(confirmed, now, exc)
        if not raw:
            self._confirmed.pop(key_hash)
            self._unknown.put(key_hash, now)
            return None
        record = ApiKey.from_json(raw)
        self._unknown.pop(key_hash)
        self._confirmed.put(key_hash, _Confirmed(now, record))
        return record

    def _without_redis(
        self, confirmed: _Confirmed | None, now: float, cause: BaseException | None = None
    ) -> ApiKey:
        """Redis cannot answer: the last confirmed record if it is recent enough, else a 503."""
        if confirmed is not None and now - confirmed.at <= self.outage_grace_seconds:
            KEY_STORE_OUTAGE.labels("served_confirmed").inc()
            return confirmed.record
        KEY_STORE_OUTAGE.labels("unverifiable").inc()
        raise KeyStoreUnavailable(
            "The API key store is unavailable and this key was not verified recently; try again shortly",
            headers={"retry-after": str(max(1, math.ceil(self.retry_seconds)))},
        ) from cause

    async def all(self) -> list[ApiKey]:
        values = await self.redis.hvals(_REDIS_KEYS)  # type: ignore[misc]
        return [ApiKey.from_json(v) for v in values]

    async def add(self, record: ApiKey) -> None:
        await self.redis.hset(_REDIS_KEYS, record.key_hash, record.to_json())  # type: ignore[misc]

    async def remove(self, name: str) -> bool:
        for record in await self.all():
            if record.name == name:
                await self.redis.hdel(_REDIS_KEYS, record.key_hash)  # type: ignore[misc]
                return True
        return False

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False

    async def close(self) -> None:
        await self.redis.aclose()


def open_store(redis_url: str | None, keys_file: Path, cache_seconds: float = 5.0) -> KeyStore:
    """Redis when a URL is configured, otherwise the local file (the store's own defaults otherwise;
    the gateway uses `store_from_settings`)."""
    return RedisKeyStore(redis_url, cache_seconds) if redis_url else FileKeyStore(keys_file)


def store_from_settings(settings: GatewaySettings) -> KeyStore:
    """The key store the settings describe: Redis when `REDIS_URL` is set, otherwise the local file."""
    if not settings.redis_url:
        return FileKeyStore(settings.api_keys_file)
    return RedisKeyStore(
        str(settings.redis_url),
        settings.key_cache_seconds,
        timeout=settings.rate_limit_timeout,
        max_entries=settings.key_cache_max_entries,
        outage_grace_seconds=settings.key_outage_grace_seconds,
    )


async def _run_cli(args: argparse.Namespace) -> int:
    from gateway.config import GatewaySettings

    settings = GatewaySettings()
    store = store_from_settings(settings)
    where = "redis" if settings.redis_url else str(settings.api_keys_file)
    try:
        if args.command == "create":
            key, record = await store.create(args.name, parse_scopes(args.scopes), args.rate, args.burst)
            print(
                f"Created key {record.name!r} with scopes {','.join(record.scopes)} in {where}.",
                file=sys.stderr,
            )
            print("Store it now: it is shown only once.", file=sys.stderr)
            print(key)
        elif args.command == "revoke":
            if not await store.remove(args.name):
                print(f"No key named {args.name!r} in {where}.", file=sys.stderr)
                return 1
            print(f"Revoked key {args.name!r}.", file=sys.stderr)
        else:
            for record in await store.all():
                print(f"{record.name}\t{','.join(record.scopes)}\t{record.created}")
    except KeyError_ as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m gateway.keys`."""
    parser = argparse.ArgumentParser(prog="python -m gateway.keys", description="Manage ModelGate API keys.")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scopes",
        default="*",
        help="comma list of tabular, vision, nlp, model:<name>, admin, or * (everything; the default)",
    )
    create.add_argument(
        "--rate", type=float, help="requests per second (default: the gateway's RATE_LIMIT_PER_SECOND)"
    )
    create.add_argument("--burst", type=int, help="burst size (default: the gateway's RATE_LIMIT_BURST)")
    revoke = sub.add_parser("revoke", help="revoke the key with this name")
    revoke.add_argument("--name", required=True)
    sub.add_parser("list", help="list key names and scopes (never the keys)")
    return asyncio.run(_run_cli(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
