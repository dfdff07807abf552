"""Port checks for the embedded services."""

from __future__ import annotations

import socket
import time
import urllib.request

from streams.errors import PreflightError


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_port_free(port: int, setting: str) -> None:
    """Raise a one-line error naming the setting when ``port`` is taken."""
    if not port_free(port):
        env = "CRM_ERP_SYNC__" + setting.upper().replace(".", "__")
        raise PreflightError(
            f"port {port} ({setting}) is already in use by another process",
            hint=f"stop that process, or choose another port with {setting} in sync.yaml or env {env}",
        )


def wait_listening(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """Wait until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def free_port() -> int:
    """A port the kernel just handed out (for tests and ephemeral services)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held until every one is chosen, so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when ``GET url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
