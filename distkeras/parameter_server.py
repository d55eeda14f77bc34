"""The public names of the parameter server, kept where earlier releases had them.

The implementation lives in the `distkeras.ps` package.
"""

from distkeras.ps import Client, ParameterServer, add_rule

__all__ = ["Client", "ParameterServer", "add_rule"]
