#!/usr/bin/env python3
"""Run a real PostgreSQL 16 with pgvector (PyPI pgserver) for faceall's tests
and benchmarks, in a data directory of the caller's.

    pg_serve.py DIR [--password PW]

Prints one line, the libpq URI (postgresql://postgres:PW@/postgres?host=SOCKETDIR),
then reads commands on stdin, one per line:
    stop    stop the server (fast shutdown), as if the database went away
    start   start it again
    uri     print the URI again
On end of input (the caller exited) the server is stopped. With --password,
logins over the socket need that password (scram-sha-256), so a wrong one is
refused as it would be in production.
"""
import argparse
import sys
from pathlib import Path

import pgserver
from pgserver import _commands


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--password")
    a = ap.parse_args()
    d = Path(a.dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    srv = pgserver.get_server(d, cleanup_mode="stop")
    uri = srv.get_uri()
    if a.password:
        srv.psql(f"ALTER USER postgres PASSWORD '{a.password}';")
        hba = d / "pg_hba.conf"
        lines = []
        for line in hba.read_text().splitlines():
            parts = line.split()
            if parts and parts[0] == "local" and parts[-1] == "trust":
                line = line[: line.rfind("trust")] + "scram-sha-256"
            lines.append(line)
        hba.write_text("\n".join(lines) + "\n")
        srv.psql("SELECT pg_reload_conf();")
        uri = uri.replace("postgres:@", f"postgres:{a.password}@", 1)
    print(uri, flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stop":
            _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=d, user=srv.system_user)
            print("stopped", flush=True)
        elif cmd == "start":
            with srv._lock:
                srv.ensure_postgres_running()
            print("started", flush=True)
        elif cmd == "uri":
            print(uri, flush=True)


if __name__ == "__main__":
    main()
