// The ring as an SVG (drafter -> stages -> verifier -> drafter, the scheduler in the middle) and one card per
// board listing its services. Everything is built with DOM calls and textContent: nothing from the cluster is
// parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function ringOrder(a, b) {
  const rank = (s) => s.role === "drafter" ? [0, 0] : s.role === "stage" ? [1, Number(s.name.split("-")[1]) || 0]
    : s.role === "verifier" ? [2, 0] : [3, 0];
  const [x, y] = [rank(a), rank(b)];
  return x[0] - y[0] || x[1] - y[1] || a.name.localeCompare(b.name);
}

function el(tag, attrs, parent, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function layersText(s) {
  return s.layers && s.layers.length === 2 ? `layers ${s.layers[0]}–${s.layers[1]}` : s.role;
}

function pct(ratio) {
  return ratio === null || ratio === undefined ? "–" : `${Math.round(ratio * 100)}%`;
}

function drawRing(svg, services) {
  svg.replaceChildren();
  const defs = el("defs", {}, svg);
  const marker = el("marker", {id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7",
                               markerHeight: "7", orient: "auto-start-reverse"}, defs);
  el("path", {d: "M 0 0 L 10 5 L 0 10 z", fill: "#9aa3b2"}, marker);
  const ring = services.filter((s) => s.role !== "scheduler").sort(ringOrder);
  const scheduler = services.find((s) => s.role === "scheduler");
  const [cx, cy, rx, ry, w, h] = [220, 165, 160, 115, 112, 58];
  const at = ring.map((_, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(ring.length, 1);
    return [cx + rx * Math.cos(angle), cy + ry * Math.sin(angle)];
  });
  ring.forEach((_, i) => {  // hops first, under the nodes
    const [x1, y1] = at[i];
    const [x2, y2] = at[(i + 1) % ring.length];
    const [dx, dy] = [x2 - x1, y2 - y1];
    const len = Math.hypot(dx, dy) || 1;
    const cut = (t) => Math.min(Math.abs((w / 2) / (dx / len || 1e-9)), Math.abs((h / 2) / (dy / len || 1e-9))) + t;
    const [a, b] = [cut(2), cut(6)];
    el("line", {class: "hop", x1: x1 + dx / len * a, y1: y1 + dy / len * a, x2: x2 - dx / len * b,
                y2: y2 - dy / len * b}, svg);
  });
  ring.forEach((s, i) => node(svg, s, at[i][0], at[i][1], w, h));
  if (scheduler) node(svg, scheduler, cx, cy, w, h);
}

function node(svg, s, x, y, w, h) {
  const g = el("g", {class: `node ${s.healthy ? "healthy" : "unhealthy"}`, "data-service": s.name}, svg);
  el("rect", {class: "frame", x: x - w / 2, y: y - h / 2, width: w, height: h}, g);
  el("text", {class: "name", x, y: y - h / 2 + 15}, g, s.name);
  el("text", {x, y: y - h / 2 + 29}, g, s.role === "scheduler" ? "scheduler" : layersText(s));
  el("text", {x, y: y - h / 2 + 43}, g, s.healthy ? `busy ${pct(s.busy_ratio)}` : "UNHEALTHY");
  el("rect", {class: "busybg", x: x - w / 2 + 8, y: y + h / 2 - 9, width: w - 16, height: 4}, g);
  el("rect", {class: "busybar", x: x - w / 2 + 8, y: y + h / 2 - 9, height: 4,
              width: (w - 16) * Math.max(0, Math.min(1, s.busy_ratio || 0))}, g);
  el("text", {class: "board-label", x, y: y + h / 2 + 12}, g, s.host);
}

function div(cls, parent, text) {
  const node = document.createElement("div");
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function row(parent, left, right, cls) {
  const r = div("row", parent);
  div(cls || "", r, left);
  div("", r, right);
  return r;
}

function drawBoards(container, services) {
  const hosts = new Map();
  for (const s of [...services].sort(ringOrder)) {
    if (!hosts.has(s.host)) hosts.set(s.host, []);
    hosts.get(s.host).push(s);
  }
  container.replaceChildren();
  for (const [host, list] of hosts) {
    const card = div("board", container);
    card.dataset.board = host;
    const title = document.createElement("h3");
    title.textContent = `board ${host}`;
    card.appendChild(title);
    for (const s of list) {
      const box = div(`service ${s.healthy ? "healthy" : "unhealthy"}`, card);
      Object.assign(box.dataset, {service: s.name, pid: String(s.pid), healthy: String(s.healthy),
                                  restarts: String(s.restarts)});
      row(box, s.name, s.healthy ? "healthy" : "UNHEALTHY", "health");
      row(box, layersText(s), `pid ${s.pid || "–"}`);
      const seen = s.last_seen_s < 0 ? "never heard" : `heard ${s.last_seen_s.toFixed(1)} s ago`;
      row(box, `up ${Math.round(s.uptime_s)} s`, seen);
      row(box, `busy ${pct(s.busy_ratio)}`, `in flight ${s.in_flight} · step ${s.last_step_ms.toFixed(1)} ms`);
      const meter = div("meter", box);
      div("", meter).style.width = `${Math.round(Math.max(0, Math.min(1, s.busy_ratio || 0)) * 100)}%`;
      if (s.restarts) row(box, `restarted ${s.restarts}×`, "", "restarted");
    }
  }
}

window.flowringRing = {drawRing, drawBoards};
