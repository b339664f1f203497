// recstream live page: polls /v1/stats with the operator's admin key and draws charts on <canvas>.
// No dependencies and no build step. The key stays in this tab (sessionStorage).
"use strict";
const POLL_MS = 2000, KEEP = 150;
const series = { rate: [], auc: [] };
let last = null;

const $ = (id) => document.getElementById(id);
const key = () => sessionStorage.getItem("recstream-key") || "";
const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());

async function call(method, path, body) {
  const response = await fetch(path, {
    method, headers: { "Authorization": "Bearer " + key(), "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || response.statusText);
  return data;
}

function line(canvas, points, color, fixedMax) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#e6eaef"; ctx.fillStyle = "#6b7785"; ctx.font = "11px system-ui";
  const values = points.map((p) => p[1]);
  const max = fixedMax || Math.max(1e-9, ...values) * 1.1, min = fixedMax ? 0 : 0;
  for (let i = 0; i <= 4; i++) {
    const y = pad / 2 + (h - pad) * i / 4;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText((max - (max - min) * i / 4).toPrecision(3), 0, y + 4);
  }
  if (points.length < 2) return;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
  points.forEach(([t, v], i) => {
    const x = pad + (w - pad) * (t - t0) / Math.max(1e-9, t1 - t0);
    const y = pad / 2 + (h - pad) * (1 - (v - min) / (max - min));
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.stroke(); ctx.lineWidth = 1;
}

function bars(canvas, entries, color, unit) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h); ctx.font = "12px system-ui";
  if (!entries.length) { ctx.fillStyle = "#6b7785"; ctx.fillText("nothing yet", 8, 20); return; }
  const max = Math.max(...entries.map((e) => e[1])), rowH = Math.min(26, h / entries.length);
  entries.forEach(([label, value], i) => {
    const y = i * rowH, barW = (w - 240) * value / max;
    ctx.fillStyle = "#1d2733"; ctx.fillText(label, 4, y + rowH * 0.65);
    ctx.fillStyle = color; ctx.fillRect(180, y + 4, Math.max(2, barW), rowH - 8);
    ctx.fillStyle = "#1d2733"; ctx.fillText(fmt(value) + (unit || ""), 186 + barW, y + rowH * 0.65);
  });
}

function render(stats) {
  const m = stats.model, now = stats.time;
  $("status").textContent = "· live, updated " + new Date(now * 1000).toLocaleTimeString();
  // (the version Redis names current; this API process may still serve an older one: a load refused or under way)
  $("t-model").textContent = m.current ? `v${m.current} (${m.kind})` +
    (m.serving !== null && m.serving !== m.current ? `, this API serves v${m.serving}` : "") : "none yet";
  $("t-learned").textContent = fmt(m.events_learned);
  $("t-auc").textContent = m.progressive_auc === null ? "–" : m.progressive_auc.toFixed(3);
  $("t-age").textContent = m.checkpoint_age_seconds === null ? "–" : m.checkpoint_age_seconds.toFixed(1) + " s";
  const guard = stats.guard.state || "learning";
  $("t-guard").textContent = guard; $("t-guard").className = "value " + (guard === "paused" ? "paused" : "");
  if (last) {
    const rate = Math.max(0, (m.events_learned - last.model.events_learned) / Math.max(1e-6, now - last.time));
    $("t-rate").textContent = fmt(Math.round(rate));
    series.rate.push([now, rate]);
  }
  if (m.progressive_auc !== null) series.auc.push([now, m.progressive_auc]);
  for (const s of Object.values(series)) while (s.length > KEEP) s.shift();
  line($("c-rate"), series.rate, "#2c7be5");
  line($("c-auc"), series.auc, "#00a86b", 1.0);
  bars($("c-gate"), Object.entries(stats.gate).sort((a, b) => b[1] - a[1]), "#e67e22");
  // (a p99 past the histogram's last bound is that bound, marked: "≥")
  bars($("c-latency"), Object.entries(stats.api).map(([r, v]) => [(v.p99_beyond_buckets ? "≥ " : "") + r,
    v.p99_seconds * 1000]), "#8e44ad", " ms");
  const body = $("versions").querySelector("tbody");
  body.replaceChildren(...stats.versions.slice().reverse().map((v) => {
    const row = document.createElement("tr");
    if (v.current) row.className = "current";
    const cells = [`v${v.version}${v.pinned ? " (pinned)" : ""}`, (v.created || "").slice(0, 19),
      fmt(v.events_learned), v.progressive_auc === null ? "–" : v.progressive_auc.toFixed(3), v.parent || "–"];
    for (const text of cells) { const td = document.createElement("td"); td.textContent = text; row.append(td); }
    const td = document.createElement("td");
    if (!v.current) {
      const button = document.createElement("button");
      button.textContent = "Promote";
      button.addEventListener("click", () => act("POST", `/v1/models/${v.version}/promote`, `promote v${v.version}`));
      td.append(button);
    } else td.textContent = v.version === m.serving ? "serving" : "current (not served here yet)";
    row.append(td);
    return row;
  }));
  last = stats;
}

async function act(method, path, what) {
  const reason = prompt(`Why ${what}? (recorded with the change)`);
  if (!reason) return;
  try {
    const answer = await call(method, path, { reason });
    $("action").textContent = `${what}: done, v${answer.current} is current`;
  }
  catch (error) { $("action").textContent = `${what}: ${error.message}`; }
}

async function poll() {
  if (!key()) return;
  try { render(await call("GET", "/v1/stats")); }
  catch (error) { $("status").textContent = "· " + error.message; }
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("recstream-key", $("key").value.trim());
  $("key").value = "";
  poll();
});
$("rollback").addEventListener("click", () => act("POST", "/v1/models/rollback", "roll back"));
setInterval(poll, POLL_MS);
poll();
