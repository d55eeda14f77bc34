"""The parameter server's wire, by job (byte-level spec: docs/protocol.md).

schema: message types, their metadata and report fields, limits, wire arrays. framing: the
header, encoding, and reading one frame. protection: what guards a frame's bytes (plain,
tagged or sealed), one strategy object per session. stream: one socket's counted I/O under
its protection. handshake: the mutual HMAC challenge, which derives the session's keys.
No model, no rule, no threads here.
"""
