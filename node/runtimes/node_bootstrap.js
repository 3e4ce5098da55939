// Nimbus nodejs runtime: speaks the AWS Lambda Runtime API at $AWS_LAMBDA_RUNTIME_API,
// loads the handler named by $_HANDLER from $LAMBDA_TASK_ROOT, and calls
// handler(event, context) for each invocation (async handlers and callbacks both work).
"use strict";
const net = require("net");
const path = require("path");

const [host, port] = process.env.AWS_LAMBDA_RUNTIME_API.split(":");
const BASE = "/2018-06-01/runtime";
const NEXT = BASE + "/invocation/next";

// One keep-alive HTTP/1.1 connection to the Runtime API, read directly: a call's
// answer and the request for the next call go in one write (pipelining), which
// node's http client cannot do. The API's answers are plain (a status line, a few
// headers, a Content-Length or chunked body); they come back in request order.
class RuntimeApi {
  constructor() {
    this.buf = Buffer.alloc(0);
    // Chunks not yet joined to buf, and how many bytes the response being read
    // needs: a large body is joined once, not once per chunk.
    this.pending = [];
    this.pendingLen = 0;
    this.need = 0;
    this.waiting = [];
    this.failed = null;
    this.sock = net.connect({ host, port: Number(port) });
    this.sock.setNoDelay(true);
    this.sock.on("data", (chunk) => {
      this.pending.push(chunk);
      this.pendingLen += chunk.length;
      if (this.buf.length + this.pendingLen < this.need) return;
      this.buf = Buffer.concat([this.buf, ...this.pending]);
      this.pending = [];
      this.pendingLen = 0;
      this.drain();
    });
    const fail = (e) => {
      this.failed = e || new Error("the Runtime API closed the connection");
      for (const w of this.waiting.splice(0)) w.reject(this.failed);
    };
    this.sock.on("error", fail);
    this.sock.on("close", () => fail(null));
  }

  static encode(method, urlPath, body, headers) {
    const payload = body === undefined ? Buffer.alloc(0) : Buffer.from(body);
    let head = `${method} ${urlPath} HTTP/1.1\r\nHost: ${host}:${port}\r\nContent-Length: ${payload.length}\r\n`;
    for (const [k, v] of Object.entries(headers || {})) head += `${k}: ${v}\r\n`;
    return Buffer.concat([Buffer.from(head + "\r\n", "latin1"), payload]);
  }

  send(bytes) {
    this.sock.write(bytes);
  }

  // The next response, in the order the requests went.
  receive() {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.drain();
    });
  }

  request(method, urlPath, body, headers) {
    this.send(RuntimeApi.encode(method, urlPath, body, headers));
    return this.receive();
  }

  // Hands out every complete response in the buffer to the oldest waiting receive.
  drain() {
    while (this.waiting.length) {
      const res = this.parse();
      if (!res) return;
      this.waiting.shift().resolve(res);
    }
  }

  parse() {
    const buf = this.buf;
    const end = buf.indexOf("\r\n\r\n");
    if (end < 0) return null;
    const lines = buf.toString("latin1", 0, end).split("\r\n");
    const status = Number(lines[0].split(" ")[1]);
    const headers = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    let at = end + 4;
    let body;
    if (headers["content-length"] !== undefined) {
      const len = Number(headers["content-length"]);
      if (buf.length < at + len) {
        this.need = at + len;
        return null;
      }
      body = buf.subarray(at, at + len);
      at += len;
    } else if ((headers["transfer-encoding"] || "").toLowerCase() === "chunked") {
      const parts = [];
      for (;;) {
        const eol = buf.indexOf("\r\n", at);
        if (eol < 0) return null;
        const size = parseInt(buf.toString("latin1", at, eol).split(";")[0], 16);
        at = eol + 2;
        if (size === 0) {
          // Trailers, up to an empty line.
          for (;;) {
            const t = buf.indexOf("\r\n", at);
            if (t < 0) return null;
            const empty = t === at;
            at = t + 2;
            if (empty) break;
          }
          break;
        }
        if (buf.length < at + size + 2) return null;
        parts.push(buf.subarray(at, at + size));
        at += size + 2;
      }
      body = Buffer.concat(parts);
    } else {
      body = Buffer.alloc(0);
    }
    this.buf = buf.subarray(at);
    this.need = 0;
    return { status, headers, body };
  }
}

