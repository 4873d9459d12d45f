// xdplb's status page: reads the API every 2 s and redraws in place. Text from the director
// (health-check errors, names) only ever goes into textContent, never into markup.
"use strict";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
let writable = "no";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function number(n) {
  if (n === undefined || n === null) return "-";
  return Math.round(n).toLocaleString("en-US");
}

function bytes(n) {
  if (n === undefined || n === null) return "-";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(Math.round(n))) + " " + units[i];
}

function duration(secs) {
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
  const m = Math.floor(secs / 60) % 60, s = Math.floor(secs % 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  return m ? `${m}m ${s}s` : `${s}s`;
}

function serviceKey(s) { return `${s.protocol} ${s.address}`; }

// "tcp/10.0.0.100/80", "udp/[2001:db8::1]/53": the service's path in the API.
function servicePath(s) {
  const i = s.address.lastIndexOf(":");
  return `/api/v1/services/${s.protocol}/${s.address.slice(0, i)}/${s.address.slice(i + 1)}`;
}

function token() { return sessionStorage.getItem("xdplb-token") || ""; }

// Buttons only where changes are allowed: always on a door that allows them, with a token
// entered where the door wants one.
function canWrite() { return writable === "yes" || (writable === "token" && token() !== ""); }

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET" && token()) headers["Authorization"] = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 204) return null;
  const data = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
  if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
  return data;
}

// Real servers taken out through this page, kept so they can be put back in: per service,
// the spec they were added with.
function takenOut(key) {
  try { return JSON.parse(localStorage.getItem("xdplb-out " + key) || "[]"); } catch { return []; }
}
function setTakenOut(key, list) {
  if (list.length) localStorage.setItem("xdplb-out " + key, JSON.stringify(list));
  else localStorage.removeItem("xdplb-out " + key);
}

function realSpec(r) {
  const at = r.address.lastIndexOf(":");
  const spec = { addr: r.address.slice(0, at).replace(/^\[|\]$/g, ""), port: Number(r.address.slice(at + 1)),
                 weight: r.weight, forward: r.forward };
  if (r.u_threshold) spec.upper = r.u_threshold;
  if (r.l_threshold) spec.lower = r.l_threshold;
  if (r.check) spec.check = { set: r.check };
  return spec;
}

async function act(what, fn) {
  $("write-state").textContent = what + "…";
  $("write-state").className = "";
  try {
    await fn();
    $("write-state").textContent = what + ": done";
  } catch (e) {
    $("write-state").textContent = what + ": " + e.message;
    $("write-state").className = "error";
  }
  refresh();
}

function buttons(s, r) {
  const cell = el("td", { class: "actions" });
  if (!canWrite()) return cell;
  const path = servicePath(s) + "/reals/" + encodeURIComponent(r.address);
  const key = serviceKey(s);
  if (r.weight > 0) {
    cell.append(el("button", { "data-action": "drain", title: "weight 0: no new connections, established ones stay",
      onclick: () => act(`drain ${r.address}`, () => api("PUT", path, { weight: 0 })) }, "drain"));
  } else if (r.previous_weight) {
    cell.append(el("button", { "data-action": "restore", title: `back to weight ${r.previous_weight}`,
      onclick: () => act(`restore ${r.address}`, () => api("PUT", path, { weight: r.previous_weight })) }, "restore"));
  }
  cell.append(" ", el("button", { "data-action": "out", title: "remove it from the service (the page keeps it to put back in)",
    onclick: () => act(`take out ${r.address}`, async () => {
      const spec = realSpec(r);
      await api("DELETE", path);
      setTakenOut(key, takenOut(key).filter((x) => x.addr !== spec.addr).concat([spec]));
    }) }, "out"));
  return cell;
}

function outRow(s, spec) {
  const key = serviceKey(s);
  const row = el("tr", { class: "out", "data-real": spec.addr, "data-out": "1" },
    el("td", {}, spec.addr + (spec.port ? ":" + spec.port : "")), el("td", {}, spec.forward || "route"),
    el("td", { class: "num" }, String(spec.weight ?? 1)), el("td", { class: "health unchecked" }, "taken out"));
  for (let i = 0; i < 6; i++) row.append(el("td", {}));
  const cell = el("td", { class: "actions" });
  if (canWrite()) {
    cell.append(el("button", { "data-action": "in", title: "add it back with its settings",
      onclick: () => act(`put in ${spec.addr}`, async () => {
        await api("POST", servicePath(s) + "/reals", spec);
        setTakenOut(key, takenOut(key).filter((x) => x.addr !== spec.addr));
      }) }, "in"));
  }
  row.append(cell);
  return row;
}

function health(r) {
  if (!r.health) return el("td", { class: "health unchecked" }, "not checked");
  const cell = el("td", { class: "health " + r.health.state }, r.health.state);
  if (r.health.last_error) cell.append(el("small", { class: "last-error" }, r.health.last_error));
  return cell;
}

function chart(points) {
  const w = 240, h = 48, ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "packets and connections per second, last minutes");
  const line = (key, cls) => {
    const max = Math.max(1, ...points.map((p) => p[key]));
    const step = w / Math.max(1, 149);
    const x0 = w - (points.length - 1) * step;
    const d = points.map((p, i) => `${(x0 + i * step).toFixed(1)},${(h - 2 - (p[key] / max) * (h - 4)).toFixed(1)}`).join(" ");
    const pl = document.createElementNS(ns, "polyline");
    pl.setAttribute("points", d); pl.setAttribute("class", cls);
    svg.append(pl);
  };
  if (points.length > 1) { line("packets", "packets"); line("conns", "conns"); }
  return el("div", { class: "chart", title: "last 5 minutes: connections/s (blue), packets/s (grey)" }, svg);
}

