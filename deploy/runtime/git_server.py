"""The Git host of a container deployment: serves the `local` provider's repositories over smart HTTP.

The `local` Git provider (the only one the code has today) creates bare repositories under
`$PROVISIONER_DATA_DIR/git` on the worker. This process serves that same directory (a volume shared with the
worker) so that the worker's pushes and Flux's clones reach it at `PROVISIONER_GIT_BASE_URL`. Pushes need the token
(`PROVISIONER_GIT_TOKEN` or `PROVISIONER_GIT_TOKEN_FILE`) when one is set; clones are anonymous.

    python git_server.py [--listen HOST:PORT]   serve until SIGTERM or SIGINT
    python git_server.py --check [--listen ...] exit 0 when a server answers HTTP on that port (health check)

The listen address defaults to `$PROVISIONER_GIT_LISTEN`, else 0.0.0.0:18080. Port 0 picks a free port; the first
line on stdout names the URL being served.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import signal
import sys
import threading
from types import FrameType

from provisioner.gitserver import GitHttpServer
from provisioner.settings import Settings

LISTEN_ENV = "PROVISIONER_GIT_LISTEN"
DEFAULT_LISTEN = "0.0.0.0:18080"
CHECK_TIMEOUT_SECONDS = 5.0
# Any HTTP answer proves the server is up; a repository name that cannot exist keeps the check read-only.
CHECK_PATH = "/.health-check.git/info/refs?service=git-upload-pack"


def parse_listen(value: str) -> tuple[str, int]:
    host, separator, port = value.rpartition(":")
    if not separator or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "0.0.0.0", int(port)


def serve(host: str, port: int, settings: Settings) -> None:
    server = GitHttpServer(settings.git_repos_dir, host=host, port=port, token=settings.git_token or None)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    try:
        print(f"serving {settings.git_repos_dir} at {server.base_url}", flush=True)
        stop.wait()
    finally:
        server.stop()


def answers_http(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CHECK_TIMEOUT_SECONDS)
    try:
        connection.request("GET", CHECK_PATH)
        connection.getresponse().read()
    except OSError as error:
        print(f"git server on port {port} does not answer: {error}", file=sys.stderr)
        return False
    finally:
        connection.close()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=parse_listen, default=os.environ.get(LISTEN_ENV, DEFAULT_LISTEN))
    parser.add_argument("--check", action="store_true", help="only check that a server answers on the port")
    arguments = parser.parse_args(argv)
    listen = arguments.listen if isinstance(arguments.listen, tuple) else parse_listen(arguments.listen)
    host, port = listen
    if arguments.check:
        return 0 if answers_http(port) else 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(host, port, Settings.from_env())
    return 0


if __name__ == "__main__":
    sys.exit(main())
