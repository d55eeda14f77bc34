"""The parameter server: wire protocol, server, center and client (see docs/protocol.md)."""

from distkeras.ps.center import add_rule
from distkeras.ps.client import Client
from distkeras.ps.server import ParameterServer

__all__ = ["Client", "ParameterServer", "add_rule"]
