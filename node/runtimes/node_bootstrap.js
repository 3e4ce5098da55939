// Nimbus nodejs runtime: speaks the AWS Lambda Runtime API at $AWS_LAMBDA_RUNTIME_API,
// loads the handler named by $_HANDLER from $LAMBDA_TASK_ROOT, and calls
// handler(event, context) for each invocation (async handlers and callbacks both work).
"use strict";
const http = require("http");
const path = require("path");

const [host, port] = process.env.AWS_LAMBDA_RUNTIME_API.split(":");
const BASE = "/2018-06-01/runtime";
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(method, urlPath, body, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, method, path: BASE + urlPath, agent, headers: headers || {} }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on("error", reject);
    if (body) req.write(body);
    req.end();
  });
}

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
  const spec = await new Promise((resolve, reject) => {
    const req = http.request({ host, port, method: "GET", path: "/2018-06-01/nimbus/specialize", agent }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve(JSON.parse(Buffer.concat(chunks).toString())));
    });
    req.on("error", reject);
    req.end();
  });
  delete process.env.NIMBUS_SPARE;
  for (const [k, v] of Object.entries(spec.env)) process.env[k] = v;
  process.env._HANDLER = spec.handler;
}

async function main() {
  await specialize();
  let fn;
  try {
    fn = await loadHandler();
  } catch (e) {
    await request("POST", "/init/error", errorBody(e), {
      "Content-Type": "application/json",
      "Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError",
    });
    process.exit(1);
  }
  for (;;) {
    const next = await request("GET", "/invocation/next");
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
    try {
      const event = next.body.length ? JSON.parse(next.body.toString()) : null;
      const result = await invoke(fn, event, context);
      await request("POST", `/invocation/${id}/response`, JSON.stringify(result === undefined ? null : result), {
        "Content-Type": "application/json",
      });
    } catch (e) {
      await request("POST", `/invocation/${id}/error`, errorBody(e), {
        "Content-Type": "application/json",
        "Lambda-Runtime-Function-Error-Type": "Unhandled",
      });
    }
  }
}

main();
