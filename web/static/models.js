// The retrain button without a page reload, and the run's progress live: the run row's
// progress (phase, epoch) is polled once a second until the run ends, then the page reloads
// to show the new version.
"use strict";
(() => {
  const panel = document.getElementById("training");
  if (!panel) return;
  const $ = (id) => document.getElementById(id);

  function show(run) {
    $("run-progress").hidden = false;
    $("run-id").textContent = run.id;
    $("cancel-form").action = `/runs/${run.id}/cancel?next=/models`;
    $("cancel-run").disabled = run.status !== "running" || run.cancel_requested;
    const p = run.progress || {};
    $("run-phase").textContent = run.status === "running" ? (p.phase || "waiting for a training worker") : run.status;
    const bar = $("run-bar");
    if (p.epochs) { bar.max = p.epochs; bar.value = p.epoch || 0; } else { bar.removeAttribute("value"); }
    $("run-detail").textContent = p.epoch
      ? `epoch ${p.epoch}/${p.epochs} · val accuracy ${(p.val_acc ?? 0).toFixed(3)}`
      : (run.status === "running" ? "" : run.message || "");
  }

  async function follow(runId) {
    for (;;) {
      const response = await fetch(`/api/runs/${runId}`, { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const run = await response.json();
      show(run);
      // Any status but running is an end (promoted, rejected, skipped, failed, cancelled).
      if (run.status !== "running") { setTimeout(() => location.reload(), 800); return; }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  $("retrain-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("retrain").disabled = true;
    try {
      const response = await fetch("/api/retrain", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: "{}",
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
      show(body);
      follow(body.id);
    } catch (error) {
      $("run-progress").hidden = false;
      $("run-phase").textContent = `could not start: ${error.message}`;
    } finally {
      $("retrain").disabled = false;
    }
  });

  if (panel.dataset.run) follow(panel.dataset.run);
})();
