"""The process's resident memory, read from Linux's /proc (None elsewhere).

Workers report how much their resident set grew while they trained (`PeakGrowth`), so
that bounded worker memory is measured, not assumed. No training logic here.
"""

from __future__ import annotations

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_bytes(field: str) -> int | None:
    try:
        with open(_STATUS) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except OSError:
        return None
    return None


def resident_bytes() -> int | None:
    """The process's resident set size now (VmRSS), None without /proc."""
    return _status_bytes("VmRSS")


def peak_resident_bytes() -> int | None:
    """The largest resident set size since the last reset (VmHWM), None without /proc."""
    return _status_bytes("VmHWM")


class PeakGrowth:
    """Measures how far the resident set rises above its size at construction.

    Resets the kernel's high-water mark (writing 5 to /proc/self/clear_refs), so that the
    peak of an earlier task in a reused Python worker does not count.
    """

    def __init__(self):
        self.baseline = resident_bytes()
        try:
            with open(_CLEAR_REFS, "w") as clear_refs:
                clear_refs.write("5")
            self._reset = True
        except OSError:
            self._reset = False

    def bytes(self) -> int:
        """Peak minus baseline in bytes; -1 when /proc or the reset is unavailable."""
        peak = peak_resident_bytes()
        if not self._reset or peak is None or self.baseline is None:
            return -1
        return max(0, peak - self.baseline)
