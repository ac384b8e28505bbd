// Kiln dashboard: polls the driver's JSON API (docs/dashboard.md) once a
// second and redraws the current page. No framework, no CDN: this file is
// compiled into the kiln binary.
"use strict";

const POLL_MS = 1000;
const COLORS = ["#c2410c", "#1d4ed8", "#15803d", "#7c3aed", "#be185d", "#0e7490", "#a16207"];
const PHASES = [["compute_seconds", "compute", "#2563eb"], ["sync_seconds", "sync", "#f59e0b"],
  ["checkpoint_seconds", "checkpoint", "#7c3aed"], ["waiting_seconds", "waiting", "#9ca3af"]];

const page = document.getElementById("page");
const statusEl = document.getElementById("status");

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; n = Number(n || 0);
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function num(v, d = 4) {
  if (v === null || v === undefined) return "–";
  const x = Number(v);
  if (Number.isInteger(x) && Math.abs(x) < 1e9) return String(x);
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e6)) return x.toExponential(Math.max(1, d - 2));
  return String(Number(x.toPrecision(d)));
}
function when(ms) { return ms ? new Date(ms).toLocaleTimeString() : "–"; }
function dur(a, b) {
  if (!a) return "–";
  const s = ((b || Date.now()) - a) / 1000;
  return s < 120 ? s.toFixed(1) + " s" : s < 7200 ? (s / 60).toFixed(1) + " min" : (s / 3600).toFixed(1) + " h";
}
function state(s) { const w = stateWord(s); return `<span class="state state-${esc(w)}">${esc(w)}</span>`; }
function stateWord(s) { return typeof s === "string" ? s.toLowerCase() : Object.keys(s)[0].toLowerCase(); }
function stateError(s) { return typeof s === "object" && s.Failed ? s.Failed : ""; }

// Training curves by job, fetched incrementally (?since=): each poll
// brings only the iterations the page has not seen.
const curves = {};
async function trainingOf(job) {
  const c = curves[job] || (curves[job] = { last: 0, iterations: [] });
  const t = await api(`/api/jobs/${job}/training?since=${c.last}`);
  c.iterations.push(...t.iterations);
  if (c.iterations.length) c.last = c.iterations[c.iterations.length - 1].iteration;
  // Thinned as the driver thins its own copy: at most 4096 points.
  while (c.iterations.length > 4096) {
    const n = c.iterations.length;
    c.iterations = c.iterations.filter((_, i) => i % 2 === 0 || i === n - 1);
  }
  return { ...t, iterations: c.iterations };
}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// A line chart of `series` ([{name, color, points: [[x, y], ...]}]) into
// an <svg>; its data-points attribute says how many points it draws.
function lineChart(id, title, series, xLabel) {
  const W = 420, H = 200, L = 52, R = 8, T = 8, B = 26;
  const all = series.flatMap(s => s.points).filter(p => Number.isFinite(p[1]));
  const n = Math.max(0, ...series.map(s => s.points.length));
  let body = "";
  if (all.length) {
    let [x0, x1] = [Math.min(...all.map(p => p[0])), Math.max(...all.map(p => p[0]))];
    let [y0, y1] = [Math.min(...all.map(p => p[1])), Math.max(...all.map(p => p[1]))];
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y1 = y0 + Math.abs(y0 || 1) * 0.1; y0 -= Math.abs(y0 || 1) * 0.1; }
    const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
    const sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    body += `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#d1d5db"/>`;
    body += `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#d1d5db"/>`;
    for (const f of [0, 0.5, 1]) {
      const y = y0 + f * (y1 - y0);
      body += `<text x="${L - 4}" y="${sy(y) + 3}" text-anchor="end">${esc(num(y, 3))}</text>`;
    }
    body += `<text x="${L}" y="${H - 8}">${esc(num(x0, 6))}</text><text x="${W - R}" y="${H - 8}" text-anchor="end">${esc(num(x1, 6))} ${esc(xLabel)}</text>`;
    for (const s of series) {
      const pts = s.points.filter(p => Number.isFinite(p[1])).map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
      body += `<polyline fill="none" stroke="${s.color}" stroke-width="1.5" points="${pts}"/>`;
      if (s.points.length === 1) body += `<circle cx="${sx(s.points[0][0])}" cy="${sy(s.points[0][1])}" r="3" fill="${s.color}"/>`;
    }
  } else {
    body = `<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no data yet</text>`;
  }
  const legend = series.length > 1 ? `<div class="legend">${series.map(s => `<span><i style="background:${s.color}"></i>${esc(s.name)}</span>`).join("")}</div>` : "";
  return `<div class="chart"><h3>${esc(title)}</h3>${legend}<svg id="${id}" data-points="${n}" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${body}</svg></div>`;
}

