// Functions: the list, create, and one function's pages (code, invoke, logs,
// metrics, versions and aliases, triggers, async settings and dead letters); usage.
import { api, apiBytes, follow, socket, h, mount, failure, act, table, stateBadge, ago, base64, watchTask, can, session } from "./lib.js";
import { createEditor, editorText, unzip, zip, strFromU8 } from "./vendor/editor.js";
import { metricsPage } from "./metrics.js";

const TEMPLATES = {
  python3: ["index.py", "index.handler",
    "import json\n\n\ndef handler(event, context):\n    print(\"got\", json.dumps(event))\n    return {\"hello\": event.get(\"name\", \"world\")}\n"],
  nodejs: ["index.js", "index.handler",
    "exports.handler = async (event, context) => {\n  console.log(\"got\", JSON.stringify(event));\n  return { hello: event.name || \"world\" };\n};\n"],
};

const fnPath = (name) => `/v1/functions/${encodeURIComponent(name)}`;

export async function list(main) {
  const fs = (await api("GET", "/v1/functions")).body.functions;
  mount(main,
    h("div", { class: "row" }, h("h1", {}, "Functions"),
      can("developer") ? h("button", { id: "new-function", style: "margin-left:auto", onclick: () => { location.hash = "#/functions/new"; } }, "Create function") : null),
    table(fs, [
      ["Name", (f) => h("a", { href: `#/functions/${encodeURIComponent(f.name)}` }, f.name)],
      ["State", (f) => stateBadge(f.state)],
      ["Runtime", (f) => f.runtime],
      ["Memory", (f) => `${f.memory_mb} MB`],
      ["Online", (f) => (f.online ? "yes" : "offline")],
      ["Latest version", (f) => f.latest_version || "—"],
      ["Last modified", (f) => h("span", { title: f.updated_at }, ago(f.updated_at))],
    ], (f) => { location.hash = `#/functions/${encodeURIComponent(f.name)}`; }));
}

// The file a handler names: index.handler → index.py (python3) or index.js (nodejs).
function handlerFile(runtime, handler) {
  const base = handler.includes(".") ? handler.slice(0, handler.lastIndexOf(".")) : handler;
  if (runtime === "python3") return `${base.replaceAll(".", "/")}.py`;
  if (runtime === "nodejs") return `${base}.js`;
  return null;
}

export async function create(main) {
  const name = h("input", { id: "fn-name", placeholder: "hello", required: true });
  const runtime = h("select", { id: "fn-runtime" }, Object.keys(TEMPLATES).map((r) => h("option", { value: r }, r)));
  const handler = h("input", { id: "fn-handler", value: TEMPLATES.python3[1] });
  const memory = h("input", { id: "fn-memory", type: "number", min: 64, max: 3072, value: 128 });
  const holder = h("div", { class: "editor", id: "editor" });
  let editor = createEditor(holder, TEMPLATES.python3[2], "python3");
  runtime.addEventListener("change", () => {
    const [, hd, text] = TEMPLATES[runtime.value];
    handler.value = hd;
    holder.replaceChildren();
    editor = createEditor(holder, text, runtime.value);
  });
  const out = h("div", { id: "create-result" });
  const go = h("button", { id: "create", type: "submit" }, "Create");
  mount(main,
    h("h1", {}, "Create a function"),
    h("form", { class: "card", onsubmit: (ev) => { ev.preventDefault(); act(go, out, async () => {
      mount(out);
      const file = handlerFile(runtime.value, handler.value);
      const body = {
        name: name.value.trim(), runtime: runtime.value, handler: handler.value.trim(),
        memory_mb: Number(memory.value),
        code: { zip_base64: base64(zip({ [file]: editorText(editor) })) },
      };
      const r = (await api("POST", "/v1/functions", body)).body;
      const t = await watchTask(r.task_id, out);
      if (t.state === "Succeeded") location.hash = `#/functions/${encodeURIComponent(body.name)}/code`;
    }); } },
    h("div", { class: "row" },
      h("label", {}, "Name", name), h("label", {}, "Runtime", runtime),
      h("label", {}, "Handler", handler), h("label", {}, "Memory (MB)", memory)),
    holder,
    h("p", {}, go), out));
}

