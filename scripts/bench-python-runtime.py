#!/usr/bin/env python3
"""The python runtime's own CPU per call: each bootstrap given runs N noop calls
against a minimal Runtime API on loopback (answers as the node's do: a status
line, a few headers, a Content-Length body), and its process's user+system time
is divided by N.

    scripts/bench-python-runtime.py node/runtimes/python_bootstrap.py OLD.py …
    # OLD.py e.g. from `git show REV:node/runtimes/python_bootstrap.py > /tmp/old.py`
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

N = int(os.environ.get("CALLS", "5000"))
TASK = tempfile.mkdtemp()
with open(os.path.join(TASK, "index.py"), "w") as f:
    f.write("def handler(event, context):\n    return event\n")
def serve(sock):
    conn, _ = sock.accept()
    f = conn.makefile("rb")
    n = 0
    while True:
        line = f.readline()
        if not line: return
        method = line.split()[0]
        length = 0
        while True:
            h = f.readline()
            if h in (b"\r\n", b""): break
            if h.lower().startswith(b"content-length:"): length = int(h.split(b":")[1])
        if length: f.read(length)
        if method == b"GET":
            n += 1
            if n > N:
                conn.close(); return
            body = b'{"bench": true}'
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nlambda-runtime-aws-request-id: r-%d\r\nlambda-runtime-deadline-ms: %d\r\nlambda-runtime-invoked-function-arn: arn:x\r\nlambda-runtime-trace-id: Root=1-abc\r\ncontent-length: %d\r\ndate: Sun, 06 Dec 2026 06:00:00 GMT\r\n\r\n%s" % (n, int(time.time()*1000)+3000, len(body), body))
        else:
            conn.sendall(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\ndate: Sun, 06 Dec 2026 06:00:00 GMT\r\n\r\n{}")
for script in sys.argv[1:]:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
    port = s.getsockname()[1]
    t = threading.Thread(target=serve, args=(s,)); t.start()
    env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}", _HANDLER="index.handler", LAMBDA_TASK_ROOT=TASK)
    p = subprocess.Popen([sys.executable, "-u", script], env=env, stderr=subprocess.DEVNULL)
    _, _, ru = os.wait4(p.pid, 0)
    t.join()
    print(f"{script}: {(ru.ru_utime + ru.ru_stime) / N * 1e6:.1f} us CPU per call ({N} calls, start included)")