function table(cls, head, rows, empty) {
  if (!rows.length) return `<div class="empty">${esc(empty)}</div>`;
  return `<table class="${cls}"><thead><tr>${head.map(h => `<th class="${h[1] || ""}">${esc(h[0])}</th>`).join("")}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
}
function cards(items) {
  return `<div class="cards">${items.map(([k, v]) => `<div class="card"><div class="v">${v}</div><div class="k">${esc(k)}</div></div>`).join("")}</div>`;
}

function executorsTable(c) {
  return table("executors", [["id"], ["name"], ["address"], ["cores", "num"], ["state"], ["running", "num"], ["completed", "num"], ["failed", "num"], ["last heartbeat", "num"], ["sent", "num"], ["received", "num"]],
    c.executors.map(e => `<tr class="executor" data-id="${e.id}"><td>${e.id}</td><td>${esc(e.name)}</td><td>${esc(e.addr)}</td><td class="num">${e.cores}</td><td>${state(e.state)}</td><td class="num">${e.running}</td><td class="num">${e.completed}</td><td class="num">${e.failed}</td><td class="num">${e.last_heartbeat_ms} ms</td><td class="num">${bytes(e.bytes_sent)}</td><td class="num">${bytes(e.bytes_received)}</td></tr>`),
    "no executor has joined");
}

function splitBar(points) {
  const last = points.slice(-50);
  const tot = last.reduce((a, p) => a + p.seconds, 0);
  if (!tot) return "";
  const parts = PHASES.map(([k, name, color]) => [name, color, last.reduce((a, p) => a + p[k], 0) / tot]);
  return `<div class="split" id="iteration-split">${parts.map(([n, c, f]) => `<div title="${n} ${(f * 100).toFixed(1)}%" style="width:${(f * 100).toFixed(2)}%;background:${c}"></div>`).join("")}</div>
    <div class="legend">${parts.map(([n, c, f]) => `<span><i style="background:${c}"></i>${n} ${(f * 100).toFixed(1)}%</span>`).join("")} <span class="muted">(last ${last.length} iterations, ${(tot / last.length * 1000).toFixed(1)} ms each)</span></div>`;
}

async function clusterPage() {
  const [c, jobs] = await Promise.all([api("/api/cluster"), api("/api/jobs")]);
  const live = c.executors.filter(e => e.state === "live").length;
  const wire = Object.entries(c.wire).map(([k, w]) => [`${k} sent / received`, `${bytes(w.sent)} / ${bytes(w.received)}`]);
  let html = `<h2>Cluster</h2>` + cards([["executors live", live], ["excluded", c.executors.length - live], ["lost", c.lost], ["left", c.left],
    ["pending tasks", c.pending_tasks], ["staged bytes", bytes(c.staged_bytes)], ...wire, ["refused connections", c.refused_connections], ["dropped links", c.dropped_links]]);
  html += `<h2>Executors</h2>` + executorsTable(c);
  const running = jobs.find(j => stateWord(j.info.state) === "running" && j.info.id !== 0);
  html += `<h2>Running job</h2>`;
  if (running) {
    const t = await trainingOf(running.info.id);
    const p = running.info.progress;
    html += `<div id="running-job" data-id="${running.info.id}"><a href="#/jobs/${running.info.id}">job ${running.info.id}</a> ${esc(running.info.kind)}: ${esc(running.info.description)} ${state(running.info.state)}
      ${p ? `<span class="muted">${p.done}${p.total ? " / " + p.total : ""} ${esc(p.message)}</span>` : ""}</div>
      <div class="charts">${lineChart("chart-loss", "training loss", [{ name: "loss", color: COLORS[0], points: t.iterations.map(p => [p.iteration, p.loss]) }], "iteration")}</div>`;
  } else {
    html += `<div class="empty" id="running-job">no job is running</div>`;
  }
  if (c.departed.length) {
    html += `<h2>Departed executors</h2>` + table("departed", [["id"], ["name"], ["state"], ["when"], ["reason"]],
      c.departed.map(d => `<tr><td>${d.id}</td><td>${esc(d.name)}</td><td>${state(d.state)}</td><td>${when(d.at_ms)}</td><td class="err">${esc(d.reason)}</td></tr>`), "");
  }
  return html;
}

async function jobsPage() {
  const jobs = await api("/api/jobs");
  const rows = jobs.slice().reverse().map(j => {
    const i = j.info, p = i.progress;
    return `<tr class="job" data-id="${i.id}" data-state="${stateWord(i.state)}"><td><a href="#/jobs/${i.id}">${i.id}</a></td><td>${esc(i.kind)}</td><td>${state(i.state)}</td><td>${esc(i.description)}</td><td>${when(i.submitted_ms)}</td><td class="num">${dur(i.started_ms, i.finished_ms)}</td>
      <td>${p ? `${p.done}${p.total ? " / " + p.total : ""} ${esc(p.message)}` : ""}</td><td class="num">${j.stages}</td><td class="num">${j.tasks}</td><td class="num">${j.task_failures}</td><td class="num">${num(j.latest_loss)}</td>
      <td>${j.iterations ? `<a href="#/training/${i.id}">curves</a> · <a href="#/checkpoints/${i.id}">checkpoints</a>` : ""}</td></tr>`;
  });
  return `<h2>Jobs</h2>` + table("jobs", [["id"], ["kind"], ["state"], ["description"], ["submitted"], ["ran", "num"], ["progress"], ["stages", "num"], ["task attempts", "num"], ["failures", "num"], ["loss", "num"], [""]], rows, "no job submitted yet");
}

function stageRow(s) {
  const tasks = s.tasks.map(t => `<span class="t-${esc(t.state)}" title="partition ${t.partition}: ${esc(t.state)}, ${t.attempts} attempt(s)${t.executor !== null ? ", executor " + t.executor : ""}${t.duration_ms ? ", " + t.duration_ms + " ms" : ""}${t.error ? "\n" + esc(t.error) : ""}"></span>`).join("");
  const retried = s.tasks.filter(t => t.attempts > 1).length;
  return `<tr class="stage"><td>${s.action}/${s.stage}</td><td>${state(s.state)}</td><td class="num">${s.done} / ${s.tasks.length}</td><td class="num">${retried}</td><td>${when(s.started_ms)}</td><td class="num">${dur(s.started_ms, s.finished_ms)}</td><td><div class="tasks">${tasks}</div>${s.error ? `<div class="err">${esc(s.error)}</div>` : ""}</td></tr>`;
}

async function jobPage(id) {
  const d = await api(`/api/jobs/${id}`);
  const i = d.info, a = d.activity;
  let html = `<h2>Job ${i.id}: ${esc(i.kind)} ${state(i.state)}</h2><div>${esc(i.description)}</div>`;
  if (stateError(i.state)) html += `<div class="err">${esc(stateError(i.state))}</div>`;
  html += `<div class="muted">submitted ${when(i.submitted_ms)}, ran ${dur(i.started_ms, i.finished_ms)}, ${i.lines} output lines, directory ${esc(i.dir)}; outputs: ${esc(i.outputs.join(", ") || "none")} · <a href="#/training/${i.id}">training</a> · <a href="#/checkpoints/${i.id}">checkpoints</a></div>`;
  html += cards([["stages", a.stages], ["stages failed", a.stages_failed], ["task attempts", a.tasks], ["succeeded", a.tasks_succeeded], ["failed", a.task_failures], ["retries", a.retries], ["fetch failures", a.fetch_failures], ["exclusions", a.exclusions.length]]);
  const head = [["action/stage"], ["state"], ["tasks done", "num"], ["retried", "num"], ["started"], ["took", "num"], ["tasks (by partition)"]];
  html += `<h2>Running stages</h2>` + table("stages running", head, a.running.map(stageRow), "none");
  html += `<h2>Recent stages</h2>` + table("stages recent", head, a.recent.map(stageRow), "none yet");
  html += `<h2>Task failures</h2>` + table("failures", [["when"], ["action/stage"], ["partition", "num"], ["attempt", "num"], ["executor", "num"], ["kind"], ["error"]],
    a.failures.map(f => `<tr><td>${when(f.at_ms)}</td><td>${f.action}/${f.stage}</td><td class="num">${f.partition}</td><td class="num">${f.attempt + 1}</td><td class="num">${f.executor}</td><td>${esc(f.kind)}</td><td class="err">${esc(f.error)}</td></tr>`), "no task failed");
  html += `<h2>Exclusions</h2>` + table("exclusions", [["when"], ["executor"], ["name"], ["consecutive failures", "num"]],
    a.exclusions.map(x => `<tr><td>${when(x.at_ms)}</td><td>${x.executor}</td><td>${esc(x.name)}</td><td class="num">${x.failures}</td></tr>`), "no executor was excluded");
  return html;
}

// The job a training or checkpoint page shows without an id: the running
// one, else the newest that trained.
async function pickJob(id, what) {
  const jobs = await api("/api/jobs");
  const trained = jobs.filter(j => j.iterations > 0 || stateWord(j.info.state) === "running");
  if (id === undefined) {
    const running = trained.find(j => stateWord(j.info.state) === "running");
    id = running ? running.info.id : (trained.length ? trained[trained.length - 1].info.id : undefined);
  }
  const options = trained.map(j => `<option value="${j.info.id}" ${j.info.id == id ? "selected" : ""}>job ${j.info.id} (${esc(j.info.kind)}, ${esc(stateWord(j.info.state))})</option>`).join("");
  const select = `<select onchange="location.hash='#/${what}/'+this.value">${options}</select>`;
  return [id, select];
}

async function trainingPage(id) {
  const [job, select] = await pickJob(id, "training");
  if (job === undefined) return `<h2>Training</h2><div class="empty">no training job yet</div>`;
  const t = await trainingOf(job);
  const it = t.iterations;
  const xs = f => it.map(p => [p.iteration, f(p)]);
  let html = `<h2>Training ${select}</h2><div class="muted">${t.iterations_recorded} iterations recorded (${it.length} shown), ${t.epochs.length} epochs</div>`;
  html += `<h2>Where an iteration's time goes</h2>` + (splitBar(it) || `<div class="empty">no iteration yet</div>`);
  html += `<div class="charts">`;
  html += lineChart("chart-loss", "training loss", [{ name: "loss", color: COLORS[0], points: xs(p => p.loss) }], "iteration");
  html += lineChart("chart-lr", "learning rate", [{ name: "learning rate", color: COLORS[1], points: xs(p => p.learning_rate) }], "iteration");
  html += lineChart("chart-throughput", "samples per second", [{ name: "per iteration", color: COLORS[2], points: xs(p => p.samples_per_second) },
    { name: "per epoch", color: COLORS[3], points: t.epochs.map(e => [e.iteration, e.samples_per_second]) }], "iteration");
  html += lineChart("chart-split", "iteration time (s)", PHASES.map(([k, name, color]) => ({ name, color, points: xs(p => p[k]) })), "iteration");
  const names = [...new Set(t.epochs.flatMap(e => Object.keys(e.metrics)))];
  html += lineChart("chart-epoch-loss", "loss per epoch", [{ name: "epoch loss", color: COLORS[0], points: t.epochs.map(e => [e.epoch, e.loss]) }], "epoch");
  names.forEach((m, k) => {
    html += lineChart(`chart-metric-${m.replace(/[^a-zA-Z0-9_-]/g, "_")}`, `${m} per epoch`, [{ name: m, color: COLORS[(k + 1) % COLORS.length], points: t.epochs.filter(e => m in e.metrics).map(e => [e.epoch, e.metrics[m]]) }], "epoch");
  });
  html += `</div><h2>Epochs</h2>` + table("epochs", [["epoch", "num"], ["iteration", "num"], ["loss", "num"], ["samples/s", "num"], ...names.map(m => [m, "num"]), ["when"]],
    t.epochs.slice().reverse().map(e => `<tr><td class="num">${e.epoch}</td><td class="num">${e.iteration}</td><td class="num">${num(e.loss)}</td><td class="num">${num(e.samples_per_second)}</td>${names.map(m => `<td class="num">${num(e.metrics[m])}</td>`).join("")}<td>${when(e.at_ms)}</td></tr>`), "no epoch finished yet");
  return html;
}

