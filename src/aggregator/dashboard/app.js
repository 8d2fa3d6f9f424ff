// otel-anomaly dashboard: plain JavaScript, no build step, no third-party code.
// Data comes from the REST API; /api/v1/stream (Server-Sent Events, read with
// fetch so a bearer token can be sent) tells it when to reload.
"use strict";

const state = { token: sessionStorage.getItem("otel-anomaly-token") || "", seen: new Set(), first: true };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

async function api(path) {
  const r = await fetch(path, { headers: headers() });
  if (r.status === 401) {
    $("auth").classList.remove("hidden");
    throw new Error("unauthorized");
  }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

const fmtTime = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "");
const fmtDateTime = (ms) => (ms ? new Date(ms).toLocaleString() : "");
const fmtNum = (v, d = 1) => (v == null ? "" : Number(v).toFixed(d));
const sev = (s) => el("span", { class: "sev " + s }, s);

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function severityOfScore(score) {
  if (score == null) return "";
  return score >= 75 ? "critical" : score >= 50 ? "major" : score >= 25 ? "minor" : "";
}

// ---- overview ---------------------------------------------------------------

async function loadOverview() {
  const q = new URLSearchParams();
  const env = $("f-env").value, sv = $("f-sev").value, st = $("f-state").value;
  if (env) q.set("environment", env);
  if (sv) q.set("severity", sv);
  q.set("state", st);
  q.set("limit", "200");
  const [envs, incidents, sidecars, silences] = await Promise.all([
    api("/api/v1/environments"),
    api("/api/v1/incidents?" + q),
    api("/api/v1/sidecars"),
    api("/api/v1/silences"),
  ]);
  state.silences = silences;
  renderEnvs(envs);
  renderIncidents(incidents);
  renderSidecars(sidecars);
  renderSilences(silences);
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function renderEnvs(envs) {
  const box = $("envs");
  box.replaceChildren(
    ...envs.map((e) =>
      el("div", {
          class: "env " + severityOfScore(e.top_open_score),
          "data-testid": "env-" + e.name,
          onclick: () => { $("f-env").value = e.name; loadOverview(); },
        },
        el("div", { class: "name" }, e.name),
        el("div", { class: "big" }, String(e.open_incidents)),
        el("div", { class: "muted" }, "open incidents" + (e.top_open_score != null ? " · top score " + fmtNum(e.top_open_score, 0) : "")),
        el("div", { class: "muted" }, e.sidecars_healthy + "/" + e.sidecars + " sidecars healthy · " + e.events_total + " events"),
      ),
    ),
  );
  const sel = $("f-env");
  const current = sel.value;
  sel.replaceChildren(el("option", { value: "" }, "all"), ...envs.map((e) => el("option", { value: e.name }, e.name)));
  sel.value = current;
}

function renderIncidents(list) {
  $("no-incidents").classList.toggle("hidden", list.length > 0);
  $("incidents").replaceChildren(
    ...list.map((i, n) => {
      const isNew = !state.first && !state.seen.has(i.id);
      state.seen.add(i.id);
      return el("tr", {
          class: "clickable" + (isNew ? " new" : ""),
          "data-testid": "incident-row",
          "data-incident": String(i.id),
          onclick: () => { location.hash = "#/incidents/" + i.id; },
        },
        el("td", {}, String(n + 1)),
        el("td", {}, sev(i.severity)),
        el("td", {}, i.environment),
        el("td", {}, el("div", {}, i.key), el("div", { class: "muted" }, i.explanation)),
        el("td", {}, i.services.join(", ")),
        el("td", { class: "num" }, fmtNum(i.max_score)),
        el("td", { class: "num" }, fmtNum(i.sum_score)),
        el("td", { class: "num" }, String(i.event_count + (i.muted_events ? " +" + i.muted_events : ""))),
        el("td", {}, fmtTime(i.start_ms)),
        el("td", {}, ago(i.end_ms)),
        el("td", {}, i.state + (i.persistent ? " (persistent)" : ""),
          i.state === "open" && silencedBy(i) ? el("div", { class: "muted" }, "alerts silenced") : ""),
      );
    }),
  );
  state.first = false;
}

function silencedBy(i) {
  return (state.silences || []).find(
    (s) => s.active && s.environment === i.environment && (!s.service || i.services.includes(s.service)),
  );
}

function renderSilences(list) {
  $("no-silences").classList.toggle("hidden", list.length > 0);
  $("silences").replaceChildren(
    ...list.map((s) =>
      el("tr", { "data-testid": "silence-row" },
        el("td", {}, s.kind),
        el("td", {}, s.environment),
        el("td", {}, s.service || "all"),
        el("td", {}, fmtDateTime(s.starts_ms)),
        el("td", {}, fmtDateTime(s.ends_ms)),
        el("td", { class: s.active ? "bad" : "muted" }, s.active ? "active" : "scheduled"),
        el("td", {}, s.comment),
        el("td", {}, s.created_by),
      ),
    ),
  );
}

function renderSidecars(list) {
  $("sidecars").replaceChildren(
    ...list.map((s) =>
      el("tr", { "data-testid": "sidecar-row" },
        el("td", {}, s.sidecar_id),
        el("td", {}, s.environment),
        el("td", {}, s.cluster),
        el("td", { class: s.healthy ? "ok" : "bad" }, s.healthy ? "healthy" : "stale"),
        el("td", { class: "num" }, String(s.keys_tracked)),
        el("td", { class: "num" }, String(s.queue_depth)),
        el("td", { class: "num" }, fmtNum(s.export_lag_seconds) + " s"),
        el("td", { class: "num" }, String(s.events_buffered)),
        el("td", { class: "num" + (s.events_dropped ? " bad" : "") }, String(s.events_dropped)),
        el("td", {}, ago(s.last_seen_ms)),
      ),
    ),
  );
}

// ---- incident page ----------------------------------------------------------

async function loadIncident(id) {
  const d = await api("/api/v1/incidents/" + encodeURIComponent(id));
  const i = d.incident;
  $("inc-title").replaceChildren(sev(i.severity), " ", i.environment + ": " + i.key);
  $("inc-meta").textContent =
    "incident #" + i.id + " · " + i.state + (i.persistent ? " (persistent: level shift, keys muted)" : "") +
    " · score " + fmtNum(i.max_score) + " (sum " + fmtNum(i.sum_score) + ") · " + i.event_count + " events" +
    (i.muted_events ? " + " + i.muted_events + " muted" : "") + " · services " + i.services.join(", ") +
    " · " + fmtDateTime(i.start_ms) + " → " + (i.resolved_ms ? fmtDateTime(i.resolved_ms) : "now");
  $("inc-explanation").textContent = i.explanation;
  // The chart follows the key of the top event; all events are in the table.
  const own = d.events.filter((e) => e.key === i.key);
  $("chart-title").textContent = "Timeline of " + i.key + (own[0] && own[0].unit ? " (" + own[0].unit + ")" : "");
  drawChart($("chart"), own.length ? own : d.events);
  $("inc-events").replaceChildren(
    ...d.events.map((e) =>
      el("tr", {},
        el("td", {}, fmtTime(e.start_ms) + "–" + fmtTime(e.end_ms)),
        el("td", {}, sev(e.severity)),
        el("td", {}, e.key),
        el("td", { class: "num" }, fmtNum(e.score)),
        el("td", { class: "num" }, fmtNum(e.observed, 2) + " " + e.unit),
        el("td", { class: "num" }, fmtNum(e.baseline, 2) + " " + e.unit),
        el("td", {}, e.explanation),
        el("td", {}, el("code", {}, e.exemplar_trace_ids.join(" "))),
      ),
    ),
  );
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

// Observed and baseline as lines against time, the score as bars on a 0–100 right axis.
function drawChart(box, events) {
  const W = 900, H = 280, L = 56, R = 40, T = 12, B = 28;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  if (!events.length) {
    box.replaceChildren(s);
    return;
  }
  const pts = events.map((e) => ({ t: (e.start_ms + e.end_ms) / 2, o: e.observed, b: e.baseline, s: e.score, e }));
  let t0 = Math.min(...events.map((e) => e.start_ms)), t1 = Math.max(...events.map((e) => e.end_ms));
  if (t1 <= t0) t1 = t0 + 1000;
  const vmax = Math.max(1e-9, ...pts.map((p) => Math.max(p.o, p.b))) * 1.15;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / vmax) * (H - T - B);
  const ys = (v) => T + (1 - v / 100) * (H - T - B);
  s.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  s.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  for (let k = 0; k <= 4; k++) {
    const v = (vmax * k) / 4;
    s.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v >= 100 ? v.toFixed(0) : v.toPrecision(3)));
    s.append(svg("text", { x: W - R + 6, y: ys(25 * k) + 4 }, String(25 * k)));
  }
  s.append(svg("text", { x: L, y: H - 8 }, new Date(t0).toLocaleTimeString()));
  s.append(svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, new Date(t1).toLocaleTimeString()));
  const bw = Math.max(3, Math.min(24, (W - L - R) / (pts.length * 2)));
  for (const p of pts) {
    s.append(svg("rect", { class: "score", x: x(p.t) - bw / 2, y: ys(p.s), width: bw, height: H - B - ys(p.s) }));
  }
  const line = (key, cls) => {
    const d = pts.map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
    s.append(svg("polyline", { class: cls, points: d }));
  };
  // Events without values (only a score) are drawn on the score axis.
  const hasValues = pts.some((p) => p.o || p.b);
  if (hasValues) {
    line("b", "baseline");
    line("o", "observed");
  }
  for (const p of pts) {
    const cy = hasValues ? y(p.o) : ys(p.s);
    const c = svg("circle", { cx: x(p.t), cy, r: 4, fill: "var(--" + p.e.severity + ")" });
    c.append(svg("title", {}, `${fmtTime(p.t)}: observed ${fmtNum(p.o, 2)} vs baseline ${fmtNum(p.b, 2)}, score ${fmtNum(p.s)}`));
    s.append(c);
  }
  box.replaceChildren(s);
}

