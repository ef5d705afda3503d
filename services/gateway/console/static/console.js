// Progressive enhancement only: every page works without this file.
// 1. The live flow: rows arrive over Server-Sent Events and replace or join the table.
// 2. The alert page loads its (slower, verified) audit trail after the page itself.
"use strict";

function liveFlow() {
  const table = document.getElementById("flow");
  const badge = document.getElementById("live");
  if (!table || !window.EventSource) return;
  const body = table.tBodies[0];
  const source = new EventSource(table.dataset.stream);
  source.onopen = () => { badge.textContent = badge.dataset.on; badge.classList.add("on"); };
  source.onerror = () => { badge.textContent = badge.dataset.off; badge.classList.remove("on"); };
  source.addEventListener("row", (event) => {
    const { id, html } = JSON.parse(event.data);
    const holder = document.createElement("tbody");
    holder.innerHTML = html.trim();  // rendered and escaped by the server's templates
    const row = holder.firstElementChild;
    const old = document.getElementById("a-" + id);
    if (old) old.replaceWith(row); else body.prepend(row);
    row.classList.add("fresh");
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
  });
}

async function lazyTrail() {
  const box = document.getElementById("trail");
  if (!box) return;
  box.classList.add("loading");
  try {
    const response = await fetch(box.dataset.src, { headers: { "Accept": "text/html-fragment" } });
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const main = page.querySelector("main");
    box.replaceChildren(...(main || page.body).childNodes);
  } finally {
    box.classList.remove("loading");
  }
}

document.addEventListener("DOMContentLoaded", () => { liveFlow(); lazyTrail(); });
