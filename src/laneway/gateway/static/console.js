// The laneway console: polls the gateway's API once a second and follows one
// session's events. Every call carries the token the page was given, so with
// tokens it shows only that token's sessions. No framework, no build step.
"use strict";

const POLL_MS = 1000;
const $ = (sel) => document.querySelector(sel);
let token = sessionStorage.getItem("laneway-token") || "";
let renders = 0;

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

async function api(path, method, body) {
  const init = { method: method || "GET", headers: authHeaders() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    $("#token-form").hidden = false;
    throw new Error("this gateway needs a token");
  }
  const data = await resp.json();
  if (!resp.ok) throw new Error((data.error && data.error.message) || resp.statusText);
  return data;
}

// Elements are built with textContent only: job data never becomes markup.
function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const kid of kids) node.append(kid instanceof Node ? kid : String(kid));
  return node;
}

function secs(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return s.toFixed(1) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  return (s / 3600).toFixed(1) + "h";
}

function clock(at) {
  return new Date(at * 1000).toLocaleTimeString();
}

function fill(id, rows) {
  $(id + " tbody").replaceChildren(...rows);
}

function setConn(node, state, text) {
  node.className = "conn " + state;
  node.textContent = text;
}

function sessionLink(session) {
  const a = el("a", { href: "#session=" + encodeURIComponent(session) }, session);
  return a;
}

function bar(active, limit) {
  const share = limit ? Math.min(1, active / limit) : 0;
  const inner = el("span");
  inner.style.width = (share * 100).toFixed(0) + "%";
  return el("div", { class: share >= 1 ? "bar full" : "bar", title: active + "/" + limit }, inner);
}

function renderLanes(snap) {
  const shared = snap.lanes.filter((l) => !l.name.startsWith("session:"));
  fill("#shared", shared.map((l) => el("tr", { "data-lane": l.name },
    el("td", {}, l.name), el("td", {}, bar(l.active, l.limit)),
    el("td", { class: "n" }, l.active + "/" + l.limit), el("td", { class: "n" }, l.queued),
    el("td", { class: "n" }, l.behind_session || 0), el("td", { class: "n" }, secs(l.oldest_queued_s)))));
  const sessions = snap.lanes.filter((l) => l.name.startsWith("session:"));
  fill("#sessions", sessions.map((l) => {
    const key = l.name.slice("session:".length);
    return el("tr", { "data-session": key },
      el("td", {}, sessionLink(key)), el("td", { class: "n" }, l.active),
      el("td", { class: "n" }, l.queued), el("td", { class: "n" }, secs(l.oldest_active_s)),
      el("td", { class: "n" }, secs(l.oldest_queued_s)));
  }));
  fill("#zombies", snap.zombies.map((z) => el("tr", { "data-job": z.job_id },
    el("td", {}, z.job_id), el("td", {}, sessionLink(z.session)), el("td", {}, z.kind),
    el("td", { class: "n" }, secs(z.age_s)))));
  fill("#nodes", (snap.running || []).map((r) => el("tr", { "data-job": r.job_id, "data-node": r.node },
    el("td", {}, r.node), el("td", {}, r.job_id), el("td", {}, sessionLink(r.session)),
    el("td", {}, r.handler), el("td", { class: "n" }, r.attempt), el("td", { class: "n" }, secs(r.age_s)))));
  $("#summary").replaceChildren(
    el("span", { class: "stat" }, "node ", el("b", {}, snap.node || "?")),
    el("span", { class: "stat" }, el("b", {}, snap.jobs_running), " running"),
    el("span", { class: "stat" }, el("b", {}, snap.jobs_queued), " queued"),
    el("span", { class: "stat" + (snap.zombies.length ? " bad" : "") }, el("b", {}, snap.zombies.length), " zombies"),
    el("span", { class: "stat" }, el("b", {}, (snap.loop_lag * 1000).toFixed(0) + " ms"), " loop lag"),
    el("span", { class: "stat" + (snap.loop_blocks ? " worry" : "") }, el("b", {}, snap.loop_blocks), " loop blocks"));
}

function renderState(state) {
  fill("#turns", state.turns.map((t) => el("tr", { "data-job": t.job_id, "data-session": t.session },
    el("td", {}, t.job_id), el("td", {}, sessionLink(t.session)), el("td", {}, t.handler || "?"),
    el("td", { class: "n" }, t.attempt), el("td", { class: "n" }, secs(t.age_s)),
    el("td", { class: "n" }, secs(t.quiet_s)),
    el("td", { class: "wrap worry" }, t.worry.join("; ")))));
  $("#blocks").replaceChildren(...state.blocks.map((b) => el("details", {},
    el("summary", { class: "worry" }, "loop.blocked at " + clock(b.at) + " for " + secs(b.blocked_s)),
    el("pre", {}, b.stack))));
}

function renderLoop(snap, state) {
  const recent = state.blocks.length ? ", recent loop.blocked reports below" : ", no loop.blocked reports";
  $("#loop").textContent = "lag " + (snap.loop_lag * 1000).toFixed(0) + " ms, " +
    snap.loop_blocks + " blocks since start" + recent;
}

async function requeue(jobId) {
  try {
    const done = await api("v1/jobs/" + encodeURIComponent(jobId) + "/requeue", "POST");
    $("#requeue-result").textContent = "requeued " + done.job_id + " (session " + done.session + ")";
  } catch (e) {
    $("#requeue-result").textContent = "requeue failed: " + e.message;
  }
  refresh(false);
}

