// The browser terminal: /s/SESSION#token=TOKEN. Attaches with the token, shows
// the role (observers get a read-only badge and never send input), lists the
// windows, and after a dropped connection reconnects by itself and resumes from
// the last output offset it drew. The terminal always has the session's size
// (any other size wraps the program's lines and piles them up): a client that
// may resize proposes the browser's size, and a session larger than the window
// scrolls or is scaled to fit (the "view" button; remembered per browser).
"use strict";

const sessionId = decodeURIComponent(location.pathname.split("/")[2] || "");
const token = takeToken();
const $ = (id) => document.getElementById(id);

const term = new Terminal({ cursorBlink: true, scrollback: 5000, convertEol: false });
const fit = new FitAddon.FitAddon();
term.loadAddon(fit);
term.open($("terminal"));
fit.fit();

let conn = null;
let readOnly = true;
let canSwitch = false;
let position = null; // [window, seq]: what the terminal shows, for resuming
let ended = false;
let attempt = 0;
let view = localStorage.getItem("tachi-view") === "scale" ? "scale" : "scroll";
window.tachiTerm = term; // for tests and the devtools console
window.tachiState = () => ({ position, readOnly, ended, connected: !!(conn && conn.attached) });

function status(text, bad) {
  $("status").textContent = text;
  $("status").className = bad ? "status bad" : "status";
}

function followSession(rows, cols) {
  if (rows > 0 && cols > 0 && (term.rows !== rows || term.cols !== cols)) {
    term.resize(cols, rows);
  }
  layout();
}

function layout() {
  const box = $("terminal");
  const shown = box.querySelector(".xterm");
  const screen = box.querySelector(".xterm-screen");
  $("view").textContent = view;
  box.style.overflow = view === "scale" ? "hidden" : "auto";
  if (!shown || !screen) return;
  const scale = view === "scale"
    ? Math.min(1, box.clientWidth / screen.offsetWidth, box.clientHeight / screen.offsetHeight)
    : 1;
  shown.style.transform = scale < 1 ? `scale(${scale})` : "";
}

function onFrame(kind, value) {
  if (kind === "output") {
    position = [value.window, value.seq + value.data.length];
    term.write(value.data);
    return;
  }
  const event = value.event;
  if (event === "screen") {
    followSession(value.rows, value.cols);
    position = [value.window, value.seq];
    term.reset();
    term.write(value.data);
    refreshWindows();
  } else if (event === "resized") {
    followSession(value.rows, value.cols);
  } else if (event === "notice") {
    status(value.message, value.level !== "info");
  } else if (event === "token") {
    sessionStorage.setItem("tachi-token", value.token);
    conn.token = value.token;
  } else if (event === "detached") {
    ended = true;
    status(value.message || "detached", true);
  } else if (event === "error") {
    status(value.error.message, true);
  }
}

async function refreshWindows() {
  if (!conn || !conn.attached) return;
  let windows;
  try {
    windows = await conn.call("window.list", { session: sessionId });
  } catch (err) {
    return;
  }
  const box = $("windows");
  box.replaceChildren();
  for (const w of windows) {
    const button = document.createElement("button");
    button.textContent = `${w.id}:${w.name}`;
    button.className = w.active ? "active" : "";
    button.disabled = !canSwitch || w.active;
    button.onclick = () => conn.call("window.select", { session: sessionId, window: w.id });
    box.appendChild(button);
  }
}

function sendSize() {
  if (conn && conn.attached && !readOnly) {
    conn.call("client.resize", { rows: term.rows, cols: term.cols }).catch(() => {});
  }
}

async function connect() {
  conn = new TachiConnection(token, onFrame, onClose);
  conn.token = sessionStorage.getItem("tachi-token") || token;
  await conn.open();
  const args = {
    session: sessionId,
    size: { rows: term.rows, cols: term.cols },
    resume: position ? { window: position[0], seq: position[1] } : undefined,
  };
  const session = await conn.call("session.attach", args);
  conn.attached = true;
  attempt = 0;
  readOnly = !!session.readOnly;
  canSwitch = !readOnly;
  document.title = `tachi: ${session.name || session.id}`;
  $("name").textContent = session.name || session.id;
  $("role").textContent = readOnly ? `${session.role} · read-only` : session.role;
  $("role").className = readOnly ? "badge readonly" : "badge";
  status("connected");
  refreshWindows();
}

function onClose(event) {
  if (conn) conn.attached = false;
  if (ended) return;
  attempt += 1;
  const delay = Math.min(250 * 2 ** attempt, 5000);
  status(`reconnecting… ${event.reason || ""}`.trim(), true);
  setTimeout(() => connect().catch(giveUpIfRefused), delay);
}

function giveUpIfRefused(err) {
  if (err.refused) {
    ended = true;
    if (conn) conn.close();
  }
  status(err.refused ? err.message : `reconnecting… ${err.message}`, true);
}

term.onData((data) => {
  if (!readOnly && conn) conn.sendInput(data);
});
window.addEventListener("resize", () => {
  // Only a client that may resize the session follows the browser's size.
  if (!readOnly) fit.fit();
  layout();
});
$("view").onclick = () => {
  view = view === "scale" ? "scroll" : "scale";
  localStorage.setItem("tachi-view", view);
  layout();
};
term.onResize(() => sendSize());

if (!sessionId) {
  status("no session in the address", true);
} else {
  connect().catch(giveUpIfRefused);
}