// ---- routing and live updates -----------------------------------------------

function route() {
  const m = location.hash.match(/^#\/incidents\/(\d+)/);
  $("overview").classList.toggle("hidden", !!m);
  $("incident").classList.toggle("hidden", !m);
  return (m ? loadIncident(m[1]) : loadOverview()).catch((e) => console.warn(e));
}

let pending = null;
function refreshSoon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; route(); }, 200);
}

async function live() {
  for (;;) {
    try {
      const r = await fetch("/api/v1/stream", { headers: headers() });
      if (!r.ok || !r.body) throw new Error("stream: HTTP " + r.status);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const ev = (block.match(/^event: ?(.*)$/m) || [])[1];
          if (ev === "hello") {
            $("live").textContent = "live";
            $("live").className = "live on";
            refreshSoon();
          } else if (ev === "update" || ev === "resync") {
            refreshSoon();
          }
        }
      }
    } catch (e) {
      console.warn(e);
    }
    $("live").textContent = "reconnecting…";
    $("live").className = "live off";
    await new Promise((res) => setTimeout(res, 2000));
  }
}

$("auth-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = $("auth-token").value.trim();
  sessionStorage.setItem("otel-anomaly-token", state.token);
  $("auth").classList.add("hidden");
  route();
});
for (const id of ["f-env", "f-sev", "f-state"]) $(id).addEventListener("change", () => loadOverview());
window.addEventListener("hashchange", route);
// Relative times age even without updates.
setInterval(() => { if (!document.hidden) route(); }, 30000);
route();
live();
