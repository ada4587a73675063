// GET /: the live sessions the presented token may see, each a link to its
// terminal page (the token stays in the fragment).
"use strict";

const $ = (id) => document.getElementById(id);

async function list(token) {
  const conn = new TachiConnection(token, () => {}, null);
  try {
    await conn.open();
    const sessions = await conn.call("session.list", { filter: {} });
    const body = document.querySelector("#sessions tbody");
    body.replaceChildren();
    for (const s of sessions.filter((s) => s.state !== "closed")) {
      const row = document.createElement("tr");
      const link = document.createElement("a");
      link.href = `/s/${encodeURIComponent(s.id)}#token=${encodeURIComponent(token)}`;
      link.textContent = s.id;
      const cells = [link, s.name || "-", s.state, s.userId, (s.command || []).join(" ")];
      for (const c of cells) {
        const td = document.createElement("td");
        if (typeof c === "string") td.textContent = c;
        else td.appendChild(c);
        row.appendChild(td);
      }
      body.appendChild(row);
    }
    $("sessions").hidden = false;
    $("status").textContent = `${body.children.length} live session(s)`;
  } catch (err) {
    $("status").textContent = err.message;
    $("status").className = "status bad";
  } finally {
    conn.close();
  }
}

$("login").onsubmit = (event) => {
  event.preventDefault();
  sessionStorage.setItem("tachi-token", $("token").value);
  list($("token").value);
};
const initial = takeToken();
if (initial) list(initial);
