"""``[identity.spiffe]`` in config.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tachi.errors import InvalidRequest

ROLES = ("owner", "collaborator", "observer")


@dataclass(frozen=True)
class RoleRule:
    pattern: str  # an exact SPIFFE ID or a prefix ending in /*
    role: str


@dataclass(frozen=True)
class Settings:
    trust_domains: frozenset[str]
    trust_bundle: Path
    svid_cert: Path
    svid_key: Path
    require_client_cert: bool
    roles: tuple[RoleRule, ...]
    workload_api: str | None


def load(raw: dict[str, Any]) -> Settings | None:
    """The settings, or ``None`` when the section is absent. Raises
    ``InvalidRequest`` naming the key for a bad value."""
    table = raw.get("identity", {}).get("spiffe")
    if not table:
        return None
    workload_api = table.get("workload_api")
    needed = ["trust_domains"]
    if not workload_api:
        needed += ["trust_bundle", "svid_cert", "svid_key"]
    missing = [k for k in needed if k not in table]
    if missing:
        raise InvalidRequest(f"identity.spiffe: missing {', '.join(missing)}")
    rules = []
    for entry in table.get("roles", []):
        role = entry.get("role")
        if role not in ROLES or not str(entry.get("id", "")).startswith("spiffe://"):
            raise InvalidRequest(
                f"identity.spiffe.roles: {entry!r} needs id = 'spiffe://…' and role = one of"
                f" {', '.join(ROLES)}"
            )
        rules.append(RoleRule(str(entry["id"]), str(role)))
    return Settings(
        trust_domains=frozenset(str(d) for d in table["trust_domains"]),
        trust_bundle=Path(table.get("trust_bundle", "")).expanduser(),
        svid_cert=Path(table.get("svid_cert", "")).expanduser(),
        svid_key=Path(table.get("svid_key", "")).expanduser(),
        require_client_cert=bool(table.get("require_client_cert", False)),
        roles=tuple(rules),
        workload_api=str(workload_api) if workload_api else None,
    )
