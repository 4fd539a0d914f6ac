// Polls /dashboard/state every second and /dashboard/spans every two, and redraws.
"use strict";

const STATE_EVERY_MS = 1000;
const SPANS_EVERY_MS = 2000;
let model = "";

function fmt(value, digits, unit) {
  return value === null || value === undefined ? "–" : `${value.toFixed(digits)}${unit || ""}`;
}

async function getJson(path) {
  const response = await fetch(path, {credentials: "same-origin", cache: "no-store"});
  if (response.status === 401) {
    window.location.assign("/");  // the key cookie is gone or wrong: back to the key form
    throw new Error("the API key is needed");
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

async function refreshState() {
  const pill = document.getElementById("cluster");
  try {
    const state = await getJson("/dashboard/state");
    model = state.model;
    document.getElementById("model").textContent = state.model;
    pill.textContent = !state.reachable ? "unreachable" : state.ready ? "ready" : "not ready";
    pill.className = `pill ${state.reachable && state.ready ? "ready" : "down"}${state.busy ? " busy" : ""}`;
    const error = document.getElementById("ring-error");
    error.hidden = state.reachable;
    error.textContent = state.error;
    document.getElementById("tokens-per-s").textContent = fmt(state.api.tokens_per_s, 1);
    const sched = state.scheduler || {};
    document.getElementById("acceptance").textContent = sched.acceptance != null ? fmt(sched.acceptance, 2)
      : sched.acceptance_total != null ? `${fmt(sched.acceptance_total, 2)} (all)` : "–";
    document.getElementById("ttft").textContent = sched.ttft_ms != null ? fmt(sched.ttft_ms, 0, " ms")
      : sched.ttft_total_ms != null ? `${fmt(sched.ttft_total_ms, 0, " ms")} (all)` : "–";
    if (state.reachable) {
      window.flowringRing.drawRing(document.getElementById("ring"), state.services);
      window.flowringRing.drawBoards(document.getElementById("boards"), state.services);
    }
    document.body.dataset.updated = String(state.now);
  } catch (err) {
    pill.textContent = "API not answering";
    pill.className = "pill down";
  }
}

async function refreshSpans() {
  const windowS = Number(document.getElementById("window").value) || 15;
  try {
    const data = await getJson(`/dashboard/spans?window=${windowS}`);
    window.flowringTimeline.drawTimeline(document.getElementById("timeline"), document.getElementById("legend"),
                                         data, windowS);
  } catch (err) {
    // the state poll reports an API that does not answer
  }
}

function loop(work, everyMs) {
  const tick = async () => {
    await work();
    setTimeout(tick, everyMs);
  };
  tick();
}

window.flowringChat.setUpChat(() => model);
loop(refreshState, STATE_EVERY_MS);
loop(refreshSpans, SPANS_EVERY_MS);
