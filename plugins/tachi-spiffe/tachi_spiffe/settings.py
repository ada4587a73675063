"""``[identity.spiffe]`` in config.toml."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    #: One file of CAs (split by their spiffe://DOMAIN URI SAN when several
    #: domains share it), and/or one file per domain: ``trust_bundles``.
    trust_bundle: Path | None
    svid_cert: Path
    svid_key: Path
    require_client_cert: bool
    roles: tuple[RoleRule, ...]
    workload_api: str | None
    trust_bundles: dict[str, Path] = field(default_factory=dict)

    def bundle_files(self) -> list[Path]:
        """Every bundle file (the TLS handshake trusts all of them; the per-domain
        check in ``bundles.check_issuer`` narrows it to the peer's domain)."""
        shared = [self.trust_bundle] if self.trust_bundle is not None else []
        return shared + list(self.trust_bundles.values())


def load(raw: dict[str, Any]) -> Settings | None:
    """The settings, or ``None`` when the section is absent. Raises
    ``InvalidRequest`` naming the key for a bad value."""
    table = raw.get("identity", {}).get("spiffe")
    if not table:
        return None
    workload_api = table.get("workload_api")
    needed = ["trust_domains"]
    if not workload_api:
        needed += ["svid_cert", "svid_key"]
        if "trust_bundles" not in table:
            needed.append("trust_bundle")
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
    per_domain = table.get("trust_bundles", {})
    domains = frozenset(str(d) for d in table["trust_domains"])
    if not isinstance(per_domain, dict) or not set(per_domain) <= domains:
        raise InvalidRequest(
            "identity.spiffe.trust_bundles: a table of trust domain = bundle file,"
            f" for domains in trust_domains ({', '.join(sorted(domains))})"
        )
    shared = table.get("trust_bundle")
    return Settings(
        trust_domains=domains,
        trust_bundle=Path(str(shared)).expanduser() if shared else None,
        trust_bundles={str(d): Path(str(p)).expanduser() for d, p in per_domain.items()},
        svid_cert=Path(table.get("svid_cert", "")).expanduser(),
        svid_key=Path(table.get("svid_key", "")).expanduser(),
        require_client_cert=bool(table.get("require_client_cert", False)),
        roles=tuple(rules),
        workload_api=str(workload_api) if workload_api else None,
    )
