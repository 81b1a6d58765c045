// shoal dashboard: plain JavaScript, no build step. Every value from the cluster
// goes into the page as text (textContent), never as HTML.
"use strict";

const PAGE = document.body.dataset.page;
const REFRESH_MS = 2000;
const charts = {};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function fmtBytes(b) {
  if (b === null || b === undefined) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(i ? 1 : 0)} ${u[i]}`;
}
function fmtTime(ms) { return ms ? new Date(ms).toLocaleTimeString() : "–"; }
function fmtNum(v) {
  if (typeof v !== "number") return v ?? "–";
  if (Number.isInteger(v) || Math.abs(v) >= 100) return Math.round(v).toLocaleString();
  return String(parseFloat(v.toPrecision(4)));
}

function card(k, v) { return el("div", { class: "card" }, el("div", { class: "k", text: k }), el("div", { class: "v", text: v })); }

function table(cols, rows, extra) {
  const t = el("table");
  t.append(el("tr", {}, ...cols.map(c => el("th", { text: c[0] }))));
  for (const r of rows) {
    const tr = el("tr");
    for (const c of cols) {
      const v = c[1](r);
      const td = el("td", {}, v instanceof Node ? v : String(v ?? "–"));
      if (c[2]) td.className = String(c[2](r) || "");
      tr.append(td);
    }
    t.append(tr);
    const more = extra && extra(r);
    if (more) t.append(el("tr", {}, el("td", { colspan: String(cols.length) }, more)));
  }
  return t;
}

function lineChart(id, parent, title, datasets, labels, yFmt) {
  let box = document.getElementById(id);
  if (!box) {
    box = el("div", { class: "chart", id }, el("canvas"));
    parent.append(box);
  }
  const ds = datasets.map((d, i) => ({ label: d.label, data: d.data, borderWidth: 1.5, pointRadius: 0, tension: 0.2,
    borderColor: ["#1f6feb", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#0a7ea4"][i % 6], spanGaps: true }));
  if (charts[id]) {
    charts[id].data.labels = labels; charts[id].data.datasets = ds; charts[id].update("none");
    return;
  }
  charts[id] = new Chart(box.querySelector("canvas"), {
    type: "line", data: { labels, datasets: ds },
    options: { animation: false, maintainAspectRatio: false, responsive: true,
      plugins: { title: { display: true, text: title }, legend: { display: datasets.length > 1 } },
      scales: { x: { ticks: { maxTicksLimit: 8 } }, y: { beginAtZero: true, ticks: { callback: v => (yFmt || fmtNum)(v) } } } },
  });
}

function section(id, title) {
  let s = document.getElementById(id);
  if (!s) {
    s = el("section", { id }, el("h2", { text: title }), el("div", { class: "body" }));
    document.getElementById("main").append(s);
  }
  return s.querySelector(".body");
}

function replace(parent, node) { parent.replaceChildren(node); }

// ------------------------------------------------------------------ pages
const pages = {
  async cluster() {
    const [s, hist, nodes] = await Promise.all([api("/api/summary"), api("/api/history"), api("/api/nodes")]);
    const tot = s.resources_total || {}, av = s.resources_available || {}, os_ = s.object_store || {};
    replace(section("cards", "Cluster"), el("div", { class: "cards" },
      card("CPUs used / total", `${fmtNum((tot.CPU || 0) - (av.CPU || 0))} / ${fmtNum(tot.CPU || 0)}`),
      card("GPUs", fmtNum(tot.GPU || 0)),
      card("memory used", `${fmtBytes(s.memory_used_bytes)} / ${fmtBytes(s.memory_total_bytes)}`),
      card("object store", `${fmtBytes(os_.used_bytes)} / ${fmtBytes(os_.capacity_bytes)}`),
      card("spilled", fmtBytes(os_.spilled_bytes)),
      card("tasks running / pending", `${s.tasks.RUNNING || 0} / ${s.tasks.PENDING || 0}`),
      card("tasks finished / failed", `${s.tasks.FINISHED || 0} / ${s.tasks.FAILED || 0}`),
      card("actors alive", String(s.actors.ALIVE || 0)),
      card("workers", String(s.workers ?? "–"))));
    const labels = hist.map(h => new Date(h.time * 1000).toLocaleTimeString());
    const charts_ = section("charts", "Over time");
    if (!charts_.firstChild) charts_.append(el("div", { class: "charts", id: "chartgrid" }));
    const grid = document.getElementById("chartgrid");
    lineChart("c-cpu", grid, "CPU %", [{ label: "CPU %", data: hist.map(h => h.cpu_percent) }], labels);
    lineChart("c-mem", grid, "memory used", [{ label: "memory", data: hist.map(h => h.memory_used_bytes) }], labels, fmtBytes);
    lineChart("c-store", grid, "object store", [
      { label: "in shared memory", data: hist.map(h => h.object_store_used_bytes) },
      { label: "spilled", data: hist.map(h => h.object_store_spilled_bytes) }], labels, fmtBytes);
    const rate = hist.map((h, i) => i ? (h.tasks_finished + h.tasks_failed - hist[i - 1].tasks_finished - hist[i - 1].tasks_failed) / Math.max(0.001, h.time - hist[i - 1].time) : null);
    lineChart("c-tasks", grid, "tasks", [
      { label: "ended / s", data: rate }, { label: "running", data: hist.map(h => h.tasks_running) },
      { label: "pending", data: hist.map(h => h.tasks_pending) }], labels);
    replace(section("nodes", "Nodes"), table([
      ["node", n => n.node_id], ["state", n => n.state, n => n.state], ["address", n => n.node_ip],
      ["resources", n => Object.entries(n.resources_total || {}).map(([k, v]) => `${k}: ${k.includes("memory") ? fmtBytes(v) : fmtNum(v)}`).join(", ")],
      ["load average", n => (n.load_avg || []).map(fmtNum).join(" ")]], nodes));
  },

  async tasks() {
    const [tasks, actors] = await Promise.all([api("/api/tasks?limit=300"), api("/api/actors?limit=300")]);
    tasks.reverse();
    const tl = section("tl", "Timeline");
    if (!tl.firstChild) tl.append(el("a", { href: "/api/timeline", download: "shoal-timeline.json", id: "timeline-link",
      text: "Download the timeline of finished tasks (Chrome trace: open in ui.perfetto.dev)" }));
    replace(section("actors", `Actors (${actors.length})`), table([
      ["actor", a => a.actor_id], ["class", a => a.class_name], ["name", a => a.name || ""],
      ["state", a => a.state, a => a.state], ["pid", a => a.pid], ["restarts", a => a.num_restarts],
      ["calls queued / running", a => `${a.pending_calls ?? "–"} / ${a.running_calls ?? "–"}`],
      ["death cause", a => (a.death_cause || "").split("\n")[0]]], actors,
      a => a.traceback ? el("pre", { class: "traceback", text: a.traceback }) : null));
    replace(section("tasks", `Tasks (newest ${tasks.length})`), table([
      ["task", t => t.task_id], ["name", t => t.name], ["state", t => t.state, t => t.state],
      ["worker", t => t.worker_id], ["submitted", t => fmtTime(t.creation_time_ms)],
      ["run time", t => t.duration_s === null || t.duration_s === undefined ? "–" : `${(t.duration_s * 1000).toFixed(2)} ms`],
      ["error", t => t.error_type ? `${t.error_type}: ${t.error_message}` : ""]], tasks,
      t => t.traceback ? el("pre", { class: "traceback", text: t.traceback }) : null));
  },

  async logs() {
    const body = section("logs", "Worker logs");
    if (!body.firstChild) {
      const pick = el("select", { id: "log-worker" }), stream = el("select", { id: "log-stream" },
        el("option", { value: "stdout", text: "stdout" }), el("option", { value: "stderr", text: "stderr" }));
      const out = el("pre", { id: "log-text" });
      body.append(el("div", { class: "row" }, el("span", { text: "worker" }), pick, stream), out);
      const reset = () => { out.textContent = ""; out.dataset.offset = "-65536"; };
      pick.addEventListener("change", () => { reset(); pages.logs(); });
      stream.addEventListener("change", () => { reset(); pages.logs(); });
      reset();
    }
    const pick = document.getElementById("log-worker"), out = document.getElementById("log-text");
    const { workers } = await api("/api/logs");
    const have = new Set([...pick.options].map(o => o.value));
    for (const w of workers) {
      if (have.has(w.worker_id)) continue;
      const who = w.actor_class ? `actor ${w.actor_name || w.actor_class}` : "task worker";
      pick.append(el("option", { value: w.worker_id, text: `worker ${w.worker_id} (pid ${w.pid}, ${who})` }));
    }
    if (!pick.value) return;
    const stream = document.getElementById("log-stream").value;
    const r = await api(`/api/logs?worker=${encodeURIComponent(pick.value)}&stream=${stream}&offset=${out.dataset.offset}`);
    if (r.text) out.textContent += r.text;
    out.dataset.offset = String(r.offset);
  },

  async train() { await runsPage("train", "Training runs"); },
  async tune() { await runsPage("tune", "Tuning experiments"); },
  async serve() { await runsPage("serve", "Serving"); },
};

async function runsPage(kind, title) {
  const runs = await api(`/api/runs?kind=${kind}`);
  const body = section("runs", `${title} (${runs.length})`);
  if (!runs.length) {
    replace(body, el("p", { class: "muted", text: `No ${title.toLowerCase()} in this session yet: they appear here as shoal.${kind} reports them.` }));
    return;
  }
  if (body.querySelector("p.muted")) body.replaceChildren();
  if (!document.getElementById("runs-table")) body.append(el("div", { id: "runs-table" }), el("div", { class: "charts", id: "run-charts" }));
  const metricKeys = r => Object.keys(r.last).filter(k => k !== "time");
  // Tune's own bookkeeping is in the table, not worth a chart each.
  const AUTO = new Set(["timestamp", "pid", "time_this_iter_s", "time_total_s", "training_iteration",
    "iterations_since_restore", "time_since_restore", "done", "requests_total"]);
  replace(document.getElementById("runs-table"), table([
    ["run", r => r.name], ["status", r => r.status, r => r.status], ["reports", r => r.reports],
    ["latest", r => metricKeys(r).map(k => `${k}=${fmtNum(r.last[k])}`).join("  ")],
    ["info", r => Object.entries(r.info).filter(([k, v]) => v !== null && v !== undefined && k !== "latency_histogram" && k !== "checkpoints")
      .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join("  ")]], runs));
  const ckpts = runs.flatMap(r => (r.info.checkpoints || []).map(c => ({ run: r.name, ...c })));
  if (ckpts.length) {
    if (!document.getElementById("checkpoints")) body.insertBefore(el("div", { id: "checkpoints" }), document.getElementById("run-charts"));
    replace(document.getElementById("checkpoints"), el("div", {},
      el("h3", { text: `Checkpoints kept (${ckpts.length}, best first)` }),
      table([["run", c => c.run], ["checkpoint", c => c.path],
        ["metrics", c => Object.entries(c.metrics).map(([k, v]) => `${k}=${fmtNum(v)}`).join("  ")]], ckpts)));
  }
  // One chart per metric (each its own scale), one curve per run (or trial), by report.
  const grid = document.getElementById("run-charts");
  const metrics = [...new Set(runs.flatMap(metricKeys))].filter(m => !AUTO.has(m));
  const n = Math.max(...runs.map(r => r.history.length));
  const labels = [...Array(n).keys()].map(i => String(i + 1));
  for (const m of metrics) {
    lineChart(`run-${m}`, grid, `${m} by report`, runs.map(r => ({ label: r.name, data: r.history.map(h => h[m] ?? null) })), labels);
  }
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    await pages[PAGE]();
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    status.textContent = `cannot reach the cluster (${e.message}); retrying`;
  }
}

for (const a of document.querySelectorAll("nav a")) if (a.dataset.nav === PAGE) a.classList.add("active");
refresh();
setInterval(refresh, REFRESH_MS);