async function checkpointsPage(id) {
  const [job, select] = await pickJob(id, "checkpoints");
  if (job === undefined) return `<h2>Checkpoints</h2><div class="empty">no training job yet</div>`;
  const c = await api(`/api/jobs/${job}/checkpoints`);
  let html = `<h2>Checkpoints ${select}</h2>`;
  html += cards([["written", c.written], ["kept", c.kept.length], ["removed by retention", c.removed], ["a resume would use", c.resume_from ?? "–"]]);
  html += `<div class="muted">store: ${esc(c.store || "none (this job writes no checkpoints)")}</div>`;
  html += table("checkpoints", [["id", "num"], ["iteration", "num"], ["epoch", "num"], ["size", "num"], ["write time", "num"], ["committed"], ["verified"], [""], [""]],
    c.kept.slice().reverse().map(k => `<tr class="checkpoint" data-id="${k.id}"><td class="num">${k.id}</td><td class="num">${k.iteration}</td><td class="num">${k.epoch}</td><td class="num">${bytes(k.bytes)}</td><td class="num">${(k.write_seconds * 1000).toFixed(1)} ms</td><td>${when(k.at_ms)}</td>
      <td>${k.verified ? `yes <span class="muted">(${when(k.verified_ms)})</span>` : `<span class="state state-failed">no</span> <span class="err">${esc(k.verify_error)}</span>`}</td>
      <td><button data-verify="/api/jobs/${job}/checkpoints/${k.id}/verify">verify now</button></td><td>${k.id === c.resume_from ? "<b>resume uses this one</b>" : ""}</td></tr>`), "no checkpoint yet");
  return html;
}