const TABS = [["overview", "Overview"], ["code", "Code"], ["invoke", "Invoke"], ["logs", "Logs"], ["metrics", "Metrics"],
  ["versions", "Versions and aliases"], ["triggers", "Triggers"], ["async", "Async and dead letters"]];

let stopFollowing = null;

export async function detail(main, name, tab) {
  if (stopFollowing) { stopFollowing.abort(); stopFollowing = null; }
  const f = (await api("GET", fnPath(name))).body.function;
  const body = h("div", { id: `tab-${tab}` });
  mount(main,
    h("div", { class: "row title" }, h("h1", {}, f.name), stateBadge(f.state), f.online ? null : h("span", { class: "muted" }, "offline")),
    f.state_reason ? h("div", { class: "error" }, f.state_reason) : null,
    h("div", { class: "tabs" }, TABS.map(([id, text]) =>
      h("a", { href: `#/functions/${encodeURIComponent(name)}/${id}`, class: id === tab ? "active" : null, id: `tab-link-${id}` }, text))),
    body);
  const pages = { overview, code, invoke, logs, metrics: metricsPage, versions, triggers, asyncPage };
  const refresh = () => detail(main, name, tab);
  await (pages[tab === "async" ? "asyncPage" : tab] || overview)(body, f, refresh);
}

