// Skip and undo for the pages driven from the keyboard (Review, Suspects): each keeps a history
// of what was decided or skipped; z takes back the last one, waiting for its request and then
// sending the undo (DELETE). The page says where the undo goes and how its counters move back.
"use strict";
window.keyboardDecisions = ({ state, current, render, send, showError, undoUrl, onUndone }) => {
  function skip() {
    const item = current();
    if (!item) return;
    state.history.push({ kind: "skip", item });
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
      if (last.sent) await send("DELETE", undoUrl(last.item));
    } catch (error) {
      showError(`could not undo: ${error.message}`);
      state.history.push(last);
      return;
    }
    onUndone(last.item);
    state.queue.splice(state.at, 0, last.item);
    render();
  }

  return { skip, undo };
};
