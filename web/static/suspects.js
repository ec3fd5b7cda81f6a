// The Suspects page, driven from the keyboard like the review queue: the next suspects are
// fetched and their pictures loaded ahead; a decision is sent in the background and undone
// by z. Each decision goes to /api/suspects/{sha256} (POST), its undo to DELETE.
"use strict";
(() => {
  const root = document.getElementById("suspects");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const AHEAD = 6;
  const state = {
    queue: [], at: 0, offset: 0, exhausted: false, fetching: null, history: [], decided: 0,
    remaining: Number($("remaining").textContent.replace(/,/g, "")),
    classes: JSON.parse(root.dataset.classes || "[]").map((c) => c.name),
  };
  const picture = (item) => `/api/suspects/${item.sha256}/thumbnail?size=large`;

  function fetchMore() {
    if (state.exhausted) return Promise.resolve();
    if (state.fetching) return state.fetching;
    // Decided ones leave the list on the server: ask from the ones not yet seen here.
    const params = new URLSearchParams({ limit: "20", offset: String(state.offset) });
    state.fetching = fetch(`/api/suspects?${params}`, { headers: { Accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`suspects: HTTP ${r.status}`))))
      .then((page) => {
        const known = new Set(state.queue.map((i) => i.sha256));
        for (const item of page.items) if (!known.has(item.sha256)) state.queue.push(item);
        state.offset += page.items.length;
        state.exhausted = page.items.length < 20;
      })
      .catch(showError)
      .finally(() => { state.fetching = null; });
    return state.fetching;
  }

  function current() { return state.queue[state.at]; }

  function render() {
    const item = current();
    $("decided").textContent = state.decided.toLocaleString();
    $("remaining").textContent = Math.max(0, state.remaining).toLocaleString();
    if (!item) {
      $("suspect-image").hidden = true; $("suspects-empty").hidden = false;
      if (!state.exhausted) fetchMore().then(() => { if (current()) render(); });
      return;
    }
    $("suspect-image").hidden = false; $("suspects-empty").hidden = true;
    $("suspect-image").src = picture(item);
    $("suspect-image").alt = `labeled ${item.label}; the model would say ${item.suggested}`;
    $("given").textContent = item.label;
    $("suggested").textContent = item.suggested || "–";
    $("given-probability").textContent =
      item.given_probability === null ? "–" : item.given_probability.toFixed(3);
    $("suspect-path").textContent = `labeled/${item.path}`;
    $("suspect-split").textContent = item.split;
    for (const next of state.queue.slice(state.at + 1, state.at + 1 + AHEAD)) {
      if (!next.preloaded) { next.preloaded = new Image(); next.preloaded.src = picture(next); }
    }
    if (state.queue.length - state.at < AHEAD * 2) fetchMore();
  }

  function showError(error) {
    const box = $("suspects-error");
    box.textContent = String(error.message || error);
    box.hidden = false;
    clearTimeout(showError.timer);
    showError.timer = setTimeout(() => { box.hidden = true; }, 6000);
  }

  async function send(method, url, body) {
    const response = await fetch(url, {
      method,
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) {
      let detail = `HTTP ${response.status}`;
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new Error(detail);
    }
    return response.json();
  }

  function decide(decision, newLabel) {
    const item = current();
    if (!item) return;
    if (decision === "relabel" && (!newLabel || newLabel === item.label)) {
      showError(`it is labeled ${item.label} already: k keeps it`);
      return;
    }
    const entry = { kind: "decision", item, sent: false };
    const body = { decision };
    if (newLabel) body.new_label = newLabel;
    entry.request = send("POST", `/api/suspects/${item.sha256}`, body)
      .then(() => { entry.sent = true; })
      .catch((error) => {
        state.history.splice(state.history.indexOf(entry), 1);
        state.decided -= 1; state.remaining += 1;
        state.queue.splice(state.at, 0, item);
        showError(`could not decide on ${item.path}: ${error.message}`);
        render();
      });
    state.history.push(entry);
    state.decided += 1; state.remaining -= 1;
    state.queue.splice(state.at, 1);
    state.offset = Math.max(0, state.offset - 1);
    render();
  }

  const { skip, undo } = window.keyboardDecisions({
    state, current, render, send, showError,
    undoUrl: (item) => `/api/suspects/${item.sha256}`,
    onUndone: () => { state.decided -= 1; state.remaining += 1; state.offset += 1; },
  });

  const toggleKeys = (show) => { $("keys-help").hidden = !(show ?? $("keys-help").hidden); };

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement) return;
    if (event.key === "Escape") { $("keys-help").hidden = true; return; }
    if (event.key === "?") { toggleKeys(); event.preventDefault(); return; }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const digit = /^Digit([0-9])$/.exec(event.code);
    const item = current();
    let handled = true;
    if (digit) {
      const name = state.classes[(Number(digit[1]) + 9) % 10];
      if (name) decide("relabel", name);
    } else if (event.key === "Enter") {
      if (item && item.suggested) decide("relabel", item.suggested);
    } else if (event.key === "k") {
      decide("keep");
    } else if (event.key === "x" || event.key === "Delete") {
      decide("remove");
    } else if (event.key === "s" || event.key === "ArrowRight") {
      skip();
    } else if (event.key === "z" || event.key === "Backspace") {
      undo();
    } else {
      handled = false;
    }
    if (handled) event.preventDefault();
  });

  $("relabel-suggested").addEventListener("click", () => {
    const item = current();
    if (item && item.suggested) decide("relabel", item.suggested);
  });
  $("keep").addEventListener("click", () => decide("keep"));
  $("remove").addEventListener("click", () => decide("remove"));
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("show-keys").addEventListener("click", () => toggleKeys(true));
  $("keys-help").addEventListener("click", () => toggleKeys(false));
  $("classes").addEventListener("click", (event) => {
    const li = event.target.closest("li[data-label]");
    if (li) decide("relabel", li.dataset.label);
  });

  fetchMore().then(render);
})();
