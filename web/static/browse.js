// Browse's bulk actions work as a plain form; this adds "tick all" and a count of the ticked.
"use strict";
(() => {
  const form = document.getElementById("bulk");
  if (!form) return;
  const boxes = () => [...document.querySelectorAll('input[name="sha256"][form="bulk"]')];
  const all = document.getElementById("tick-all");
  const count = document.getElementById("ticked");
  const update = () => {
    const n = boxes().filter((b) => b.checked).length;
    count.textContent = n ? `${n} ticked` : "Tick";
    all.textContent = n === boxes().length ? "Untick all" : "Tick all on this page";
  };
  all.hidden = false;
  all.addEventListener("click", () => {
    const on = !boxes().every((b) => b.checked);
    for (const b of boxes()) b.checked = on;
    update();
  });
  document.addEventListener("change", (event) => {
    if (event.target.matches('input[name="sha256"]')) update();
  });
  update();
})();
