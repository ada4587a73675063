// The fleet's web console (tachi gateway): hosts and sessions, live from the
// registry; each session opens in the browser terminal through NATS. The
// gateway's key comes in the URL fragment (never sent to a server in a URL)
// and is kept for this tab only.
"use strict";

const $ = (id) => document.getElementById(id);
let latest = { hosts: [], sessions: [] };
let refused = false;
let socket = null;
let nextId = 1;
const waiting = new Map();
// The audit view: the filters shown, and the cursor of the last record listed.
let auditQuery = {};
let auditCursor = null;

function takeKey() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (key) {
    sessionStorage.setItem("tachi-gateway-key", key);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("tachi-gateway-key") || "";
}

function cells(row, values) {
  for (const v of values) {
    const td = document.createElement("td");
    if (v instanceof Node) td.appendChild(v);
    else td.textContent = v === undefined || v === null ? "-" : String(v);
    row.appendChild(td);
  }
}

function render() {
  const token = $("token").value;
  const hosts = document.querySelector("#hosts tbody");
  hosts.replaceChildren();
  for (const h of latest.hosts) {
    const row = document.createElement("tr");
    row.dataset.host = h.host;
    cells(row, [h.host, h.status, h.sessions, h.version, h.startedAt]);
    hosts.appendChild(row);
  }
  const sessions = document.querySelector("#sessions tbody");
  sessions.replaceChildren();
  for (const s of latest.sessions) {
    const row = document.createElement("tr");
    row.dataset.session = s.id;
    row.dataset.host = s.host;
    const link = document.createElement("a");
    link.href = `/s/${encodeURIComponent(s.id)}#token=${encodeURIComponent(token)}`;
    link.target = "_blank";
    link.rel = "noopener";
    link.textContent = s.id;
    cells(row, [s.host, link, s.name, s.state, s.userId, s.clients, (s.command || []).join(" ")]);
    sessions.appendChild(row);
  }
}

// A request to the gateway over the list's WebSocket; resolves with its result
// or rejects with the gateway's message.
function ask(op, args) {
  return new Promise((resolve, reject) => {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      reject(new Error("not connected to the gateway"));
      return;
    }
    const id = nextId++;
    waiting.set(id, { resolve, reject });
    socket.send(JSON.stringify({ ...args, id, op }));
  });
}

function humanSize(n) {
  if (typeof n !== "number") return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function humanDuration(s) {
  if (typeof s !== "number") return "-";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function say(id, text, bad) {
  $(id).textContent = text;
  $(id).className = bad ? "note bad" : "note";
}

async function loadRecordings() {
  say("recordings-status", "loading…");
  let recs;
  try {
    recs = await ask("recordings", {});
  } catch (err) {
    say("recordings-status", err.message, true);
    return;
  }
  const body = document.querySelector("#recordings tbody");
  body.replaceChildren();
  for (const r of recs) {
    const row = document.createElement("tr");
    row.dataset.recording = r.name;
    const play = document.createElement("button");
    play.type = "button";
    play.textContent = "play";
    play.onclick = () => playRecording(r.name);
    cells(row, [r.host, r.id, r.session, r.started, humanDuration(r.duration), humanSize(r.size), play]);
    body.appendChild(row);
  }
  say("recordings-status", `${recs.length} recording(s) in the fleet's object store`);
}

async function playRecording(name) {
  $("playback").hidden = false;
  $("playing").textContent = name;
  say("player-status", "fetching and checking against the audit stream…");
  if (window.tachiPlayer) {
    window.tachiPlayer.dispose();
    window.tachiPlayer = null;
  }
  $("player").replaceChildren();
  let got;
  try {
    got = await ask("play", { name });
  } catch (err) {
    say("player-status", err.message, true);
    return;
  }
  say("player-status", `${humanSize(got.size)}, SHA-256 matches its record.stop audit record`);
  window.tachiPlayer = AsciinemaPlayer.create({ data: got.cast }, $("player"), {
    autoPlay: true,
    idleTimeLimit: 2,
  });
}

async function loadAudit(older) {
  if (!older) {
    auditQuery = {
      host: $("audit-host").value.trim(),
      session: $("audit-session").value.trim(),
      user: $("audit-user").value.trim(),
    };
    auditCursor = null;
  }
  say("audit-status", "loading…");
  let page;
  try {
    page = await ask("audit", { ...auditQuery, before: older ? auditCursor : null });
  } catch (err) {
    say("audit-status", err.message, true);
    return;
  }
  const body = document.querySelector("#audit tbody");
  if (!older) body.replaceChildren();
  for (const r of page.records) {
    const row = document.createElement("tr");
    row.dataset.host = r.host;
    row.dataset.seq = r.seq;
    const details = r.details ? JSON.stringify(r.details) : "";
    cells(row, [r.time, r.host, r.result, r.action, r.session, r.principal, r.source, r.reason, details]);
    body.appendChild(row);
  }
  const last = page.records[page.records.length - 1];
  if (last) auditCursor = [String(last.time), String(last.host), last.seq];
  const shown = body.children.length;
  const more = page.more ? ` (newest first, ${page.limit} at a time: "older" for more)` : "";
  say("audit-status", `${shown} of ${page.matched} matching record(s)${more}`);
  $("audit-older").hidden = !page.more;
}

function connect(key) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/fleet`);
  ws.onopen = () => {
    ws.send(JSON.stringify({ key }));
    socket = ws;
    loadRecordings();
    loadAudit(false);
  };
  ws.onmessage = (event) => {
    const data = JSON.parse(event.data);
    if (data.reply !== undefined) {
      const pending = waiting.get(data.reply);
      waiting.delete(data.reply);
      if (pending) {
        if (data.ok) pending.resolve(data.result);
        else pending.reject(new Error(data.error));
      }
      return;
    }
    if (data.error) {
      refused = true; // a wrong key stays wrong: no retry
      $("status").textContent = data.error;
      $("status").className = "status bad";
      return;
    }
    latest = data;
    $("status").textContent = `${data.hosts.length} host(s), ${data.sessions.length} session(s)`;
    $("status").className = "status";
    render();
  };
  ws.onclose = () => {
    socket = null;
    for (const pending of waiting.values()) pending.reject(new Error("the gateway went away"));
    waiting.clear();
    if (refused) return;
    $("status").textContent = "disconnected; retrying…";
    setTimeout(() => connect(key), 1000);
  };
}

$("token").value = sessionStorage.getItem("tachi-token") || "";
$("token").oninput = () => {
  sessionStorage.setItem("tachi-token", $("token").value);
  render();
};
$("login").onsubmit = (event) => event.preventDefault();
$("audit-filters").onsubmit = (event) => {
  event.preventDefault();
  loadAudit(false);
};
$("audit-older").onclick = () => loadAudit(true);
$("recordings-refresh").onclick = () => loadRecordings();
window.tachiFleet = () => latest;
connect(takeKey());
