"""A parameter server in a process whose descriptor limit is reached (RLIMIT_NOFILE lowered).

Opens idle connections until the process has no descriptor left, makes one more connection
wait in the listener's backlog, and watches the accept loop for two seconds: the log lines
it writes and the CPU the process burns. Then frees descriptors and checks that an honest
client is served. Prints one JSON line.
"""

import errno
import json
import logging
import os
import resource
import socket
import time

import numpy as np

from distkeras.parameter_server import Client, ParameterServer


class Count(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = 0

    def emit(self, record):
        if "accept failed" in record.getMessage():
            self.lines += 1


def main() -> None:
    counter = Count()
    logging.getLogger("distkeras").addHandler(counter)
    logging.getLogger("distkeras").setLevel(logging.INFO)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 48, resource.getrlimit(7)[1]))
    ps = ParameterServer(
        [np.zeros(4, np.float32)], handshake_timeout=60.0, max_unauthenticated=1000
    ).start()
    idle = []
    try:
        for _ in range(200):  # bounded: the limit is reached long before
            try:
                idle.append(socket.create_connection(ps.address, timeout=5))
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                break
        time.sleep(0.5)  # the server accepts what it can
        idle.pop().close()
        waiting = socket.create_connection(ps.address, timeout=5)  # accept() now hits EMFILE
        lines_before, cpu_before = counter.lines, time.process_time()
        time.sleep(2.0)
        lines, cpu = counter.lines - lines_before, time.process_time() - cpu_before
        for sock in idle:  # some wait in the backlog: free more than they can take
            sock.close()
        started = time.monotonic()
        with Client(ps.address, ps.secret, timeout=5, connect_timeout=5) as client:
            client.pull()
        recovered = time.monotonic() - started
        waiting.close()
        result = {
            "connections": len(idle),
            "log_lines": counter.lines,
            "lines_in_window": lines,
            "cpu_seconds": cpu,
            "recovered_in": recovered,
        }
    finally:
        for sock in idle:
            sock.close()
        ps.stop()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
