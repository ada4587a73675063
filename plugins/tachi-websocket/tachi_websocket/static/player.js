// /r/RECORDING#token=TOKEN: read the recording through the protocol (so the
// daemon checks who may read it, and audits the access) and play it with
// asciinema-player.
"use strict";

const recordingId = decodeURIComponent(location.pathname.split("/")[2] || "");
const $ = (id) => document.getElementById(id);

async function load() {
  const conn = new TachiConnection(takeToken(), () => {}, null);
  await conn.open();
  const chunks = [];
  let offset = 0;
  for (;;) {
    const part = await conn.call("record.read", { recording: recordingId, offset });
    const bytes = Uint8Array.from(atob(part.data), (c) => c.charCodeAt(0));
    chunks.push(bytes);
    offset += bytes.length;
    if (part.eof) break;
  }
  conn.close();
  const all = new Uint8Array(offset);
  let at = 0;
  for (const c of chunks) { all.set(c, at); at += c.length; }
  return new TextDecoder().decode(all);
}

load().then((cast) => {
  $("name").textContent = `recording ${recordingId}`;
  $("status").textContent = `${cast.split("\n").length - 2} events`;
  window.tachiPlayer = AsciinemaPlayer.create({ data: cast }, $("player"), { autoPlay: true });
}).catch((err) => {
  $("status").textContent = err.message;
  $("status").className = "status bad";
});
