// The last seconds of spans, one lane per service, drawn as `flowring bench --trace` draws them: a bar per span
// coloured by kind, white where the service waited. Spans reach the API with a traced request's reply.
"use strict";

function laneRank(name) {
  if (name === "drafter") return [0, 0];
  if (name.startsWith("stage-")) return [1, Number(name.slice(6)) || 0];
  return name === "verifier" ? [2, 0] : name === "scheduler" ? [3, 0] : [4, 0];
}

function drawTimeline(canvas, legend, data, windowS) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 640;
  const height = canvas.clientHeight || 220;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const endUs = data.now * 1e6;
  const startUs = endUs - windowS * 1e6;
  const lanes = new Map();
  let spans = 0;
  for (const request of data.requests) {
    for (const [service, flat] of Object.entries(request.spans)) {
      if (!lanes.has(service)) lanes.set(service, []);
      for (let i = 0; i + 2 < flat.length; i += 3) {
        const [code, ts, dur] = [flat[i], flat[i + 1], flat[i + 2]];
        if (code >= data.span_kinds.length || ts + dur < startUs || ts > endUs) continue;  // a counter, or outside
        lanes.get(service).push([data.span_kinds[code], ts, dur]);
        spans += 1;
      }
    }
  }
  const names = [...lanes.keys()].sort((a, b) => {
    const [x, y] = [laneRank(a), laneRank(b)];
    return x[0] - y[0] || x[1] - y[1] || a.localeCompare(b);
  });
  const [left, top, bottom] = [70, 6, 20];
  const laneH = names.length ? Math.min(28, (height - top - bottom) / names.length) : 0;
  const x = (us) => left + ((us - startUs) / (endUs - startUs)) * (width - left - 8);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7280";
  ctx.strokeStyle = "#e3e6ec";
  for (let s = 0; s <= windowS; s += Math.max(1, Math.round(windowS / 6))) {  // seconds ago, on the axis
    const px = x(endUs - s * 1e6);
    ctx.beginPath();
    ctx.moveTo(px, top);
    ctx.lineTo(px, height - bottom);
    ctx.stroke();
    ctx.fillText(s === 0 ? "now" : `-${s} s`, px - 12, height - 6);
  }
  names.forEach((name, lane) => {
    const y = top + lane * laneH;
    ctx.fillStyle = "#1f2430";
    ctx.fillText(name, 4, y + laneH / 2 + 4);
    for (const [kind, ts, dur] of lanes.get(name)) {
      ctx.fillStyle = data.colours[kind] || "#999";
      const x0 = Math.max(left, x(ts));
      ctx.fillRect(x0, y + 3, Math.max(1, x(ts + dur) - x0), laneH - 6);
    }
  });
  if (!spans) {
    ctx.fillStyle = "#6b7280";
    ctx.fillText(`no traced request in the last ${windowS} s: send a chat message`, left + 10, height / 2);
  }
  canvas.dataset.spans = String(spans);
  legend.replaceChildren();
  for (const kind of data.span_kinds) {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = data.colours[kind] || "#999";
    item.append(swatch, kind);
    legend.appendChild(item);
  }
}

window.flowringTimeline = {drawTimeline};