const api = new RuntimeApi();

function errorBody(e) {
  return JSON.stringify({
    errorMessage: e && e.message ? e.message : String(e),
    errorType: e && e.name ? e.name : "Error",
    stackTrace: e && e.stack ? String(e.stack).split("\n") : [],
  });
}

async function loadHandler() {
  const handlerName = process.env._HANDLER;
  const dot = handlerName.lastIndexOf(".");
  const modulePath = path.resolve(process.env.LAMBDA_TASK_ROOT || process.cwd(), handlerName.slice(0, dot));
  const fnName = handlerName.slice(dot + 1);
  let mod;
  try {
    mod = require(modulePath);
  } catch (e) {
    if (e && e.code === "ERR_REQUIRE_ESM") {
      mod = await import(require("url").pathToFileURL(require.resolve(modulePath)).href);
    } else {
      throw e;
    }
  }
  const fn = mod[fnName] || (mod.default && mod.default[fnName]);
  if (typeof fn !== "function") throw new Error(`${handlerName} is not a function`);
  return fn;
}

function parseJson(text) {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    return undefined;
  }
}

function invoke(fn, event, context) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = (err, value) => {
      if (settled) return;
      settled = true;
      err ? reject(err) : resolve(value);
    };
    try {
      const r = fn(event, context, done);
      if (r && typeof r.then === "function") r.then((v) => done(null, v), (e) => done(e));
      else if (fn.length < 3) done(null, r);
    } catch (e) {
      done(e);
    }
  });
}

// A spare (pre-started, not yet specialised) runtime asks the node which function it
// becomes, then takes on its environment.
async function specialize() {
  if (process.env.NIMBUS_SPARE !== "1") return;
  const spec = JSON.parse((await api.request("GET", "/2018-06-01/nimbus/specialize")).body.toString());
  delete process.env.NIMBUS_SPARE;
  for (const [k, v] of Object.entries(spec.env)) process.env[k] = v;
  process.env._HANDLER = spec.handler;
}

// A call's answer, and with it the request for the next call.
function answer(urlPath, body, errorType) {
  const headers = { "Content-Type": "application/json" };
  if (errorType) headers["Lambda-Runtime-Function-Error-Type"] = errorType;
  return Buffer.concat([RuntimeApi.encode("POST", BASE + urlPath, body, headers), RuntimeApi.encode("GET", NEXT)]);
}

async function main() {
  await specialize();
  let fn;
  try {
    fn = await loadHandler();
  } catch (e) {
    await api.request("POST", BASE + "/init/error", errorBody(e), {
      "Content-Type": "application/json",
      "Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError",
    });
    process.exit(1);
  }
  api.send(RuntimeApi.encode("GET", NEXT));
  for (;;) {
    const next = await api.receive();
    const h = next.headers;
    const id = h["lambda-runtime-aws-request-id"];
    const deadline = Number(h["lambda-runtime-deadline-ms"] || 0);
    const context = {
      awsRequestId: id,
      invokedFunctionArn: h["lambda-runtime-invoked-function-arn"],
      functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
      functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
      memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
      getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
      clientContext: parseJson(h["lambda-runtime-client-context"]),
      // The W3C trace context of the call, for OpenTelemetry SDKs.
      traceparent: h["traceparent"] || "",
    };
    // As Lambda: the X-Ray header of the current call, for tracing SDKs.
    process.env._X_AMZN_TRACE_ID = h["lambda-runtime-trace-id"] || "";
    let out;
    try {
      const event = next.body.length ? JSON.parse(next.body.toString()) : null;
      const result = await invoke(fn, event, context);
      out = answer(`/invocation/${id}/response`, JSON.stringify(result === undefined ? null : result));
    } catch (e) {
      out = answer(`/invocation/${id}/error`, errorBody(e), "Unhandled");
    }
    api.send(out);
    await api.receive(); // the answer's 202; the next call follows it
  }
}

main();