function renderFailed(lists) {
  const jobs = lists.flatMap((l) => l.jobs).sort((a, b) => b.updated_at - a.updated_at).slice(0, 50);
  fill("#failed", jobs.map((j) => el("tr", { "data-job": j.id },
    el("td", {}, j.id), el("td", {}, sessionLink(j.session)), el("td", {}, j.handler),
    el("td", { class: "bad" }, j.state), el("td", { class: "wrap" }, j.reason || ""),
    el("td", { class: "n" }, j.attempts), el("td", {}, clock(j.updated_at)),
    el("td", {}, el("button", { type: "button", class: "requeue", onclick: () => requeue(j.id) }, "Requeue")))));
}

// refresh() polls; refresh(false) is one extra update after a button press.
let timer = null;
async function refresh(again) {
  if (again !== false) clearTimeout(timer);
  try {
    const [snap, state, ...lists] = await Promise.all([
      api("v1/lanes"), api("ui/state"),
      ...["failed", "timed_out", "dead"].map((s) => api("v1/jobs?limit=20&state=" + s)),
    ]);
    renderLanes(snap);
    renderState(state);
    renderLoop(snap, state);
    renderFailed(lists);
    setConn($("#conn"), "live", "live");
    document.body.dataset.renders = String(++renders);
  } catch (e) {
    setConn($("#conn"), "reconnecting", "reconnecting: " + e.message);
  }
  if (again !== false) timer = setTimeout(refresh, POLL_MS);
}

// -- the session view: its events over SSE, resumed with Last-Event-ID ----------

let follow = null;

function turnBox(jobId) {
  let box = document.getElementById("turn-" + jobId);
  if (!box) {
    box = el("div", { class: "turn", id: "turn-" + jobId, "data-job": jobId },
      el("div", { class: "meta" }, jobId), el("div", { class: "text" }));
    $("#transcript").append(box);
  }
  return box;
}

function showEvent(ev) {
  if (!ev.job_id) return;
  const box = turnBox(ev.job_id);
  const text = box.querySelector(".text");
  const data = ev.data || {};
  if (ev.kind === "delta") text.textContent += data.text || "";
  else if (ev.kind === "message" && !text.textContent) text.textContent = data.text || "";
  else if (ev.kind === "job.queued") box.querySelector(".meta").textContent = ev.job_id + " · " + (data.payload && data.payload.text || "");
  else if (ev.kind.startsWith("job.")) {
    const state = ev.kind.slice(4);
    if (state === "retry") text.textContent = "";
    box.dataset.state = state;
    box.className = "turn " + state;
    box.querySelector(".meta").append(" · " + state + (data.reason ? " (" + data.reason + ")" : ""));
  }
  const pane = $("#transcript");
  pane.scrollTop = pane.scrollHeight;
}

function parseSse(chunk, state, onEvent) {
  state.buf += chunk;
  let cut;
  while ((cut = state.buf.indexOf("\n\n")) >= 0) {
    const block = state.buf.slice(0, cut);
    state.buf = state.buf.slice(cut + 2);
    let id = null, data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("id:")) id = line.slice(3).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trim());
      else if (line.startsWith("retry:")) state.retry = parseInt(line.slice(6), 10) || state.retry;
    }
    if (id !== null) state.lastId = id;
    if (data.length) onEvent(JSON.parse(data.join("\n")));
  }
}

async function followSession(session) {
  if (follow) follow.abort();
  const ctl = new AbortController();
  follow = ctl;
  $("#sv-name").textContent = session;
  $("#sv-input").value = session;
  $("#stop").disabled = false;
  $("#transcript").replaceChildren();
  const state = { lastId: "0", retry: 1000, buf: "" };
  const conn = $("#sv-conn");
  while (!ctl.signal.aborted) {
    try {
      // fetch rather than EventSource: it can send the token header, and
      // Last-Event-ID resumes exactly after the last event shown.
      const resp = await fetch("v1/sessions/" + encodeURIComponent(session) + "/events", {
        headers: authHeaders({ "Last-Event-ID": state.lastId }), signal: ctl.signal,
      });
      if (resp.status === 401) { $("#token-form").hidden = false; throw new Error("needs a token"); }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      setConn(conn, "live", "following");
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parseSse(value, state, showEvent);
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    setConn(conn, "reconnecting", "reconnecting");
    await new Promise((r) => setTimeout(r, state.retry));
  }
}

async function stopSession() {
  const session = $("#sv-name").textContent;
  try {
    const r = await api("v1/sessions/" + encodeURIComponent(session) + "/stop", "POST", {});
    $("#stop-result").textContent = "stopped: " + r.cancelled.length + " running turn(s) cancelled";
  } catch (e) {
    $("#stop-result").textContent = "stop failed: " + e.message;
  }
}

function fromHash() {
  const m = location.hash.match(/^#session=(.+)$/);
  if (m) followSession(decodeURIComponent(m[1]));
}

$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("laneway-token", token);
  $("#token-form").hidden = true;
  refresh(false);
  fromHash();
});
$("#sv-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const s = $("#sv-input").value.trim();
  if (s) location.hash = "session=" + encodeURIComponent(s);
});
$("#stop").addEventListener("click", stopSession);
window.addEventListener("hashchange", fromHash);
refresh();
fromHash();
