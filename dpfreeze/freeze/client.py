"""The control socket without trio, for `dpfreeze upgrade`: with a service running, the command's own
start-up is time the operator waits, so it imports no more than it speaks (`control`'s codec)."""

from __future__ import annotations

import socket
from typing import Any

from dpfreeze.freeze.control import ControlError, LineDecoder, Request, decode_response, encode_request


class ServiceLost(ControlError):
    """The service stopped answering mid-conversation (killed, stopped, or silent past the deadline)."""


class Connection:
    """One connection to the service, one request at a time.  OSError from the constructor: no service."""

    def __init__(self, path: str, timeout: float) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
        except BaseException:
            self._sock.close()
            raise
        self._decoder = LineDecoder()
        self._id = 0

    def request(self, cmd: str, args: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """The service's result; ControlError with its one-line refusal, ServiceLost when it stops
        answering."""
        self._id += 1
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(encode_request(Request(self._id, cmd, args)))
            while True:
                data = self._sock.recv(65536)
                if not data:
                    raise ServiceLost("it closed the connection")
                for line in self._decoder.feed(data):
                    resp = decode_response(line)
                    if not resp.ok:
                        raise ControlError(resp.error)
                    return resp.result
        except TimeoutError:
            raise ServiceLost(f"no answer to {cmd} within {timeout:g} s") from None
        except OSError as exc:
            raise ServiceLost(exc.strerror or str(exc)) from None

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
