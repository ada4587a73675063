// The fleet's web console (tachi gateway): hosts and sessions, live from the
// registry; each session opens in the browser terminal through NATS. The
// gateway's key comes in the URL fragment (never sent to a server in a URL)
// and is kept for this tab only.
"use strict";

const $ = (id) => document.getElementById(id);
let latest = { hosts: [], sessions: [] };
let refused = false;

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

function connect(key) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/fleet`);
  ws.onopen = () => ws.send(JSON.stringify({ key }));
  ws.onmessage = (event) => {
    const data = JSON.parse(event.data);
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
window.tachiFleet = () => latest;
connect(takeKey());
