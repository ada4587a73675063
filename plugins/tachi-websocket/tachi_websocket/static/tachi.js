// The tachi wire protocol in the browser: one frame per binary WebSocket
// message (1-byte channel, uint32 big-endian length, payload); see
// docs/protocol.md. Shared by the terminal, session-list and player pages.
"use strict";

const STDIN = 0, STDOUT = 1, CONTROL = 2;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function frame(channel, payload) {
  const out = new Uint8Array(5 + payload.length);
  out[0] = channel;
  new DataView(out.buffer).setUint32(1, payload.length);
  out.set(payload, 5);
  return out;
}

// The token travels in the URL fragment (never sent to a server) and is kept
// for this tab only, so that reconnecting needs no new link.
function takeToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const fromHash = params.get("token");
  if (fromHash) {
    sessionStorage.setItem("tachi-token", fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return fromHash || sessionStorage.getItem("tachi-token") || "";
}

// An error the daemon answered with (as opposed to a lost connection): retrying
// the same request would only be refused again.
function refusal(error) {
  const err = new Error(error ? error.message : "error");
  err.refused = true;
  err.code = error ? error.code : "";
  return err;
}

class TachiConnection {
  // onFrame(kind, value): kind is "output" ({window, seq, data}) or "control" (object).
  constructor(token, onFrame, onClose) {
    this.token = token;
    this.onFrame = onFrame;
    this.onClose = onClose;
    this.nextId = 1;
    this.replies = new Map();
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${scheme}://${location.host}/ws`);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onmessage = (event) => this._receive(event.data);
      ws.onclose = (event) => {
        for (const [, pending] of this.replies) pending.reject(new Error("connection closed"));
        this.replies.clear();
        if (this.onClose) this.onClose(event);
        reject(new Error(event.reason || "connection closed"));
      };
      ws.onopen = () => {
        this.call("hello", { version: 1, token: this.token || undefined }).then(resolve, reject);
      };
    });
  }

  call(op, args) {
    const id = this.nextId++;
    const body = encoder.encode(JSON.stringify({ id, op, args: args || {} }));
    this.ws.send(frame(CONTROL, body));
    return new Promise((resolve, reject) => this.replies.set(id, { resolve, reject }));
  }

  sendInput(text) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(frame(STDIN, encoder.encode(text)));
    }
  }

  close() {
    if (this.ws) this.ws.close();
  }

  _receive(buffer) {
    const view = new DataView(buffer);
    const channel = view.getUint8(0);
    const length = view.getUint32(1);
    const payload = new Uint8Array(buffer, 5, length);
    if (channel === STDOUT) {
      const window = view.getUint32(5);
      const seq = Number(view.getBigUint64(9));
      this.onFrame("output", { window, seq, data: payload.subarray(12) });
      return;
    }
    const message = JSON.parse(decoder.decode(payload));
    if (message.id !== undefined && "ok" in message && this.replies.has(message.id)) {
      const pending = this.replies.get(message.id);
      this.replies.delete(message.id);
      if (message.ok) pending.resolve(message.result);
      else pending.reject(refusal(message.error));
      return;
    }
    if (message.event === "error" && this.replies.has(1)) {
      this.replies.get(1).reject(refusal(message.error));
      this.replies.delete(1);
      return;
    }
    this.onFrame("control", message);
  }
}