async function overview(el, f, refresh) {
  const out = h("div");
  const memory = h("input", { type: "number", min: 64, max: 3072, value: f.memory_mb, id: "cfg-memory" });
  const timeout = h("input", { type: "number", min: 100, max: 900000, value: f.timeout_ms, id: "cfg-timeout" });
  const env = h("textarea", { rows: 4, id: "cfg-env" }, JSON.stringify(f.env, null, 2));
  const save = h("button", { id: "cfg-save" }, "Save configuration");
  save.onclick = () => act(save, out, async () => {
    let envValue;
    try { envValue = JSON.parse(env.value || "{}"); } catch { throw new Error("env must be a JSON object of strings"); }
    const r = (await api("PATCH", fnPath(f.name), { memory_mb: Number(memory.value), timeout_ms: Number(timeout.value), env: envValue })).body;
    await watchTask(r.task_id, out);
  });
  const toggle = h("button", { class: "secondary", id: "online-toggle" }, f.online ? "Take offline" : "Bring online");
  toggle.onclick = () => act(toggle, out, async () => {
    await api("POST", `${fnPath(f.name)}/${f.online ? "offline" : "online"}`, {});
    await refresh();
  });
  const del = h("button", { class: "danger", id: "delete-function" }, "Delete function");
  del.onclick = () => act(del, out, async () => {
    if (!confirm(`Delete ${f.name}, its versions, aliases and triggers?`)) return;
    const r = (await api("DELETE", fnPath(f.name))).body;
    const t = await watchTask(r.task_id, out);
    if (t.state === "Succeeded") location.hash = "#/functions";
  });
  mount(el,
    h("dl", { class: "kv card" }, [
      ["Runtime", f.runtime], ["Handler", f.handler], ["Memory", `${f.memory_mb} MB`], ["Timeout", `${f.timeout_ms} ms`],
      ["Online", f.online ? "yes" : "no (invocations get 409)"], ["Code", f.code_sha256 ? `${f.code_sha256.slice(0, 16)}… (${f.code_size} bytes)` : "—"],
      ["Latest version", f.latest_version || "—"], ["Reserved concurrency", f.reserved_concurrency ?? "none"],
      ["Provisioned concurrency", f.provisioned_concurrency], ["ARN", f.arn], ["Modified", f.updated_at],
    ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
    can("developer") ? h("div", { class: "card" }, h("h2", {}, "Configuration"),
      h("div", { class: "row" }, h("label", {}, "Memory (MB)", memory), h("label", {}, "Timeout (ms)", timeout)),
      h("label", { style: "display:flex" }, "Environment (JSON)", env), save, " ", toggle, " ", del) : null,
    out);
}

async function code(el, f) {
  if (!can("developer")) return mount(el, h("p", { class: "muted" }, "Your role may invoke this function, not read or change its code."));
  const out = h("div", { id: "deploy-result" });
  let files = {};
  if (f.code_sha256) {
    // Files only: directory entries come back as empty names ending in "/".
    const all = unzip(await apiBytes(`/v1/packages/${f.code_sha256}`));
    files = Object.fromEntries(Object.entries(all).filter(([k]) => !k.endsWith("/")));
  }
  const main = handlerFile(f.runtime, f.handler);
  const holder = h("div", { class: "editor", id: "editor" });
  let editor = null;
  if (main && files[main] !== undefined) {
    editor = createEditor(holder, strFromU8(files[main]), f.runtime);
  } else {
    holder.append(h("p", { class: "muted", style: "padding:8px" },
      main ? `${main} is not in the package.` : `A ${f.runtime} package is edited as a zip: upload one below.`));
  }
  const deploy = h("button", { id: "deploy", disabled: !editor }, "Deploy");
  deploy.onclick = () => act(deploy, out, async () => {
    mount(out);
    const next = { ...files, [main]: editorText(editor) };
    const r = (await api("PUT", `${fnPath(f.name)}/code`, { zip_base64: base64(zip(next)), runtime: f.runtime, handler: f.handler })).body;
    await watchTask(r.task_id, out);
  });
  const upload = h("input", { type: "file", accept: ".zip,application/zip", id: "zip-upload" });
  const send = h("button", { class: "secondary", id: "upload" }, "Upload zip and deploy");
  send.onclick = () => act(send, out, async () => {
    const file = upload.files[0];
    if (!file) throw new Error("choose a .zip first");
    const bytes = new Uint8Array(await file.arrayBuffer());
    const r = (await api("PUT", `${fnPath(f.name)}/code`, { zip_base64: base64(bytes) })).body;
    await watchTask(r.task_id, out);
  });
  mount(el,
    h("p", { class: "muted" }, "Files: ", Object.keys(files).sort().join(", ") || "none", main ? ` · editing ${main}` : ""),
    holder, h("p", {}, deploy),
    h("div", { class: "card" }, h("h2", {}, "Bigger packages"), upload, " ", send),
    out);
}

function eventKey(f) {
  return `nimbus.event.${session.who.tenant || session.tenant() || ""}.${f.name}`;
}

async function invoke(el, f) {
  const event = h("textarea", { rows: 6, id: "event" }, localStorage.getItem(eventKey(f)) || "{\n  \"name\": \"nimbus\"\n}");
  const qualifier = h("input", { id: "qualifier", placeholder: "$LATEST, a version or an alias" });
  const out = h("div", { id: "invoke-result" });
  const run = h("button", { id: "invoke" }, "Invoke");
  const parse = () => {
    localStorage.setItem(eventKey(f), event.value);
    try { return JSON.parse(event.value); } catch (e) { throw new Error(`the event is not JSON: ${e.message}`); }
  };
  const q = () => (qualifier.value.trim() ? `?qualifier=${encodeURIComponent(qualifier.value.trim())}` : "");
  run.onclick = () => act(run, out, async () => {
    mount(out);
    const ev = parse();
    const t0 = performance.now();
    let r;
    try {
      r = await api("POST", `${fnPath(f.name)}/invoke${q()}`, ev);
    } catch (e) { mount(out, failure(e)); return; }
    const ms = performance.now() - t0;
    const hd = (k) => r.headers.get(k);
    const id = hd("x-nimbus-request-id");
    const error = hd("x-nimbus-function-error");
    const logs = h("pre", { id: "invoke-logs" }, "…");
    mount(out, h("div", { class: "card" },
      h("dl", { class: "kv" }, [
        ["Status", error ? `function error (${error})` : "succeeded"],
        ["Round trip", `${ms.toFixed(1)} ms`],
        ["Cold start", hd("x-nimbus-cold-start") === "true" ? `yes (init ${hd("x-nimbus-init-ms") || "?"} ms)` : "no"],
        ["Version", hd("x-nimbus-executed-version")], ["Request id", id],
      ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v || "")])),
      h("h2", {}, "Result"), h("pre", { id: "invoke-output", class: error ? "error" : null }, JSON.stringify(r.body, null, 2)),
      h("h2", {}, "Logs of this call"), logs));
    // Log lines arrive just after the answer; wait for the REPORT line.
    for (let i = 0; i < 30; i++) {
      const lines = (await api("GET", `${fnPath(f.name)}/logs?request_id=${encodeURIComponent(id)}&limit=200`)).body.lines;
      logs.textContent = lines.map((l) => l.message).join("\n");
      if (lines.some((l) => l.message.startsWith("REPORT"))) break;
      await new Promise((res) => setTimeout(res, 100));
    }
  });
  const queued = h("button", { class: "secondary", id: "invoke-async" }, "Invoke asynchronously");
  queued.onclick = () => act(queued, out, async () => {
    const r = (await api("POST", `${fnPath(f.name)}/invoke${q()}`, parse(), { "x-nimbus-invocation-type": "async" })).body;
    const states = h("ul", { id: "async-states" });
    const result = h("pre");
    mount(out, h("div", { class: "card" }, h("div", {}, "Invocation ", h("code", {}, r.invocation_id)), states, result));
    await new Promise((resolve) => {
      const ws = socket(`/v1/invocations/${encodeURIComponent(r.invocation_id)}/watch`);
      ws.onmessage = (m) => {
        const v = JSON.parse(m.data);
        states.append(h("li", {}, stateBadge(v.state), v.attempts ? ` attempt ${v.attempts}` : ""));
        result.textContent = JSON.stringify(v.result ?? v.error ?? null, null, 2);
      };
      ws.onclose = resolve;
      ws.onerror = () => { out.append(failure("the watch websocket failed")); resolve(); };
    });
  });
  mount(el, h("div", { class: "card" }, h("label", { style: "display:flex" }, "Test event (saved in this browser)", event),
    h("div", { class: "row" }, h("label", {}, "Qualifier", qualifier)), run, " ", queued), out);
}

