"""API key stores: hashing, scopes, the file store and the command line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.keys import ApiKey, FileKeyStore, KeyError_, hash_key, parse_scopes


def test_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    key, record = asyncio.run(store.create("alice", ("tabular",)))
    raw = (tmp_path / "keys.json").read_text()
    assert key not in raw
    assert hash_key(key) in raw
    assert record.scopes == ("tabular",)
    assert oct((tmp_path / "keys.json").stat().st_mode & 0o777) == "0o600"
    assert asyncio.run(store.authenticate(key)) == record
    assert asyncio.run(store.authenticate(key + "x")) is None


def test_two_keys_differ_and_names_are_unique(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    first, _ = asyncio.run(store.create("a", ("*",)))
    second, _ = asyncio.run(store.create("b", ("*",)))
    assert first != second and len(first) > 40
    with pytest.raises(KeyError_):
        asyncio.run(store.create("a", ("*",)))


def test_revoke_takes_effect(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    key, _ = asyncio.run(store.create("gone", ("*",)))
    assert asyncio.run(store.remove("gone")) is True
    assert asyncio.run(store.authenticate(key)) is None
    assert asyncio.run(store.remove("gone")) is False


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "root",
        "tabular,root",
        " , ",
        "model:",
        "model:a b",
        "model:..",
        "model:a/b",
        "model:" + "x" * 65,
        "Admin",
    ],
)
def test_bad_scopes_are_refused(raw: str) -> None:
    with pytest.raises(KeyError_):
        parse_scopes(raw)


def test_scope_parsing() -> None:
    assert parse_scopes("nlp, tabular,nlp") == ("nlp", "tabular")
    assert parse_scopes("model:iris,model:fraud-v2.1,admin") == ("admin", "model:fraud-v2.1", "model:iris")


def test_what_each_scope_allows() -> None:
    def key(*scopes: str) -> ApiKey:
        return ApiKey("k", scopes, "h", "t")

    assert key("*").allows("admin") and key("*").allows_model("iris", "tabular")
    assert key("model:iris").allows_model("iris", "tabular")
    assert not key("model:iris").allows_model("fraud", "tabular")
    assert not key("model:iris").allows("tabular")  # one model is not its whole service
    assert key("tabular").allows_model("fraud", "tabular") and not key("tabular").allows_model(
        "sentiment", "nlp"
    )
    assert not key("admin").allows_model("iris", "tabular") and not key("tabular").allows("admin")


def test_cli_create_list_revoke(tmp_path: Path) -> None:
    env = {**os.environ, "API_KEYS_FILE": str(tmp_path / "keys.json")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.keys", *args], env=env, capture_output=True, text=True
        )

    created = cli("create", "--name", "ci", "--scopes", "tabular,vision")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("mg_")
    stored = json.loads((tmp_path / "keys.json").read_text())["keys"]
    assert stored[0]["name"] == "ci" and stored[0]["key_hash"] == hash_key(key)
    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    # Name, scopes and creation time: never the key.
    assert listed.stdout == f"ci\ttabular,vision\t{stored[0]['created']}\n"
    assert cli("create", "--name", "ci").returncode == 2
    scoped = cli("create", "--name", "ops", "--scopes", "admin,model:iris")
    assert scoped.returncode == 0, scoped.stderr
    created_at = {k["name"]: k["created"] for k in json.loads((tmp_path / "keys.json").read_text())["keys"]}
    assert cli("list").stdout.splitlines() == [
        f"ci\ttabular,vision\t{created_at['ci']}",
        f"ops\tadmin,model:iris\t{created_at['ops']}",
    ]
    refused = cli("create", "--name", "bad", "--scopes", "model:no such")
    assert refused.returncode == 2 and "model:<name>" in refused.stderr
    assert cli("revoke", "--name", "ci").returncode == 0
    assert cli("list").stdout.splitlines() == [f"ops\tadmin,model:iris\t{created_at['ops']}"]
    assert cli("revoke", "--name", "ci").returncode == 1
