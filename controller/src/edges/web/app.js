// The rollout page's live view: polls /rollouts/ID/live and updates the progress
// bars, counts, state and event list in place. Nothing else on the site needs script.
(function () {
  "use strict";
  const live = document.getElementById("live");
  if (!live) return;
  const rollout = live.dataset.rollout;
  let after = Number(live.dataset.after || "0");
  const share = (part, whole) => (whole ? (Math.min(part, whole) * 100) / whole : 0);

  function apply(update) {
    const state = document.getElementById("rollout-state");
    if (state) { state.textContent = update.state; state.className = "state " + update.state; }
    const active = document.getElementById("rollout-active");
    if (active) active.textContent = update.active;
    for (const phase of update.phases) {
      const row = live.querySelector('tr[data-phase="' + phase.index + '"]');
      if (!row) continue;
      for (const key of ["machines", "active", "activating", "failed"]) {
        const cell = row.querySelector('[data-count="' + key + '"]');
        if (cell) cell.textContent = phase[key];
      }
      // The bar is SVG: its parts are rectangles laid end to end in a 100-wide box.
      let x = 0;
      for (const key of ["active", "failed", "activating"]) {
        const width = Math.min(share(phase[key], phase.machines), 100 - x);
        const part = row.querySelector('.bar [data-part="' + key + '"]');
        if (part) { part.setAttribute("x", x.toFixed(1)); part.setAttribute("width", width.toFixed(1)); }
        x += width;
      }
    }
    const list = document.getElementById("events");
    for (const event of update.events) {
      after = Math.max(after, event.id);
      if (list) {
        const item = document.createElement("li");
        item.textContent = event.text;
        list.appendChild(item);
      }
    }
    live.dataset.after = String(after);
    live.dataset.updated = String(Date.now());
    return update.state === "running" || update.state === "paused";
  }

  async function poll() {
    try {
      const response = await fetch("/rollouts/" + rollout + "/live?after=" + after, { credentials: "same-origin" });
      if (response.status === 401) { window.location = "/login?next=" + encodeURIComponent(location.pathname); return; }
      if (response.ok && !apply(await response.json())) return;
    } catch (error) {
      // The controller restarting or the network blinking: try again.
    }
    setTimeout(poll, 2000);
  }
  setTimeout(poll, 1000);
})();
