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
    // Every known class, in the server's stable order: [{name, labeled_images, in_model, key}].
    classes: JSON.parse(root.dataset.classes || "[]").map((c) => c.name),
  };
  state.known = new Set(state.classes);
  // The keys stay where they were when the page loaded (fingers learn them); a class that gets
  // its first label here joins the labeled ones, after them, so a new class gets a key too.
  const counts = new Map(JSON.parse(root.dataset.classes || "[]").map((c) => [c.name, c.labeled_images]));
  function used(name) {
    if ((counts.get(name) || 0) > 0) return;
    const at = state.classes.filter((c) => (counts.get(c) || 0) > 0).length;
    const index = state.classes.indexOf(name);
    if (index >= 0) state.classes.splice(index, 1);
    state.classes.splice(at, 0, name);
    counts.set(name, 1);
  }
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
    $("classes").replaceChildren(...state.classes.slice(0, 10).map((c, i) => {
      const li = row(`⇧${(i + 1) % 10}`, c); li.dataset.label = c; return li;
    }));
    const rest = Math.max(0, state.classes.length - 10);
    $("class-count").textContent =
      `${state.classes.length} known` + (rest ? `: ${rest} more by typing ( / )` : "");
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

  // The label that completed RETRAIN_AFTER_LABELS started a training run: say so, with its page.
  function showRun(runId) {
    const box = $("review-run");
    const link = document.createElement("a");
    link.href = `/runs/${runId}`; link.textContent = "follow it";
    box.replaceChildren(`Enough new labels: training run ${runId} started · `, link);
    box.hidden = false;
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

  // Known classes a typed name may be a slip for: the same but for case, a prefix, or one or
  // two letters off.
  function closeMatches(name) {
    const folded = name.toLowerCase();
    const distance = (a, b) => {
      if (Math.abs(a.length - b.length) > 2) return 3;
      let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
      for (let i = 1; i <= a.length; i++) {
        const row = [i];
        for (let j = 1; j <= b.length; j++) {
          row[j] = Math.min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
        }
        previous = row;
      }
      return previous[b.length];
    };
    return state.classes.filter((c) => {
      const other = c.toLowerCase();
      return other === folded || (folded.length >= 3 && other.startsWith(folded)) || distance(folded, other) <= 2;
    }).slice(0, 3);
  }

  // A name that is no known class starts a new one only once the person says so.
  function askNewClass(name) {
    const box = $("confirm-new");
    const matches = closeMatches(name);
    $("confirm-text").textContent = `“${name}” is not one of the ${state.classes.length} known classes.` +
      (matches.length ? " Did you mean:" : "");
    $("confirm-matches").replaceChildren(...matches.map((m) => {
      const button = document.createElement("button");
      button.type = "button"; button.textContent = m;
      button.addEventListener("click", () => { box.hidden = true; label(m); });
      return button;
    }));
    $("confirm-create").textContent = `Start the new class “${name}”`;
    $("confirm-create").onclick = () => { box.hidden = true; label(name, true); };
    box.hidden = false;
    (matches.length ? $("confirm-matches").firstChild : $("confirm-create")).focus();
  }

  function label(name, newClass = false) {
    const item = current();
    name = (name || "").trim().normalize("NFC");
    if (!item || !name) return;
    if (!newClass && state.known.size && !state.known.has(name)) { askNewClass(name); return; }
    $("confirm-new").hidden = true;
    const entry = { kind: "label", item, at: state.at, label: name, sent: false };
    state.history.push(entry);
    state.reviewed += 1; state.remaining -= 1;
    if (!state.known.has(name)) {
      state.known.add(name);
      const option = document.createElement("option"); option.value = name;
      $("all-classes").append(option);
    }
    used(name);
    const body = { sha256: item.sha256, label: name };
    if (newClass) body.new_class = true;
    entry.request = send("POST", "/api/labels", body)
      .then((result) => {
        entry.sent = true;
        if (result && result.retrain_run) showRun(result.retrain_run);
      })
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

  const { skip, undo } = window.keyboardDecisions({
    state, current, render, send, showError,
    undoUrl: (item) => `/api/labels/${item.sha256}`,
    onUndone: () => { state.reviewed -= 1; state.remaining += 1; },
  });

  function toggleKeys(show) {
    $("keys-help").hidden = !(show ?? $("keys-help").hidden);
  }

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      $("keys-help").hidden = true;
      $("confirm-new").hidden = true;
    }
    const typing = event.target instanceof HTMLInputElement;
    if (typing) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    if (!$("confirm-new").hidden) return; // the confirm's own buttons take the keys
    if (event.key === "?") { toggleKeys(); event.preventDefault(); return; }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const digit = /^Digit([0-9])$/.exec(event.code);
    let handled = true;
    if (digit && event.shiftKey) {
      const name = state.classes[(Number(digit[1]) + 9) % 10]; // 1-9, then 0 for the tenth
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
  $("confirm-cancel").addEventListener("click", () => { $("confirm-new").hidden = true; });
  $("show-keys").addEventListener("click", () => toggleKeys(true));
  $("keys-help").addEventListener("click", () => toggleKeys(false));
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
