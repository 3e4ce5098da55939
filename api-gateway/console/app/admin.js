// Keys (owners and admins), tenants and their limits (admins).
import { api, h, mount, act, table, ago, can, session } from "./lib.js";

const ROLES = ["invoker", "developer", "owner"];

// Shows a secret once, with a button that copies it.
function once(label, secret) {
  return h("div", { class: "notice", id: "shown-once" }, `${label} (shown once): `, h("code", { id: "secret" }, secret), " ",
    h("button", { class: "secondary", onclick: () => navigator.clipboard.writeText(secret) }, "Copy"));
}

export async function keys(main) {
  const ks = (await api("GET", "/v1/api-keys")).body.api_keys;
  const out = h("div");
  const name = h("input", { id: "key-name", placeholder: "ci" });
  const role = h("select", { id: "key-role" }, (can("admin") ? [...ROLES, "admin"] : ROLES).map((r) => h("option", { value: r }, r)));
  const tenant = can("admin") ? h("input", { id: "key-tenant", placeholder: "tenant (admins)" }) : null;
  const make = h("button", { id: "key-create" }, "Create key");
  make.onclick = () => act(make, out, async () => {
    const body = { name: name.value.trim(), role: role.value };
    if (tenant && tenant.value.trim()) body.tenant = tenant.value.trim();
    const r = (await api("POST", "/v1/api-keys", body)).body;
    await keys(main);
    main.append(once(`Key ${r.name}`, r.api_key));
  });
  mount(main,
    h("h1", {}, "API keys"),
    table(ks, [["Name", (k) => k.name], ["Role", (k) => k.role], ["Tenant", (k) => k.tenant || "—"], ["Id", (k) => k.id],
      ["Created", (k) => ago(k.created_at)], ["", (k) => k.revoked ? "revoked" : h("button", { class: "danger", onclick: (ev) => act(ev.target, out, async () => {
        if (!confirm(`Revoke ${k.name}? It stops working at once.`)) return;
        await api("DELETE", `/v1/api-keys/${encodeURIComponent(k.id)}`);
        await keys(main);
      }) }, "Revoke")]]),
    h("div", { class: "card" }, h("h2", {}, "New key"),
      h("div", { class: "row" }, h("label", {}, "Name", name), h("label", {}, "Role", role), tenant ? h("label", {}, "Tenant", tenant) : null), make),
    out);
}

const LIMITS = ["max_concurrency", "rate_per_sec", "max_functions", "max_memory_mb", "max_queued_events", "max_queues",
  "max_buckets", "max_triggers", "max_objects", "monthly_gb_seconds", "monthly_requests"];

function limitsForm(t, out, done) {
  const inputs = LIMITS.map((k) => [k, h("input", { type: "number", min: 0, id: `limit-${k}`, value: t.limits[k] ?? "", placeholder: "no cap" })]);
  const save = h("button", { id: "limits-save" }, `Save limits of ${t.name}`);
  save.onclick = () => act(save, out, async () => {
    const body = { ...t.limits };
    for (const [k, el] of inputs) body[k] = el.value === "" ? null : Number(el.value);
    await api("PUT", `/v1/tenants/${encodeURIComponent(t.name)}/limits`, body);
    await done();
  });
  return h("div", { class: "card", id: "limits-form" }, h("h2", {}, `Limits of ${t.name}`),
    h("div", { class: "row" }, inputs.map(([k, el]) => h("label", {}, k.replaceAll("_", " "), el))), save);
}

export async function tenants(main) {
  const ts = (await api("GET", "/v1/tenants")).body.tenants;
  const out = h("div");
  const editing = h("div");
  const name = h("input", { id: "tenant-name", placeholder: "acme" });
  const make = h("button", { id: "tenant-create" }, "Create tenant");
  make.onclick = () => act(make, out, async () => {
    const r = (await api("POST", "/v1/tenants", { name: name.value.trim() })).body;
    await tenants(main);
    main.append(once(`Owner key of ${r.tenant.name}`, r.api_key));
  });
  mount(main,
    h("h1", {}, "Tenants"),
    table(ts, [["Name", (t) => t.name], ["Concurrency", (t) => t.limits.max_concurrency], ["Rate/s", (t) => t.limits.rate_per_sec],
      ["Functions", (t) => t.limits.max_functions], ["Monthly requests", (t) => t.limits.monthly_requests ?? "no cap"], ["Created", (t) => ago(t.created_at)],
      ["", (t) => h("button", { class: "secondary", onclick: (ev) => { ev.stopPropagation(); session.setTenant(t.name); location.hash = "#/functions"; } }, "Open")]],
    (t) => mount(editing, limitsForm(t, out, () => tenants(main)))),
    editing,
    h("div", { class: "card" }, h("h2", {}, "New tenant"), h("div", { class: "row" }, h("label", {}, "Name", name)), make),
    out);
}

// For admins: which tenant's functions the console shows.
export function tenantPicker(changed) {
  const input = h("input", { id: "acting-tenant", value: session.tenant() || "", placeholder: "tenant", size: 10 });
  input.addEventListener("change", () => { session.setTenant(input.value.trim()); changed(); });
  return h("span", { style: "margin-left:10px" }, "acting in ", input);
}

