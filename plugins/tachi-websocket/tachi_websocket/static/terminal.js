// The browser terminal: /s/SESSION#token=TOKEN. Attaches with the token, shows
// the role (observers get a read-only badge and never send input), lists the
// windows, and after a dropped connection reconnects by itself and resumes from
// the last output offset it drew. The terminal always has the session's size
// (any other size wraps the program's lines and piles them up): a client that
// may resize proposes the browser's size, and a session larger than the window
// scrolls or is scaled to fit (the "view" button; remembered per browser).
//
// Predictive echo (mosh-style): a printable key is drawn at once, underlined,
// in an overlay above the terminal (the terminal's own state is never touched),
// and the overlay goes when the session's output shows that character in that
// cell; output that shows something else there, or nothing within a while,
// drops every prediction. "auto" predicts only once echoes take longer than
// PREDICT_AFTER_MS (as mosh's adaptive mode), "on" always, "off" never (the
// "predict" button; remembered per browser). Never for observers, whose keys
// go nowhere, nor in full-screen programs (the alternate screen).
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
window.tachiState = () => ({
  position, readOnly, ended, connected: !!(conn && conn.attached),
  predict: predictMode, predicting: predicting(), echoMs: srtt,
});

// -- predictive echo ---------------------------------------------------------
const PREDICT_MODES = ["auto", "on", "off"];
const PREDICT_AFTER_MS = 30;
const PREDICT_GIVE_UP_MS = 1500;
let predictMode = PREDICT_MODES.includes(localStorage.getItem("tachi-predict"))
  ? localStorage.getItem("tachi-predict") : "auto";
let predictions = []; // {ch, x, y (buffer row), at, el}, in typing order
let srtt = 0; // smoothed keystroke-to-output time, ms
let keyAt = 0; // when the last printable key went out (for srtt)
const overlay = document.createElement("div");
overlay.className = "tachi-predict";
$("terminal").querySelector(".xterm-screen").appendChild(overlay);
window.tachiPredictions = () => predictions.map(({ ch, x, y }) => ({ ch, x, y }));

function predicting() {
  if (readOnly || predictMode === "off" || term.buffer.active.type !== "normal") return false;
  return predictMode === "on" || srtt > PREDICT_AFTER_MS;
}

function cellSize() {
  const screen = $("terminal").querySelector(".xterm-screen");
  return [screen.offsetWidth / term.cols, screen.offsetHeight / term.rows];
}

function placePredictions() {
  const [w, h] = cellSize();
  const top = term.buffer.active.viewportY;
  for (const p of predictions) {
    Object.assign(p.el.style, {
      left: `${p.x * w}px`, top: `${(p.y - top) * h}px`, width: `${w}px`, height: `${h}px`,
      lineHeight: `${h}px`, fontFamily: term.options.fontFamily, fontSize: `${term.options.fontSize}px`,
    });
  }
}

// Single-width printable characters only: a control key, an escape sequence,
// a paste or a wide character is not guessed at.
const PRINTABLE = /^[\x20-\x7e\u00a0-\u00ff]{1,8}$/;

function predict(data) {
  if (!PRINTABLE.test(data) || !predicting()) return;
  const b = term.buffer.active;
  const last = predictions[predictions.length - 1];
  let x = last ? last.x + 1 : b.cursorX;
  const y = last ? last.y : b.cursorY + b.baseY;
  for (const ch of data) {
    if (x >= term.cols) break; // where a wrap would take it is the shell's business
    const el = document.createElement("span");
    el.textContent = ch;
    el.dataset.x = x;
    el.dataset.y = y;
    overlay.appendChild(el);
    predictions.push({ ch, x, y, at: performance.now(), el });
    x += 1;
  }
  placePredictions();
  setTimeout(expirePredictions, PREDICT_GIVE_UP_MS + 10);
}

function clearPredictions() {
  for (const p of predictions) p.el.remove();
  predictions = [];
}

function expirePredictions() {
  const now = performance.now();
  if (predictions.length && now - predictions[0].at > PREDICT_GIVE_UP_MS) clearPredictions();
}

// After output is parsed: confirm (remove the overlay of) each prediction the
// terminal now shows, in order; drop them all at the first it contradicts.
function checkPredictions() {
  const b = term.buffer.active;
  while (predictions.length) {
    const p = predictions[0];
    const line = b.getLine(p.y);
    const cell = line && line.getCell(p.x);
    const shown = cell ? cell.getChars() : "";
    if (shown === p.ch) {
      p.el.remove();
      predictions.shift();
    } else if (shown !== "" && shown !== " ") {
      clearPredictions();
    } else {
      break; // not echoed yet
    }
  }
  placePredictions();
}

function noteEcho() {
  if (!keyAt) return;
  const sample = performance.now() - keyAt;
  keyAt = 0;
  if (sample > 5000) return;
  srtt = srtt ? 0.875 * srtt + 0.125 * sample : sample;
}

function showPredictMode() {
  const button = $("predict");
  button.textContent = `predict: ${readOnly ? "off" : predictMode}`;
  button.disabled = readOnly;
}

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
    noteEcho();
    term.write(value.data, predictions.length ? checkPredictions : undefined);
    return;
  }
  const event = value.event;
  if (event === "screen") {
    followSession(value.rows, value.cols);
    position = [value.window, value.seq];
    clearPredictions();
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
  if (readOnly) clearPredictions();
  showPredictMode();
  status("connected");
  refreshWindows();
}

function onClose(event) {
  if (conn) conn.attached = false;
  clearPredictions();
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
  if (readOnly || !conn) return;
  predict(data);
  if (PRINTABLE.test(data)) keyAt = keyAt || performance.now();
  conn.sendInput(data);
});
term.onRender(() => { if (predictions.length) placePredictions(); });
$("predict").onclick = () => {
  predictMode = PREDICT_MODES[(PREDICT_MODES.indexOf(predictMode) + 1) % PREDICT_MODES.length];
  localStorage.setItem("tachi-predict", predictMode);
  if (!predicting()) clearPredictions();
  showPredictMode();
};
showPredictMode();
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