function logLine(l) {
  return `${l.timestamp}  ${l.request_id || ""}  ${l.message}`;
}

async function logs(el, f) {
  const pre = h("pre", { id: "log-lines" });
  const r = (await api("GET", `${fnPath(f.name)}/logs?limit=200`)).body;
  pre.textContent = r.lines.map(logLine).join("\n") || "(no lines yet)";
  const tail = h("button", { class: "secondary", id: "follow" }, "Follow");
  tail.onclick = () => {
    if (stopFollowing) { stopFollowing.abort(); stopFollowing = null; tail.textContent = "Follow"; return; }
    stopFollowing = new AbortController();
    tail.textContent = "Stop following";
    follow(`${fnPath(f.name)}/logs?limit=0&follow=true`, (l) => {
      pre.textContent += `\n${logLine(l)}`;
      pre.scrollTop = pre.scrollHeight;
    }, stopFollowing.signal).catch((e) => { if (e.name !== "AbortError") el.append(failure(e)); });
  };
  mount(el, h("p", {}, tail), pre);
}

async function versions(el, f, refresh) {
  const out = h("div", { id: "versions-result" });
  const vs = (await api("GET", `${fnPath(f.name)}/versions`)).body.versions;
  const as = (await api("GET", `${fnPath(f.name)}/aliases`)).body.aliases;
  const publish = h("button", { id: "publish" }, "Publish $LATEST as a version");
  publish.onclick = () => act(publish, out, async () => {
    const r = (await api("POST", `${fnPath(f.name)}/versions`, { description: "from the console" })).body;
    const t = await watchTask(r.task_id, out);
    if (t.state === "Succeeded") await refresh();
  });
  const options = () => vs.map((v) => h("option", { value: v.version }, v.version));
  const alias = h("input", { id: "alias-name", placeholder: "live" });
  const main = h("select", { id: "alias-version" }, options());
  const extra = h("select", { id: "alias-extra" }, h("option", { value: "" }, "none"), options());
  const weight = h("input", { id: "alias-weight", type: "range", min: 0, max: 100, step: 1, value: 0 });
  const shown = h("span", { id: "alias-weight-label" }, "0 %");
  const split = () => { shown.textContent = extra.value ? `${100 - weight.value} % → ${main.value}, ${weight.value} % → ${extra.value}` : "all calls → the version"; };
  weight.addEventListener("input", split);
  extra.addEventListener("change", split);
  main.addEventListener("change", split);
  split();
  const save = h("button", { id: "alias-save" }, "Save alias");
  save.onclick = () => act(save, out, async () => {
    const weights = extra.value && Number(weight.value) > 0 ? { [extra.value]: Number(weight.value) / 100 } : {};
    await api("PUT", `${fnPath(f.name)}/aliases/${encodeURIComponent(alias.value.trim())}`, { version: main.value, additional_version_weights: weights });
    await refresh();
  });
  const pick = (a) => {
    alias.value = a.name; main.value = a.version;
    const [[v, w] = ["", 0]] = Object.entries(a.additional_version_weights || {});
    extra.value = v; weight.value = Math.round(w * 100); split();
  };
  mount(el,
    h("h2", {}, "Versions"),
    table(vs, [["Version", (v) => v.version], ["Code", (v) => v.code_sha256.slice(0, 12)], ["Memory", (v) => `${v.memory_mb} MB`],
      ["Description", (v) => v.description], ["Published", (v) => ago(v.created_at)]]),
    can("developer") ? h("p", {}, publish) : null,
    h("h2", {}, "Aliases"),
    table(as, [["Alias", (a) => a.name], ["Version", (a) => a.version],
      ["Gray release", (a) => Object.entries(a.additional_version_weights || {}).map(([v, w]) => `${Math.round(w * 100)} % → ${v}`).join(", ") || "—"]],
    can("developer") ? pick : null),
    can("developer") && vs.length ? h("div", { class: "card", id: "alias-form" }, h("h2", {}, "Route an alias"),
      h("div", { class: "row" }, h("label", {}, "Alias", alias), h("label", {}, "Version", main),
        h("label", {}, "Gray release to", extra), h("label", {}, "Weight", weight), shown), save) : null,
    out);
}

