// The review queue, driven from the keyboard. The next images are fetched and their pictures
// loaded ahead of time, and a label is sent in the background, so a person never waits on
// the network between two decisions. Undo takes back the last decision (skip or label).
"use strict";
(() => {
  const root = document.getElementById("review");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const AHEAD = 6; // pictures loaded ahead
  const state = {
    queue: [], at: 0, cursor: null, exhausted: false, fetching: null,
    history: [], reviewed: 0, remaining: Number($("remaining").textContent.replace(/[,+]/g, "")),
    lowerBound: $("remaining").textContent.endsWith("+"),
    classes: JSON.parse(root.dataset.classes || "[]"),
  };
  const preview = (item) => `/api/images/${item.sha256}/thumbnail?size=large`;

  async function fetchMore() {
    if (state.exhausted) return;
    if (state.fetching) return state.fetching;
    const params = new URLSearchParams({ limit: "20" });
    if (state.cursor) params.set("cursor", state.cursor);
    state.fetching = fetch(`/api/review?${params}`, { headers: { Accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`review: HTTP ${r.status}`))))
      .then((page) => {
        const known = new Set(state.queue.map((i) => i.sha256));
        for (const item of page.items) if (!known.has(item.sha256)) state.queue.push(item);
        state.cursor = page.next_cursor;
        state.exhausted = !page.next_cursor;
        state.remaining = page.remaining - state.pendingLabels();
        state.lowerBound = page.remaining_is_lower_bound;
      })
      .catch(showError)
      .finally(() => { state.fetching = null; });
    return state.fetching;
  }
  state.pendingLabels = () => state.history.filter((h) => h.kind === "label" && h.sent === false).length;

  function prefetch() {
    for (const item of state.queue.slice(state.at + 1, state.at + 1 + AHEAD)) {
      if (!item.picture) { item.picture = new Image(); item.picture.src = preview(item); }
    }
    if (state.queue.length - state.at < AHEAD * 2) fetchMore();
  }

  function current() { return state.queue[state.at]; }

  function row(key, label, confidence) {
    const li = document.createElement("li");
    const kbd = document.createElement("kbd"); kbd.textContent = key;
    const name = document.createElement("span"); name.className = "name"; name.textContent = label;
    li.append(kbd, " ", name);
    if (confidence !== undefined) {
      const bar = document.createElement("span"); bar.className = "bar";
      const fill = document.createElement("span"); fill.style.width = `${(confidence * 100).toFixed(1)}%`;
      bar.append(fill);
      const value = document.createElement("span"); value.className = "value"; value.textContent = confidence.toFixed(3);
      li.append(" ", bar, " ", value);
    }
    return li;
  }

  function render() {
    const item = current();
    $("reviewed").textContent = state.reviewed.toLocaleString();
    $("remaining").textContent =
      Math.max(0, state.remaining).toLocaleString() + (state.lowerBound ? "+" : "");
    $("classes").replaceChildren(...state.classes.slice(0, 9).map((c, i) => {
      const li = row(`⇧${i + 1}`, c); li.dataset.label = c; return li;
    }));
    if (!item) {
      $("review-image").hidden = true; $("review-empty").hidden = false;
      $("topk").replaceChildren(); $("review-meta").textContent = "";
      if (!state.exhausted) fetchMore().then(() => { if (current()) render(); });
      return;
    }
    $("review-image").hidden = false; $("review-empty").hidden = true;
    $("review-image").src = preview(item);
    $("review-image").alt = `the image to review (the model says ${item.model_label})`;
    $("review-meta").textContent = `${item.model_version || ""}`;
    $("topk").replaceChildren(...item.topk.slice(0, 9).map((t, i) => {
      const li = row(String(i + 1), t.label, t.confidence); li.dataset.label = t.label; return li;
    }));
    $("details").href = `/images/${item.sha256}`;
    prefetch();
  }

  function showError(error) {
    const box = $("review-error");
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

  function label(name) {
    const item = current();
    name = (name || "").trim();
    if (!item || !name) return;
    const entry = { kind: "label", item, at: state.at, label: name, sent: false };
    state.history.push(entry);
    state.reviewed += 1; state.remaining -= 1;
    if (!state.classes.includes(name)) state.classes.push(name);
    entry.request = send("POST", "/api/labels", { sha256: item.sha256, label: name })
      .then(() => { entry.sent = true; })
      .catch((error) => {
        // Put it back where it was: nothing is lost, the person sees why.
        state.history.splice(state.history.indexOf(entry), 1);
        state.reviewed -= 1; state.remaining += 1;
        state.queue.splice(state.at, 0, item);
        showError(`could not label ${item.sha256.slice(0, 12)}: ${error.message}`);
        render();
      });
    state.queue.splice(state.at, 1);
    render();
  }

  function skip() {
    const item = current();
    if (!item) return;
    state.history.push({ kind: "skip", item, at: state.at });
    state.at += 1;
    render();
  }

  async function undo() {
    const last = state.history.pop();
    if (!last) return;
    if (last.kind === "skip") {
      state.at = Math.max(0, state.at - 1);
      render();
      return;
    }
    try {
      await last.request;
      if (last.sent) await send("DELETE", `/api/labels/${last.item.sha256}`);
    } catch (error) {
      showError(`could not undo: ${error.message}`);
      state.history.push(last);
      return;
    }
    state.reviewed -= 1; state.remaining += 1;
    state.queue.splice(state.at, 0, last.item);
    render();
  }

  document.addEventListener("keydown", (event) => {
    const typing = event.target instanceof HTMLInputElement;
    if (typing) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const digit = /^Digit([1-9])$/.exec(event.code);
    let handled = true;
    if (digit && event.shiftKey) {
      const name = state.classes[Number(digit[1]) - 1];
      if (name) label(name);
    } else if (digit) {
      const item = current();
      const choice = item && item.topk[Number(digit[1]) - 1];
      if (choice) label(choice.label);
    } else if (event.key === "Enter") {
      const item = current();
      if (item && item.topk.length) label(item.topk[0].label);
    } else if (event.key === "s" || event.key === "ArrowRight") {
      skip();
    } else if (event.key === "z" || event.key === "Backspace") {
      undo();
    } else if (event.key === "/" || event.key === "n") {
      $("new-class-name").focus();
    } else {
      handled = false;
    }
    if (handled) event.preventDefault();
  });

  $("new-class").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("new-class-name");
    label(input.value);
    input.value = "";
    input.blur();
  });
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  for (const list of [$("topk"), $("classes")]) {
    list.addEventListener("click", (event) => {
      const li = event.target.closest("li[data-label]");
      if (li) label(li.dataset.label);
    });
  }

  fetchMore().then(render);
})();
