// Shared by the console's pages: the session, the API client, and a small DOM
// helper that only ever sets text (never HTML), so nothing a tenant wrote can run.

const KEY = "nimbus.key";
const TENANT = "nimbus.tenant";

// The API key lives in this tab's sessionStorage only: never in a URL, never in
// localStorage, gone when the tab closes.
export const session = {
  key: () => sessionStorage.getItem(KEY),
  setKey: (k) => sessionStorage.setItem(KEY, k),
  // Admins act on one tenant's resources through x-nimbus-tenant.
  tenant: () => sessionStorage.getItem(TENANT),
  setTenant: (t) => (t ? sessionStorage.setItem(TENANT, t) : sessionStorage.removeItem(TENANT)),
  clear: () => { sessionStorage.removeItem(KEY); sessionStorage.removeItem(TENANT); },
  who: null,
};

const RANK = { invoker: 1, developer: 2, owner: 3, admin: 4 };

// Whether the signed-in key's role is at least `role`.
export function can(role) {
  return session.who && RANK[session.who.role] >= RANK[role];
}

// Whether the pages of one tenant's resources can be shown (admins pick a tenant).
export function inTenant() {
  return session.who && (session.who.tenant || session.tenant());
}

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(`${status} ${e.code || "Error"}: ${e.message || ""}`);
    this.status = status;
    this.code = e.code;
  }
}

function headers(extra) {
  const h = { ...extra };
  const key = session.key();
  if (key) h.authorization = `Bearer ${key}`;
  if (session.who && session.who.role === "admin" && session.tenant()) h["x-nimbus-tenant"] = session.tenant();
  return h;
}

// Calls the API; returns {status, headers, body}. A non-2xx answer throws ApiError.
export async function api(method, path, body, extra = {}) {
  const init = { method, headers: headers(extra) };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch { v = text; }
  if (!r.ok) throw new ApiError(r.status, v);
  return { status: r.status, headers: r.headers, body: v };
}

// GETs raw bytes (a code package).
export async function apiBytes(path) {
  const r = await fetch(path, { headers: headers({}) });
  if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
  return new Uint8Array(await r.arrayBuffer());
}

// Reads a server-sent event stream (fetch, so the key goes in a header), calling
// `onEvent` with each event's JSON until `signal` aborts it.
export async function follow(path, onEvent, signal) {
  const r = await fetch(path, { headers: headers({ accept: "text/event-stream" }), signal });
  if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const data = ev.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) { try { onEvent(JSON.parse(data)); } catch { /* not JSON: a keep-alive */ } }
    }
  }
}

// A websocket to `path`, authenticated by the subprotocol header (browsers cannot
// set Authorization on a websocket).
export function socket(path) {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return new WebSocket(url, ["nimbus", `bearer.${session.key()}`]);
}

// h("button", {onclick, class: "x"}, "text", child…): an element. Strings become text
// nodes; attributes starting with "on" are listeners.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Replaces the children of `el`.
export function mount(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

// An error line for `e`.
export function failure(e) {
  return h("div", { class: "error", role: "alert" }, e && e.message ? e.message : String(e));
}

// Runs `fn` from a button: disables it meanwhile, and shows an error in `out`.
export async function act(button, out, fn) {
  button.disabled = true;
  try {
    await fn();
  } catch (e) {
    if (out) out.append(failure(e));
    else alert(e.message);
  } finally {
    button.disabled = false;
  }
}

// A table of `rows`; `cols` are [title, row => cell]; `onRow` makes rows links.
export function table(rows, cols, onRow) {
  if (!rows.length) return h("p", { class: "muted" }, "None yet.");
  return h("table", {},
    h("thead", {}, h("tr", {}, cols.map(([t]) => h("th", {}, t)))),
    h("tbody", {}, rows.map((r) => h("tr", onRow ? { class: "link", onclick: () => onRow(r) } : {},
      cols.map(([, f]) => h("td", {}, f(r)))))));
}

export function stateBadge(s) {
  return h("span", { class: `state-${s}` }, s);
}

export function ago(rfc3339) {
  if (!rfc3339) return "";
  const s = (Date.now() - Date.parse(rfc3339)) / 1000;
  if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return rfc3339.slice(0, 10);
}

export function base64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// Follows a task until it ends, rendering its steps into `el`; returns the task.
export async function watchTask(id, el) {
  for (;;) {
    // A long poll: the answer comes as the task ends, or after 2 s to show its steps.
    const asked = Date.now();
    const t = (await api("GET", `/v1/tasks/${encodeURIComponent(id)}?wait=2`)).body;
    mount(el, h("div", { class: "task", "data-task-state": t.state },
      h("div", {}, "Task ", h("code", {}, t.kind), ": ", stateBadge(t.state)),
      h("ul", { class: "steps" }, (t.steps || []).map((s) =>
        h("li", {}, `${s.service}.${s.action} `, stateBadge(s.state), s.error ? ` — ${s.error}` : ""))),
      t.error ? h("div", { class: "error" }, t.error) : null));
    if (t.state === "Succeeded" || t.state === "Failed") return t;
    if (Date.now() - asked < 200) await new Promise((r) => setTimeout(r, 200));
  }
}
