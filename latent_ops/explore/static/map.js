// The latent map: points on a canvas with pan (drag) and zoom (wheel), the hovered point's decoded picture at 4x
// from a sprite sheet (no request to a server), a click to select, and markers for edited codes.
// Used by the explorer page and by the self-contained export (latent_ops/explore/export.py).
"use strict";

const CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];

function clusterColour(name, index) {
  // a cluster takes its class's hue, lighter or darker by its number within the class
  const [cls, part] = name.split(":");
  const base = CLASS_COLOURS[Math.max(0, LatentMap.classes.indexOf(cls))];
  const shade = [0, 0.35, -0.3, 0.55, -0.5, 0.2][Number(part) % 6] || 0;
  const rgb = [1, 3, 5].map((i) => parseInt(base.slice(i, i + 2), 16));
  const mixed = rgb.map((c) => Math.round(shade >= 0 ? c + (255 - c) * shade : c * (1 + shade)));
  return `rgb(${mixed.join(",")})`;
}

class LatentMap {
  // points: {x, y (in [0, 1]), label, cluster, row, classes, cluster_names, tiles, side, sheets}
  // sheets: an array of Image (or null while loading), one per sprite sheet
  constructor(canvas, tooltip, points, sheets, options = {}) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.points = points;
    this.sheets = sheets;
    this.count = points.x.length;
    this.colourBy = "class";
    this.onSelect = options.onSelect || (() => {});
    this.markers = []; // {x, y, colour, label}
    this.selected = -1;
    this.hovered = -1;
    this.view = { scale: 1, dx: 0, dy: 0 };
    this.timings = { hover: [], hoverPainted: [], draw: [] }; // ms from the mouse event to shown, and to painted
    LatentMap.classes = points.classes;
    this.thumb = tooltip.querySelector("canvas");
    this.caption = tooltip.querySelector(".caption");
    this.resize();
    this.bind();
    this.draw();
  }

  resize() {
    const ratio = window.devicePixelRatio || 1;
    const box = this.canvas.getBoundingClientRect();
    this.width = box.width;
    this.height = box.height;
    this.canvas.width = Math.round(box.width * ratio);
    this.canvas.height = Math.round(box.height * ratio);
    this.ctx = this.canvas.getContext("2d");
    this.ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  }

  // map units ([0, 1], y up) <-> canvas pixels
  toScreen(x, y) {
    const pad = 12, side = Math.min(this.width, this.height) - 2 * pad;
    const left = (this.width - side) / 2, top = (this.height - side) / 2;
    return [left + (x * side) * this.view.scale + this.view.dx, top + ((1 - y) * side) * this.view.scale + this.view.dy];
  }

  colour(i) {
    if (this.colourBy === "cluster" && this.points.cluster[i] >= 0) {
      const k = this.points.cluster[i];
      return clusterColour(this.points.cluster_names[k], k);
    }
    return CLASS_COLOURS[this.points.label[i] % 10];
  }

  draw() {
    const began = performance.now();
    const ctx = this.ctx, p = this.points;
    ctx.fillStyle = "#fbfbf8";
    ctx.fillRect(0, 0, this.width, this.height);
    const size = Math.max(2, Math.min(6, 2.2 * Math.sqrt(this.view.scale)));
    const colours = new Array(this.count);
    for (let i = 0; i < this.count; i++) colours[i] = this.colour(i);
    for (let i = 0; i < this.count; i++) {
      const [sx, sy] = this.toScreen(p.x[i], p.y[i]);
      if (sx < -5 || sy < -5 || sx > this.width + 5 || sy > this.height + 5) continue;
      ctx.fillStyle = colours[i];
      ctx.fillRect(sx - size / 2, sy - size / 2, size, size);
    }
    if (this.selected >= 0) this.ring(p.x[this.selected], p.y[this.selected], "#000", 7);
    for (const m of this.markers) this.star(m.x, m.y, m.colour || "#e0115f", m.label || "");
    this.timings.draw.push(performance.now() - began);
  }

  ring(x, y, colour, radius) {
    const [sx, sy] = this.toScreen(x, y), ctx = this.ctx;
    ctx.lineWidth = 2.5;
    ctx.strokeStyle = "#fff";
    ctx.beginPath(); ctx.arc(sx, sy, radius, 0, 2 * Math.PI); ctx.stroke();
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = colour;
    ctx.beginPath(); ctx.arc(sx, sy, radius, 0, 2 * Math.PI); ctx.stroke();
  }

  star(x, y, colour, label) {
    const [sx, sy] = this.toScreen(x, y), ctx = this.ctx;
    ctx.beginPath();
    for (let k = 0; k < 10; k++) {
      const r = k % 2 ? 4.5 : 11, a = Math.PI / 2 + (k * Math.PI) / 5;
      ctx.lineTo(sx + r * Math.cos(a), sy - r * Math.sin(a));
    }
    ctx.closePath();
    ctx.fillStyle = colour; ctx.fill();
    ctx.lineWidth = 1.5; ctx.strokeStyle = "#fff"; ctx.stroke();
    if (label) {
      ctx.font = "bold 12px sans-serif";
      ctx.lineWidth = 3; ctx.strokeStyle = "#fff"; ctx.strokeText(label, sx + 12, sy - 8);
      ctx.fillStyle = "#222"; ctx.fillText(label, sx + 12, sy - 8);
    }
  }

  setMarker(name, x, y, colour, label) {
    this.markers = this.markers.filter((m) => m.name !== name);
    if (x !== null) this.markers.push({ name, x, y, colour, label });
    this.draw();
  }

  nearest(mx, my, within = 8) {
    let best = -1, bestD = within * within;
    const p = this.points;
    for (let i = 0; i < this.count; i++) {
      const [sx, sy] = this.toScreen(p.x[i], p.y[i]);
      const d = (sx - mx) ** 2 + (sy - my) ** 2;
      if (d < bestD) { bestD = d; best = i; }
    }
    return best;
  }

  showThumb(i, mx, my, eventTime) {
    const began = eventTime === undefined ? performance.now() : eventTime;
    const p = this.points, per = p.tiles * p.tiles, sheet = this.sheets[Math.floor(i / per)];
    const ctx = this.thumb.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    const k = i % per, sx = (k % p.tiles) * p.side, sy = Math.floor(k / p.tiles) * p.side;
    if (sheet && sheet.complete && sheet.naturalWidth) {
      ctx.drawImage(sheet, sx, sy, p.side, p.side, 0, 0, this.thumb.width, this.thumb.height);
    } else {
      ctx.fillStyle = "#ddd"; ctx.fillRect(0, 0, this.thumb.width, this.thumb.height);
    }
    const cluster = p.cluster[i] >= 0 ? ` (${p.cluster_names[p.cluster[i]]})` : "";
    this.caption.textContent = `${p.classes[p.label[i]]}${cluster}, ${p.split}:${p.row[i]}`;
    const box = this.canvas.getBoundingClientRect();
    const left = Math.min(mx + 16, box.width - 150), top = Math.max(my - 150, 0);
    this.tooltip.style.left = `${left}px`;
    this.tooltip.style.top = `${top}px`;
    this.tooltip.hidden = false;
    this.tooltip.dataset.row = String(p.row[i]);
    this.timings.hover.push(performance.now() - began);
    requestAnimationFrame(() => this.timings.hoverPainted.push(performance.now() - began));
  }

  bind() {
    let drag = null;
    const where = (e) => { const b = this.canvas.getBoundingClientRect(); return [e.clientX - b.left, e.clientY - b.top]; };
    this.canvas.addEventListener("mousedown", (e) => { const [x, y] = where(e); drag = { x, y, dx: this.view.dx, dy: this.view.dy, moved: false }; });
    window.addEventListener("mouseup", (e) => {
      if (drag && !drag.moved) {
        const [x, y] = where(e), i = this.nearest(x, y);
        if (i >= 0 && e.target === this.canvas) { this.selected = i; this.draw(); this.onSelect(i); }
      }
      drag = null;
    });
    this.canvas.addEventListener("mousemove", (e) => {
      const [x, y] = where(e);
      if (drag && (Math.abs(x - drag.x) + Math.abs(y - drag.y) > 3 || drag.moved)) {
        drag.moved = true;
        this.view.dx = drag.dx + x - drag.x; this.view.dy = drag.dy + y - drag.y;
        this.tooltip.hidden = true;
        this.draw();
        return;
      }
      const i = this.nearest(x, y);
      this.hovered = i;
      if (i >= 0) this.showThumb(i, x, y, e.timeStamp); else this.tooltip.hidden = true;
    });
    this.canvas.addEventListener("mouseleave", () => { this.tooltip.hidden = true; });
    this.canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [x, y] = where(e), factor = Math.exp(-e.deltaY * 0.0015);
      const scale = Math.min(60, Math.max(0.5, this.view.scale * factor)), f = scale / this.view.scale;
      // keep the point under the cursor in place
      const pad = 12, side = Math.min(this.width, this.height) - 2 * pad;
      const left = (this.width - side) / 2, top = (this.height - side) / 2;
      this.view.dx = (x - left) - f * (x - left - this.view.dx);
      this.view.dy = (y - top) - f * (y - top - this.view.dy);
      this.view.scale = scale;
      this.draw();
    }, { passive: false });
    window.addEventListener("resize", () => { this.resize(); this.draw(); });
  }

  resetView() { this.view = { scale: 1, dx: 0, dy: 0 }; this.draw(); }
}

function loadSheets(urls) {
  // every sheet starts loading at once; the map draws without waiting for them
  return urls.map((url) => { const img = new Image(); img.decoding = "async"; img.src = url; return img; });
}

function drawLegend(element, points, colourBy) {
  element.textContent = "";
  const entries = colourBy === "cluster"
    ? points.cluster_names.map((n, k) => [n, clusterColour(n, k)])
    : points.classes.map((n, k) => [n, CLASS_COLOURS[k]]);
  const present = new Set(colourBy === "cluster" ? points.cluster : points.label);
  entries.forEach(([name, colour], k) => {
    if (!present.has(k)) return;
    const item = document.createElement("span");
    item.className = "legend-item";
    const dot = document.createElement("i");
    dot.style.background = colour;
    item.append(dot, document.createTextNode(name));
    element.append(item);
  });
}