function triggerText(t) {
  switch (t.type) {
    case "http": return `${(t.methods || []).join(",")} ${t.url_path}${t.auth === "none" ? " (public)" : ""}`;
    case "timer": return `cron ${t.cron}`;
    case "queue": return `queue ${t.queue}`;
    case "storage": return `bucket ${t.bucket} ${(t.events || []).join(",")} ${t.prefix || ""}*${t.suffix || ""}`;
    default: return JSON.stringify(t);
  }
}

async function triggers(el, f, refresh) {
  const out = h("div");
  const ts = (await api("GET", `${fnPath(f.name)}/triggers`)).body.triggers;
  const kind = h("select", { id: "trigger-type" }, ["http", "timer", "queue", "storage"].map((k) => h("option", { value: k }, k)));
  const value = h("input", { id: "trigger-value", placeholder: "/hello" });
  const hints = { http: "/hello", timer: "0 */5 * * * *", queue: "orders", storage: "uploads" };
  kind.addEventListener("change", () => { value.placeholder = hints[kind.value]; });
  const add = h("button", { id: "trigger-add" }, "Add trigger");
  add.onclick = () => act(add, out, async () => {
    const field = { http: "path", timer: "cron", queue: "queue", storage: "bucket" }[kind.value];
    await api("POST", `${fnPath(f.name)}/triggers`, { type: kind.value, [field]: value.value.trim() });
    await refresh();
  });
  mount(el,
    table(ts, [["Type", (t) => t.type], ["Settings", triggerText], ["Added", (t) => ago(t.created_at)],
      ["", (t) => can("developer") ? h("button", { class: "danger", onclick: (ev) => act(ev.target, out, async () => {
        await api("DELETE", `${fnPath(f.name)}/triggers/${encodeURIComponent(t.id)}`); await refresh();
      }) }, "Delete") : ""]]),
    can("developer") ? h("div", { class: "card" }, h("div", { class: "row" }, h("label", {}, "Type", kind), h("label", {}, "Path, cron, queue or bucket", value)), add) : null,
    out);
}

