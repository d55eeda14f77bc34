"""Facts about network addresses shared by the parameter server and the Spark layer.

is_loopback: does a host name this machine's loopback only. route_address: this machine's
address on the route to a host. Standard library only: no Spark, no Keras.
"""

from __future__ import annotations

import ipaddress
import socket

WILDCARD_HOSTS = frozenset(["", "0.0.0.0", "::"])
# TEST-NET-1 (RFC 5737): a route to it is looked up, no packet is ever sent there.
OUTSIDE = "192.0.2.1"


def is_loopback(host: str) -> bool:
    """True for a loopback address or name (127.0.0.0/8, ::1, "localhost")."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def route_address(remote_host: str = OUTSIDE) -> str:
    """This machine's address on the route to `remote_host` (no packet is sent), else the
    address its host name resolves to, else its fully qualified name."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((remote_host.strip("[]"), 9))
            return probe.getsockname()[0]
    except OSError:
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return socket.getfqdn()