function service(s, history) {
  const key = serviceKey(s);
  const rates = s.rates || {};
  const sec = el("section", { class: "service", "data-service": key },
    el("div", { class: "service-head" },
      el("h2", {}, `${s.protocol.toUpperCase()} ${s.address}`),
      el("span", { class: "scheduler" }, s.scheduler + (s.persistent ? ` · persistent ${s.persistent}s` : "")),
      el("span", { class: "rates" },
        el("span", { class: "conns-rate" }, number(rates.conns)), " conn/s · ",
        el("span", { class: "packets-rate" }, number(rates.packets)), " pkt/s · ",
        el("span", { class: "bytes-rate" }, bytes(rates.bytes)), "/s"),
      chart(history ? history.points : [])));
  const table = el("table", {}, el("thead", {}, el("tr", {},
    ...["real server", "method", "weight", "health", "active", "inactive", "conn/s", "pkt/s", "bytes/s", "share of new conns", ""]
      .map((t, i) => el("th", { class: i === 2 || (i >= 4 && i <= 8) ? "num" : "" }, t)))));
  const body = el("tbody");
  // Share of new connections: over the last interval when there were any, else since zero.
  const recent = (s.reals || []).reduce((a, r) => a + ((r.rates || {}).conns || 0), 0);
  const ever = (s.reals || []).reduce((a, r) => a + ((r.stats || {}).conns || 0), 0);
  for (const r of s.reals) {
    const rr = r.rates || {};
    const share = recent > 0 ? (rr.conns || 0) / recent : ever > 0 ? ((r.stats || {}).conns || 0) / ever : 0;
    const row = el("tr", { class: r.weight === 0 ? "drained" : "", "data-real": r.address },
      el("td", { class: "address" }, r.address),
      el("td", { class: "forward" }, { route: "DR", tunnel: "TUN", masq: "NAT" }[r.forward] || r.forward),
      el("td", { class: "num weight" }, String(r.weight)),
      health(r),
      el("td", { class: "num active" }, number(r.active_conns)),
      el("td", { class: "num inactive" }, number(r.inactive_conns)),
      el("td", { class: "num conns-rate" }, number(rr.conns)),
      el("td", { class: "num packets-rate" }, number(rr.packets)),
      el("td", { class: "num bytes-rate" }, bytes(rr.bytes)),
      el("td", { class: "share" }, el("span", { class: "bar", style: `width:${(share * 6).toFixed(2)}rem` }),
        el("span", { class: "share-value" }, (share * 100).toFixed(0) + "%")),
      buttons(s, r));
    body.append(row);
  }
  const present = new Set(s.reals.map((r) => r.address.slice(0, r.address.lastIndexOf(":")).replace(/^\[|\]$/g, "")));
  const out = takenOut(key).filter((spec) => !present.has(spec.addr));
  for (const spec of out) body.append(outRow(s, spec));
  table.append(body);
  sec.append(table);
  return sec;
}

function render(services, stats, agent) {
  writable = agent.writable;
  $("write").hidden = writable !== "token";
  $("interface").textContent = agent.interface;
  $("mode").textContent = agent.mode;
  const info = agent.agent || {};
  $("program").textContent = info.program_id ? "id " + info.program_id : "-";
  $("version").textContent = info.version || "-";
  $("uptime").textContent = info.started ? duration(Date.now() / 1000 - info.started) : "-";
  $("reloads").textContent = info.reloads === undefined ? "-" : `${info.reloads} (${info.reload_failures} failed)`;
  const status = $("status");
  if (agent.drained) { status.textContent = "drained for maintenance"; status.className = "status problem"; }
  else if (agent.problem) { status.textContent = agent.problem; status.className = "status problem"; }
  else { status.textContent = "taking traffic"; status.className = "status"; }

  $("total-conns").textContent = number(stats.rates.conns);
  $("total-packets").textContent = number(stats.rates.packets);
  $("total-bytes").textContent = bytes(stats.rates.bytes);

  const charts = new Map(stats.history.map((h) => [`${h.protocol} ${h.address}`, h]));
  const main = $("services");
  main.replaceChildren(...services.map((s) => service(s, charts.get(serviceKey(s)))));
  if (!services.length) main.append(el("p", { class: "empty" }, "No service is configured."));

  const tbody = $("reasons").tBodies[0];
  tbody.replaceChildren(...Object.entries(stats.reasons).map(([reason, n]) =>
    el("tr", { "data-reason": reason }, el("td", {}, reason), el("td", { class: "num" }, number(n)),
      el("td", { class: "num" }, number((stats.reason_rates || {})[reason])))));
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const [services, stats, agent] = await Promise.all([
      api("GET", "/api/v1/services"), api("GET", "/api/v1/stats"), api("GET", "/api/v1/agent")]);
    render(services, stats, agent);
    $("updated").textContent = new Date().toLocaleTimeString();
    document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
  } catch (e) {
    $("status").textContent = "cannot reach the agent: " + e.message;
    $("status").className = "status problem";
  } finally {
    busy = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = token();
  $("token").addEventListener("change", (e) => {
    sessionStorage.setItem("xdplb-token", e.target.value.trim());
    refresh();
  });
  refresh();
  setInterval(refresh, POLL_MS);
});
