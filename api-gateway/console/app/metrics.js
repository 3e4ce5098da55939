// A function's Metrics tab: invocations (errors and throttles apart) and p50/p99
// duration per period, drawn as SVG from GET /v1/functions/{name}/metrics.
import { api, h, mount } from "./lib.js";

const SVG = "http://www.w3.org/2000/svg";
const RANGES = [["1h", 3600], ["6h", 6 * 3600], ["24h", 86400], ["7d", 7 * 86400]];
const W = 900, H = 170, PAD = 56;

// An SVG element: attributes set, strings as text nodes (never markup).
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const hhmm = (t) => t.slice(11, 16);
const label = (t, span) => (span > 86400 ? `${t.slice(5, 10)} ${hhmm(t)}` : hhmm(t));

// Axes: the top value, zero, and the first and last period's times.
function frame(points, top, unit, span) {
  const first = points[0]?.time || "", last = points[points.length - 1]?.time || "";
  return [
    s("line", { x1: PAD, y1: H - 16, x2: W, y2: H - 16, class: "axis" }),
    s("text", { x: PAD - 4, y: 12, "text-anchor": "end", class: "tick" }, `${+top.toPrecision(3)}${unit}`),
    s("text", { x: PAD - 4, y: H - 16, "text-anchor": "end", class: "tick" }, "0"),
    s("text", { x: PAD, y: H - 2, class: "tick" }, label(first, span)),
    s("text", { x: W, y: H - 2, "text-anchor": "end", class: "tick" }, label(last, span)),
  ];
}

// Stacked bars per period: successful invocations, errors, throttles.
function callsChart(points, span) {
  const total = (p) => p.invocations + p.throttles;
  const top = Math.max(1, ...points.map(total));
  const bw = (W - PAD) / Math.max(1, points.length);
  const y = (v) => ((H - 20) * v) / top;
  const bars = points.flatMap((p, i) => {
    const x = PAD + i * bw, ok = p.invocations - p.errors - p.timeouts, bad = p.errors + p.timeouts;
    const tip = `${p.time}: ${p.invocations} invocations, ${bad} errors or timeouts, ${p.throttles} throttles, ${p.cold_starts} cold starts`;
    let base = H - 16;
    return [[ok, "ok"], [bad, "bad"], [p.throttles, "throttle"]].filter(([v]) => v > 0).map(([v, cls]) => {
      base -= y(v);
      return s("rect", { x: x + 0.5, y: base, width: Math.max(1, bw - 1), height: y(v), class: cls }, s("title", {}, tip));
    });
  });
  return s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", id: "chart-invocations", role: "img" },
    frame(points, top, "", span), bars);
}

// p50 and p99 lines; a period without calls breaks them.
function durationChart(points, span) {
  const top = Math.max(0.01, ...points.map((p) => p.duration_p99_ms ?? 0));
  const bw = (W - PAD) / Math.max(1, points.length);
  const line = (key, cls) => {
    let d = "", pen = "M";
    points.forEach((p, i) => {
      const v = p[key];
      if (v === null || v === undefined) { pen = "M"; return; }
      d += `${pen}${(PAD + (i + 0.5) * bw).toFixed(1)},${(H - 16 - ((H - 20) * v) / top).toFixed(1)} `;
      pen = "L";
    });
    const dots = points.filter((p) => p[key] !== null && p[key] !== undefined).length === 1
      ? points.map((p, i) => (p[key] === null || p[key] === undefined) ? null
        : s("circle", { cx: PAD + (i + 0.5) * bw, cy: H - 16 - ((H - 20) * p[key]) / top, r: 3, class: cls }))
      : [];
    return [s("path", { d: d.trim(), class: `line ${cls}` }), dots];
  };
  return s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", id: "chart-duration", role: "img" },
    frame(points, top, " ms", span), line("duration_p99_ms", "p99"), line("duration_p50_ms", "p50"));
}

const fmt = (v) => (v === null || v === undefined ? "—" : `${v} ms`);

export async function metricsPage(el, f) {
  const range = h("select", { id: "metrics-range" }, RANGES.map(([t, secs]) => h("option", { value: secs }, `Last ${t}`)));
  const body = h("div");
  const load = async () => {
    const span = Number(range.value);
    const from = new Date(Date.now() - span * 1000).toISOString();
    const m = (await api("GET", `/v1/functions/${encodeURIComponent(f.name)}/metrics?from=${encodeURIComponent(from)}`)).body;
    const t = m.totals;
    mount(body,
      h("p", { class: "muted", id: "metrics-summary" },
        `${t.invocations} invocations, ${t.errors} errors, ${t.timeouts} timeouts, ${t.throttles} throttles, ${t.cold_starts} cold starts; ` +
        `duration p50 ${fmt(t.duration_p50_ms)}, p99 ${fmt(t.duration_p99_ms)}, max ${fmt(t.duration_max_ms)} (${m.period_s / 60} min per bar)`),
      h("div", { class: "card" }, h("h2", {}, "Invocations"),
        h("div", { class: "legend" }, h("span", { class: "ok" }, "succeeded"), h("span", { class: "bad" }, "errors and timeouts"), h("span", { class: "throttle" }, "throttled")),
        callsChart(m.points, span)),
      h("div", { class: "card" }, h("h2", {}, "Duration"),
        h("div", { class: "legend" }, h("span", { class: "p50" }, "p50"), h("span", { class: "p99" }, "p99")),
        durationChart(m.points, span)));
  };
  range.onchange = () => load().catch((e) => mount(body, h("div", { class: "error" }, String(e.message || e))));
  mount(el, h("div", { class: "row" }, h("label", {}, "Range", range),
    h("button", { class: "secondary", id: "metrics-refresh", onclick: range.onchange }, "Refresh")), body);
  await load();
}