async function asyncPage(el, f) {
  const out = h("div");
  const a = f.async || {};
  const num = (id, v, min, max) => h("input", { id, type: "number", min, max, value: v });
  const retries = num("async-retries", a.max_retries ?? 2, 0, 10);
  const age = num("async-age", a.max_event_age_s ?? 21600, 1, 21600);
  const onSuccess = h("input", { id: "async-success", value: a.on_success?.function || "", placeholder: "function" });
  const onFailure = h("input", { id: "async-failure", value: a.on_failure?.function || "", placeholder: "function" });
  const save = h("button", { id: "async-save" }, "Save");
  save.onclick = () => act(save, out, async () => {
    const next = { ...a, max_retries: Number(retries.value), max_event_age_s: Number(age.value) };
    delete next.on_success; delete next.on_failure;
    if (onSuccess.value.trim()) next.on_success = { function: onSuccess.value.trim() };
    if (onFailure.value.trim()) next.on_failure = { function: onFailure.value.trim() };
    const r = (await api("PATCH", fnPath(f.name), { async: next })).body;
    await watchTask(r.task_id, out);
  });
  const dl = (await api("GET", `${fnPath(f.name)}/dead-letters`)).body;
  const letters = dl.dead_letters;
  mount(el,
    h("div", { class: "card" }, h("h2", {}, "Asynchronous invocations"),
      h("div", { class: "row" }, h("label", {}, "Retries", retries), h("label", {}, "Max event age (s)", age),
        h("label", {}, "On success", onSuccess), h("label", {}, "On failure", onFailure)),
      can("developer") ? save : null),
    h("h2", {}, "Dead letters"),
    table(letters, [["Invocation", (d) => d.invocation_id], ["Attempts", (d) => d.attempts],
      ["Last error", (d) => JSON.stringify(d.error ?? (d.errors || []).slice(-1)[0] ?? "")], ["When", (d) => ago(d.updated_at)],
      ["", (d) => can("developer") ? h("button", { class: "secondary", onclick: (ev) => act(ev.target, out, async () => {
        const r = (await api("POST", `/v1/dead-letters/${encodeURIComponent(d.id)}/replay`, {})).body;
        out.append(h("div", { class: "notice" }, `Replayed as ${r.invocation_id || JSON.stringify(r)}`));
      }) }, "Replay") : ""]]),
    out);
}

export async function usage(main) {
  const byDay = (await api("GET", "/v1/usage?group_by=day")).body;
  const byFn = (await api("GET", "/v1/usage?group_by=function")).body;
  const max = Math.max(1, ...byDay.items.map((i) => i.requests));
  const bars = h("div", { class: "bars", id: "usage-chart" }, byDay.items.map((i) =>
    h("div", { title: `${i.day}: ${i.requests} requests, ${i.errors} errors`, style: `height:${(100 * i.requests) / max}%` },
      i.errors ? h("div", { class: "err", style: `height:${(100 * i.errors) / Math.max(1, i.requests)}%;position:absolute;bottom:0;left:0;right:0` }) : null)));
  mount(main,
    h("h1", {}, "Usage"),
    h("p", { class: "muted" }, `${byDay.from} to ${byDay.to}: ${byDay.totals.requests} requests, ${byDay.totals.gb_seconds.toFixed(3)} GB-s, estimated cost ${Number(byDay.estimated_cost).toFixed(4)} ${byDay.currency || ""}`),
    h("div", { class: "card" }, h("h2", {}, "Requests per day (errors in red)"), bars),
    table(byFn.items, [["Function", (i) => i.function], ["Requests", (i) => i.requests], ["Errors", (i) => i.errors],
      ["Throttles", (i) => i.throttles], ["Cold starts", (i) => i.cold_starts], ["GB-s", (i) => i.gb_seconds.toFixed(3)]]));
}
