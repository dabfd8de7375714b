"""moto's Secrets Manager in server mode, over real HTTP on 127.0.0.1, behind a small WSGI
wrapper that counts the calls the *server* receives and injects real HTTP faults on chosen
calls: throttling (400 ThrottlingException), 5xx, access denied, latency, a lost answer
(the call is applied, then the client gets a 500 instead of the result), and a hang (the call
is never applied; the client waits, then gets a 503 — or is killed while it waits)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

try:  # moto >= 5 names its handler; older releases used werkzeug's default
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
except ImportError:  # pragma: no cover
    MotoRequestHandler = None

StartResponse = Callable[..., Any]

# Fake credentials and no shared config: boto3 must reach only the moto server on loopback.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
}

_ERRORS = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "error500": (500, "InternalServiceError", "internal error"),
    "unavailable": (503, "ServiceUnavailable", "unavailable"),
    "deny": (400, "AccessDeniedException", "not authorized"),
}


@dataclass
class Fault:
    kind: str  # throttle | error500 | unavailable | deny | delay | lost_answer | hang
    action: str = "GetSecretValue"
    times: int | None = None  # None: until cleared
    seconds: float = 0.0


class FaultInjector:
    def __init__(self) -> None:
        self.app: Callable[..., Iterable[bytes]] | None = None
        self.calls: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()

    def inject(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def _take(self, action: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.action == action:
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        assert self.app is not None
        action = environ.get("HTTP_X_AMZ_TARGET", "").rsplit(".", 1)[-1]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = {}
        with self.lock:
            self.calls[action] += 1
            self.requests.append((action, payload))
        fault = self._take(action)
        if fault is not None:
            if fault.kind == "delay":
                time.sleep(fault.seconds)
            elif fault.kind == "hang":  # never applied: the caller waits, then gets a 503 (or dies first)
                time.sleep(fault.seconds)
                return self._error(start_response, "unavailable")
            elif fault.kind == "lost_answer":
                for _ in self.app(environ, lambda *args, **kwargs: None):  # applied, answer dropped
                    pass
                return self._error(start_response, "error500")
            else:
                return self._error(start_response, fault.kind)
        return self.app(environ, start_response)

    @staticmethod
    def _error(start_response: StartResponse, kind: str) -> list[bytes]:
        status, code, message = _ERRORS[kind]
        data = json.dumps({"__type": code, "message": message}).encode()
        start_response(
            f"{status} {code}",
            [("Content-Type", "application/x-amz-json-1.1"), ("Content-Length", str(len(data)))],
        )
        return [data]


class FaultyMotoServer(ThreadedMotoServer):
    """ThreadedMotoServer whose WSGI app is wrapped by a FaultInjector."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self.injector = FaultInjector()

    def _server_entry(self) -> None:
        self.injector.app = DomainDispatcherApplication(create_backend_app)
        kwargs = {"request_handler": MotoRequestHandler} if MotoRequestHandler else {}
        self._server = make_server(self._ip_address, self._port, self.injector, True, **kwargs)
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def endpoint(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"
