"""The rendezvous-port check of `dtrain launch` refuses a port in use, not one a crashed job left in TIME_WAIT."""

from __future__ import annotations

import socket

import pytest

from dtrain.preflight import PreflightError, check_rendezvous_port


def _time_wait_port() -> int:
    """A port whose only socket is a closed connection in TIME_WAIT (the server side closed first, as a
    killed torchrun store does; its listener set SO_REUSEADDR, as the store's does)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.close()  # the server side closes first: its socket on `port` enters TIME_WAIT
    client.recv(1)  # sees the FIN
    client.close()
    listener.close()
    return port


def test_a_port_left_in_time_wait_by_a_dead_job_is_free():
    port = _time_wait_port()
    with socket.socket() as plain:  # what the check did before: this bind fails for about a minute
        with pytest.raises(OSError):
            plain.bind(("", port))
    check_rendezvous_port(f"localhost:{port}", node_rank=0)


def test_a_port_something_listens_on_is_refused():
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(PreflightError, match=f"rendezvous port {port} on localhost is already in use"):
            check_rendezvous_port(f"localhost:{port}", node_rank=0)
