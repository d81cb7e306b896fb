"""What a non-loopback --host exposes: `hpo dashboard` and `hpo storage-proxy` have no authentication (by
optuna-dashboard's and optuna's own design), so binding them beyond loopback is announced with one warning."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; any other name or address (0.0.0.0 included) is exposed."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure_warning(service: str, host: str, port: int, exposes: str) -> str | None:
    """The one-line warning for `service` bound to `host` (None on loopback)."""
    if is_loopback(host):
        return None
    where = "every interface" if host in ("0.0.0.0", "::", "") else host
    return (f"warning: {service} listens on {where} (port {port}) without authentication: anyone who can reach it "
            f"can {exposes}; share it through an authenticating reverse proxy or an SSH tunnel instead "
            f"(studies/README.md, Security)")
