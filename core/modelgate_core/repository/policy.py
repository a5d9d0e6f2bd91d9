"""`<name>/model.json`: which versions of a model are served, and how its unversioned requests are
shared between them. Optional; beside the version folders, one per model:

    {"version_policy": {"latest": {"num_versions": 2}},  # or {"all": {}}, {"specific": {"versions": [1, 3]}}
     "default_version": "1",                            # unversioned requests; else the highest ready
     "canary": {"version": "2", "percent": 10},         # this share of them goes to version 2
     "shadow": {"version": "3", "percent": 100,         # a copy of the default's traffic goes to 3,
                "compare": ["label"], "rtol": 1e-5, "atol": 1e-8}}  # whose answers are only compared

The version policy is Triton's (`latest` 1 when absent). A version the traffic names is served even if
the policy leaves it out, so promoting a canary never needs two edits. The traffic part (default,
canary, shadow) can also be changed live with an admin call (`PUT /v2/repository/models/<name>/traffic`
and its `promote` / `rollback`): that override is kept in a directory of the service's
(`MODEL_TRAFFIC_DIR`) with the digest of the model.json it was made over, so whichever is newer wins:
an edit of model.json after an admin call replaces the call's traffic, and a call replaces the file's.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MODEL_FILE = "model.json"


class ModelPolicyError(ValueError):
    """A model.json (or a traffic call) that cannot be used; the message says why."""


def _version(value: Any) -> str:
    """Versions are folder names, positive integers; JSON may write them as numbers or strings."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"a version is a positive integer, not {value!r}")
    return str(int(text))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Latest(_Strict):
    num_versions: int = Field(default=1, ge=1)


class All(_Strict):
    pass


class Specific(_Strict):
    versions: list[str] = Field(min_length=1)

    @field_validator("versions", mode="before")
    @classmethod
    def _versions(cls, value: Any) -> Any:
        return [_version(v) for v in value] if isinstance(value, list) else value


class VersionPolicy(_Strict):
    """Exactly one of `latest`, `all`, `specific`; none: the latest one."""

    latest: Latest | None = None
    all: All | None = None
    specific: Specific | None = None

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        if sum(p is not None for p in (self.latest, self.all, self.specific)) > 1:
            raise ValueError("choose one of latest, all, specific")
        return self

    def selects(self, available: list[str]) -> set[str]:
        """The versions of `available` (folders on disk) this policy serves."""
        ordered = sorted(available, key=int)
        if self.all is not None:
            return set(ordered)
        if self.specific is not None:
            return set(self.specific.versions) & set(ordered)
        keep = (self.latest or Latest()).num_versions
        return set(ordered[-keep:])


class _Role(_Strict):
    version: str

    @field_validator("version", mode="before")
    @classmethod
    def _check_version(cls, value: Any) -> str:
        return _version(value)


class Canary(_Role):
    percent: float = Field(ge=0, le=100)


class Shadow(_Role):
    # Share of the default's requests copied to the shadow.
    percent: float = Field(default=100, ge=0, le=100)
    # Outputs compared (all when absent); numbers agree within rtol/atol (numpy.allclose), others exactly.
    compare: list[str] | None = None
    rtol: float = Field(default=1e-5, ge=0)
    atol: float = Field(default=1e-8, ge=0)


class Traffic(_Strict):
    """How the unversioned routes of one model choose a version."""

    default_version: str | None = None
    canary: Canary | None = None
    shadow: Shadow | None = None

    @field_validator("default_version", mode="before")
    @classmethod
    def _default(cls, value: Any) -> Any:
        return None if value is None else _version(value)

    @model_validator(mode="after")
    def _distinct(self) -> Traffic:
        if self.canary and self.shadow and self.canary.version == self.shadow.version:
            raise ValueError("the canary and the shadow must be different versions")
        for role in (self.canary, self.shadow):
            if role is not None and role.version == self.default_version:
                raise ValueError(f"version {role.version} cannot be both the default and a canary or shadow")
        return self

    def named_versions(self) -> set[str]:
        named = {self.default_version} if self.default_version else set()
        return named | {r.version for r in (self.canary, self.shadow) if r is not None}


class ModelPolicy(Traffic):
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)

    def traffic(self) -> Traffic:
        return Traffic(default_version=self.default_version, canary=self.canary, shadow=self.shadow)

    def with_traffic(self, traffic: Traffic) -> ModelPolicy:
        return ModelPolicy(version_policy=self.version_policy, **traffic.model_dump())

    def serves(self, available: list[str]) -> set[str]:
        """The versions of `available` to load: the policy's and those the traffic names."""
        return self.version_policy.selects(available) | (self.named_versions() & set(available))


def problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())


def read_policy(model_dir: Path) -> tuple[ModelPolicy, str]:
    """The policy in `model_dir/model.json` (the defaults when there is none) and the file's digest
    ("" when absent); `ModelPolicyError` says what is wrong with a file that exists."""
    try:
        raw = (model_dir / MODEL_FILE).read_bytes()
    except FileNotFoundError:
        return ModelPolicy(), ""
    except OSError as exc:
        raise ModelPolicyError(f"cannot read {MODEL_FILE}: {exc}") from exc
    try:
        policy = ModelPolicy.model_validate_json(raw)
    except ValidationError as exc:
        raise ModelPolicyError(f"invalid {MODEL_FILE}: {problems(exc)}") from exc
    return policy, hashlib.sha256(raw).hexdigest()


class TrafficOverrides:
    """The traffic set by admin calls, one file per model, shared by the service's workers (and by its
    replicas when the directory is a shared volume)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def read(self, name: str, file_digest: str) -> Traffic | None:
        """The override for `name`, if one was made over the model.json that has `file_digest` now."""
        try:
            data = json.loads((self.directory / f"{name}.json").read_bytes())
            if data.get("based_on") != file_digest:
                return None  # model.json changed since: the file is newer and wins
            return Traffic.model_validate(data["traffic"])
        except (OSError, ValueError, KeyError, TypeError, ValidationError):
            return None

    def write(self, name: str, traffic: Traffic, file_digest: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"based_on": file_digest, "traffic": traffic.model_dump(exclude_none=True)})
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(tmp, self.directory / f"{name}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
