# Nimbus python3 runtime: speaks the AWS Lambda Runtime API at $AWS_LAMBDA_RUNTIME_API,
# imports the handler named by $_HANDLER from $LAMBDA_TASK_ROOT, and calls
# handler(event, context) for each invocation, reusing the process (resident model).
import importlib
import json
import os
import socket
import sys
import time
import traceback

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = "/2018-06-01/runtime"
NEXT = BASE + "/invocation/next"


class RuntimeApi:
    # One keep-alive HTTP/1.1 connection to the Runtime API. http.client parses
    # every response's headers with the email package, which cost more per call than
    # a noop handler; the API's answers are plain (a status line, a few headers, a
    # Content-Length or chunked body), so they are read here directly.
    def __init__(self, api):
        host, _, port = api.rpartition(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")
        self.host = api

    def encode(self, method, path, body=b"", headers=None):
        head = "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n" % (
            method, path, self.host, len(body))
        if headers:
            head += "".join("%s: %s\r\n" % kv for kv in headers.items())
        return head.encode("latin-1") + b"\r\n" + body

    def request(self, method, path, body=b"", headers=None):
        self.sock.sendall(self.encode(method, path, body, headers))
        return self.receive()

    def receive(self):
        # One response, in the order the requests went.
        rfile = self.rfile
        status = rfile.readline().split(None, 2)
        if len(status) < 2:
            raise ConnectionError("the Runtime API closed the connection")
        fields = {}
        while True:
            line = rfile.readline()
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ConnectionError("the Runtime API closed the connection")
            k, _, v = line.decode("latin-1").partition(":")
            fields[k.strip().lower()] = v.strip()
        length = fields.get("content-length")
        if length is not None:
            data = rfile.read(int(length))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(rfile.read(size))
                rfile.readline()
            data = b"".join(parts)
        else:
            data = b""
        return int(status[1]), fields, data


class ClientContext:
    # As the AWS python runtime shows it: client, custom and env.
    def __init__(self, doc):
        self.client = doc.get("client")
        self.custom = doc.get("custom")
        self.env = doc.get("env")


def client_context(text):
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return ClientContext(doc) if isinstance(doc, dict) else None


class Context:
    def __init__(self, headers):
        self.aws_request_id = headers.get("lambda-runtime-aws-request-id", "")
        self.invoked_function_arn = headers.get("lambda-runtime-invoked-function-arn", "")
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.log_group_name = "/nimbus/" + self.function_name
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self._deadline_ms = int(headers.get("lambda-runtime-deadline-ms", "0"))
        self.client_context = client_context(headers.get("lambda-runtime-client-context"))
        # The W3C trace context of the call, for OpenTelemetry SDKs.
        self.traceparent = headers.get("traceparent", "")
        self.identity = None

    def get_remaining_time_in_millis(self):
        return max(0, self._deadline_ms - int(time.time() * 1000))


def error_body(exc):
    return json.dumps({
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }).encode()


def answer(conn, path, body, error_type=None):
    # The call's answer, and with it (HTTP/1.1 pipelining: one write, one wake-up
    # of the server) the request for the next call.
    headers = {"Content-Type": "application/json"}
    if error_type:
        headers["Lambda-Runtime-Function-Error-Type"] = error_type
    return conn.encode("POST", BASE + path, body, headers) + conn.encode("GET", NEXT)


def specialize(conn):
    # A spare (pre-started, not yet specialised) runtime asks the node which function
    # it becomes, then takes on its environment.
    if os.environ.get("NIMBUS_SPARE") != "1":
        return
    _, _, data = conn.request("GET", "/2018-06-01/nimbus/specialize")
    spec = json.loads(data)
    del os.environ["NIMBUS_SPARE"]
    os.environ.update(spec["env"])
    os.environ["_HANDLER"] = spec["handler"]


def main():
    conn = RuntimeApi(API)
    specialize(conn)
    task_root = os.environ.get("LAMBDA_TASK_ROOT", os.getcwd())
    sys.path.insert(0, task_root)
    try:
        module_name, func_name = os.environ["_HANDLER"].rsplit(".", 1)
        handler = getattr(importlib.import_module(module_name), func_name)
    except Exception as e:  # noqa: BLE001 - any init failure is reported
        conn.request("POST", BASE + "/init/error", error_body(e), {
            "Content-Type": "application/json",
            "Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError"})
        sys.exit(1)
    conn.sock.sendall(conn.encode("GET", NEXT))
    while True:
        _, headers, body = conn.receive()
        request_id = headers.get("lambda-runtime-aws-request-id", "")
        # As Lambda: the X-Ray header of the current call, for tracing SDKs.
        os.environ["_X_AMZN_TRACE_ID"] = headers.get("lambda-runtime-trace-id", "")
        try:
            event = json.loads(body) if body else None
            result = handler(event, Context(headers))
            out = answer(conn, "/invocation/" + request_id + "/response", json.dumps(result).encode())
        except Exception as e:  # noqa: BLE001 - the function's error goes back to the caller
            out = answer(conn, "/invocation/" + request_id + "/error", error_body(e), "Unhandled")
        sys.stdout.flush()
        conn.sock.sendall(out)
        conn.receive()  # the answer's 202; the next call follows it


if __name__ == "__main__":
    main()