// "verify now": the driver reads the checkpoint's blobs again.
page.addEventListener("click", async ev => {
  const url = ev.target?.dataset?.verify;
  if (!url) return;
  ev.target.disabled = true;
  ev.target.textContent = "verifying…";
  try {
    const r = await fetch(url, { method: "POST", credentials: "same-origin" });
    if (!r.ok) statusEl.textContent = "verify: " + ((await r.json().catch(() => ({}))).error || r.statusText);
  } finally {
    render();
  }
});

async function render() {
  const parts = (location.hash || "#/cluster").slice(2).split("/");
  const [name, arg] = [parts[0] || "cluster", parts[1]];
  document.querySelectorAll("nav a").forEach(a => a.classList.toggle("active", a.dataset.page === name));
  const pages = { cluster: () => clusterPage(), jobs: () => (arg ? jobPage(arg) : jobsPage()), training: () => trainingPage(arg), checkpoints: () => checkpointsPage(arg) };
  try {
    const html = await (pages[name] || pages.cluster)();
    const y = window.scrollY;
    page.innerHTML = html;
    window.scrollTo(0, y);
    statusEl.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    statusEl.textContent = "cannot reach the driver: " + e.message;
  }
}

let timer = null;
function schedule() {
  clearTimeout(timer);
  timer = setTimeout(async () => { if (!document.hidden && !document.activeElement?.matches("select")) await render(); schedule(); }, POLL_MS);
}
window.addEventListener("hashchange", () => { render(); schedule(); });
render();
schedule();
