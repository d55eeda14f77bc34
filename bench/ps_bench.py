"""Parameter-server throughput next to raw loopback sockets, measured side by side in one run.

For models of 0.1M, 1M and 10M float32 parameters and 1, 2, 4 concurrent clients (separate
processes), prints commit_and_pull round trips/s of a plain-socket echo of the same bytes
(send N, receive N) and of the parameter server in each mode: "authenticated" (every frame
tagged, the default on loopback) and "encrypted" (sealed: AES-256-GCM records, the default
beyond loopback),
with each mode's ratio to raw. GB/s counts bytes both ways.

Usage: .venv/bin/python bench/ps_bench.py [--seconds 1.0] [--repeat 2] [--sizes 10000000]
    [--clients 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import threading
import time

import numpy as np

from distkeras.parameter_server import Client, ParameterServer

SIZES = (100_000, 1_000_000, 10_000_000)
CLIENTS = (1, 2, 4)
NUM_ARRAYS = 8  # a model is a handful of arrays, not one


def model(params: int) -> list[np.ndarray]:
    """A float32 model of `params` parameters split over NUM_ARRAYS arrays."""
    sizes = [params // NUM_ARRAYS] * NUM_ARRAYS
    sizes[0] += params - sum(sizes)
    return [np.zeros(s, np.float32) for s in sizes]


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if not n:
            raise ConnectionError("echo peer closed")
        view = view[n:]


# ----------------------------------------------------------------------------- client processes


def run_raw(address, nbytes: int, seconds: float) -> tuple[int, float]:
    """Sends nbytes and reads them echoed back, for `seconds`; returns (round trips, elapsed)."""
    with socket.create_connection(address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out = np.zeros(nbytes, np.uint8)
        back = memoryview(bytearray(nbytes))
        return _timed(lambda: (sock.sendall(out), recv_exact(sock, back)), seconds)


def run_ps(address, secret: bytes, params: int, worker_id: int, seconds: float, encrypted):
    """commit_and_pull of a zero delta for `seconds`; returns (round trips, elapsed)."""
    delta = model(params)
    with Client(address, secret, worker_id=worker_id, require_encryption=encrypted) as client:
        client.pull()
        return _timed(lambda: client.commit_and_pull(delta), seconds)


def _timed(step, seconds: float) -> tuple[int, float]:
    for _ in range(2):  # warm-up
        step()
    count = 0
    start = time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        step()
        count += 1
    return count, time.perf_counter() - start


def client_process(commands: mp.Queue, results: mp.Queue) -> None:
    while (command := commands.get()) is not None:
        kind, args = command
        results.put(run_raw(*args) if kind == "raw" else run_ps(*args))


# ----------------------------------------------------------------------------- driver side


class EchoServer:
    """Plain-socket echo of fixed-size messages, one thread per connection."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._echo, args=(sock,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _echo(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = memoryview(bytearray(self.nbytes))
        with sock:
            try:
                while True:
                    recv_exact(sock, buf)
                    sock.sendall(buf)
            except ConnectionError:
                return

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for thread in self.threads:
            thread.join()


def measure(pool, kind: str, clients: int, make_args) -> float:
    """Runs `clients` client processes at once; returns total round trips per second."""
    commands, results = pool
    for worker_id in range(clients):
        commands.put((kind, make_args(worker_id)))
    return sum(count / elapsed for count, elapsed in (results.get() for _ in range(clients)))


def measure_raw(pool, clients: int, nbytes: int, seconds: float) -> float:
    echo = EchoServer(nbytes)
    try:
        return measure(pool, "raw", clients, lambda w: (echo.address, nbytes, seconds))
    finally:
        echo.close()


MODES = {"authenticated": False, "encrypted": True}  # mode -> encryption


def measure_ps(pool, clients: int, params: int, seconds: float, mode: str) -> float:
    with ParameterServer(model(params), encryption=MODES[mode]) as ps:
        return measure(
            pool,
            "ps",
            clients,
            lambda w: (ps.address, ps.secret, params, w, seconds, ps.encrypted),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per figure")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs")
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="parameters")
    parser.add_argument("--clients", type=int, nargs="+", default=CLIENTS, help="clients")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    commands, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=client_process, args=(commands, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    pool = (commands, results)
    header = f"{'params':>10} {'clients':>7} {'raw rt/s':>9} {'raw GB/s':>8}"
    for mode in MODES:
        header += f" {mode[:5] + ' rt/s':>10} {'GB/s':>5} {'ratio':>6}"
    print(header)
    try:
        for params in args.sizes:
            nbytes = params * 4
            for clients in args.clients:
                raw, rts = 0.0, dict.fromkeys(MODES, 0.0)
                for _ in range(args.repeat):  # alternate, keep the best of each: less noise
                    raw = max(raw, measure_raw(pool, clients, nbytes, args.seconds))
                    for mode in MODES:
                        rate = measure_ps(pool, clients, params, args.seconds, mode)
                        rts[mode] = max(rts[mode], rate)
                line = f"{params:>10,} {clients:>7} {raw:>9.1f} {raw * 2 * nbytes / 1e9:>8.2f}"
                for rate in rts.values():
                    line += f" {rate:>10.1f} {rate * 2 * nbytes / 1e9:>5.2f} {rate / raw:>6.2f}"
                print(line, flush=True)
    finally:
        for _ in procs:
            commands.put(None)
        for proc in procs:
            proc.join()


if __name__ == "__main__":
    main()
