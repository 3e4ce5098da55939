// The Nimbus console: a client of the public API. Routes live in the URL's hash
// (#/functions/NAME/invoke), so the gateway serves one page.
import { session, api, h, mount, failure, can, inTenant } from "./lib.js";
import * as functions from "./functions.js";
import * as admin from "./admin.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");

function signIn(message) {
  const key = h("input", { id: "api-key", type: "password", autocomplete: "off", placeholder: "nmb_…", "aria-label": "API key" });
  const out = h("div");
  const form = h("form", {
    class: "card signin",
    onsubmit: async (ev) => {
      ev.preventDefault();
      session.setKey(key.value.trim());
      try {
        await start();
      } catch (e) {
        session.clear();
        mount(out, failure(e));
      }
    },
  },
  h("h1", {}, "Sign in to Nimbus"),
  h("p", { class: "muted" }, "Paste an API key. It stays in this tab only (sessionStorage) and is sent in the Authorization header."),
  h("label", { style: "display:flex" }, "API key", key),
  h("button", { id: "sign-in", type: "submit" }, "Sign in"),
  message ? h("div", { class: "error" }, message) : null,
  out);
  mount(nav);
  mount(who);
  mount(main, form);
  key.focus();
}

function navigation() {
  const links = [];
  if (inTenant()) {
    links.push(["#/functions", "Functions"], ["#/usage", "Usage"]);
  }
  if (can("owner")) links.push(["#/keys", "API keys"]);
  if (can("admin")) links.push(["#/tenants", "Tenants"]);
  const here = location.hash || "#/";
  mount(nav, links.map(([href, text]) => h("a", { href, class: here.startsWith(href) ? "active" : null }, text)));
  const w = session.who;
  const acting = w.role === "admin"
    ? admin.tenantPicker(() => { navigation(); route(); })
    : null;
  mount(who,
    `${w.tenant ? w.tenant + " · " : ""}${w.role}`,
    acting,
    h("button", { class: "secondary", id: "sign-out", onclick: () => { session.clear(); location.hash = "#/"; signIn(); } }, "Sign out"));
}

async function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "").split("/").map(decodeURIComponent);
  navigation();
  try {
    switch (parts[0]) {
      case "functions":
        if (parts[1] === "new") return await functions.create(main);
        if (parts[1]) return await functions.detail(main, parts[1], parts[2] || "overview");
        return await functions.list(main);
      case "usage": return await functions.usage(main);
      case "keys": return await admin.keys(main);
      case "tenants": return await admin.tenants(main);
      default:
        location.hash = inTenant() ? "#/functions" : can("admin") ? "#/tenants" : "#/keys";
    }
  } catch (e) {
    if (e.status === 401) return signIn("The key was refused; sign in again.");
    mount(main, failure(e));
  }
}

async function start() {
  session.who = (await api("GET", "/v1/whoami")).body;
  await route();
}

window.addEventListener("hashchange", () => { if (session.who) route(); });
if (session.key()) {
  start().catch((e) => { session.clear(); signIn(e.message); });
} else {
  signIn();
}
