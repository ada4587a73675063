"""The host name in share links: one a colleague's browser can reach.

A listener on a wildcard address (``0.0.0.0``, ``::``) is reachable at every
address of the host, but its links need one name. The host's fully qualified
name is the natural choice, except where it resolves to loopback (many hosts
map their name to 127.0.1.1 or ``localhost``), which would send the colleague's
browser to their own machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct

#: ``SIOCGIFADDR``: an interface's IPv4 address (linux/sockios.h).
_SIOCGIFADDR = 0x8915


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only ever reaches this machine."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False  # not resolvable here: it may resolve where the browser is
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def interface_addresses() -> list[str]:
    """The IPv4 addresses of this host's interfaces, loopback excluded, in
    interface order (no packet is sent to find them)."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            with contextlib.suppress(OSError):
                reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
                address = socket.inet_ntoa(reply[20:24])
                if not ipaddress.ip_address(address).is_loopback:
                    found.append(address)
    return found


def reachable_host() -> tuple[str, str | None]:
    """A name or address for links to a wildcard listener, and a warning when
    the only one found works on this host alone."""
    name = socket.getfqdn()
    if not is_loopback(name):
        return name, None
    addresses = interface_addresses()
    if addresses:
        return addresses[0], None
    return name, (
        f"this link only works on this host ({name} is a loopback name):"
        " set [transports.websocket] public_url"
    )
