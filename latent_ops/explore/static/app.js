// The explorer page: the map, the editor of the selected code (sliders and painted cells), uploads, composes, saves.
// Every edit asks the server for one decoded picture (/api/render); the map and its sprites are loaded once.
"use strict";

const $ = (id) => document.getElementById(id);
const E = (window.explorer = {
  state: null, points: null, map: null, start: null, moves: {}, cells: {}, paintFor: null,
  // ms: from a change to its image shown, from a compose click to its grid shown
  timings: { render: [], compose: [], ready: null }, inflight: false, pending: null, job: null,
});

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = {};
  try { body = await response.json(); } catch (e) { body = { error: `the server answered ${response.status}` }; }
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

const post = (path, value) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(value) });

// --- cells: a direction's painted cells, as the hex text latent_ops.editing reads ------------------------------------

function cellsToHex(cells) {
  let hex = "";
  for (let i = 0; i < cells.length; i += 4) {
    let digit = 0;
    for (let b = 0; b < 4; b++) digit = digit * 2 + (cells[i + b] ? 1 : 0);
    hex += digit.toString(16);
  }
  return hex;
}

function drawCells() {
  const canvas = $("cells"), ctx = canvas.getContext("2d"), grid = E.state.grid;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!grid || !E.paintFor) return;
  const [rows, cols] = grid, h = canvas.height / rows, w = canvas.width / cols;
  const cells = E.cells[E.paintFor];
  ctx.strokeStyle = "rgba(255,255,255,0.35)";
  ctx.lineWidth = 1;
  for (let r = 0; r <= rows; r++) { ctx.beginPath(); ctx.moveTo(0, r * h); ctx.lineTo(canvas.width, r * h); ctx.stroke(); }
  for (let c = 0; c <= cols; c++) { ctx.beginPath(); ctx.moveTo(c * w, 0); ctx.lineTo(c * w, canvas.height); ctx.stroke(); }
  if (!cells) return; // no cells painted: the direction moves the whole code
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
    if (cells[r * cols + c]) {
      ctx.strokeStyle = "#e0115f"; ctx.lineWidth = 2; ctx.strokeRect(c * w + 1, r * h + 1, w - 2, h - 2);
    } else {
      ctx.fillStyle = "rgba(0,0,0,0.35)"; ctx.fillRect(c * w, r * h, w, h);
    }
  }
}

function bindPainting() {
  const canvas = $("cells");
  let value = null;
  const cellAt = (e) => {
    const b = canvas.getBoundingClientRect(), [rows, cols] = E.state.grid;
    const r = Math.floor(((e.clientY - b.top) / b.height) * rows), c = Math.floor(((e.clientX - b.left) / b.width) * cols);
    return r >= 0 && r < rows && c >= 0 && c < cols ? r * cols + c : -1;
  };
  const paint = (e) => {
    const i = cellAt(e);
    if (i < 0 || !E.paintFor) return;
    const [rows, cols] = E.state.grid;
    if (!E.cells[E.paintFor]) E.cells[E.paintFor] = new Array(rows * cols).fill(false);
    const cells = E.cells[E.paintFor];
    if (value === null) value = !cells[i];
    if (cells[i] !== value) { cells[i] = value; drawCells(); render(performance.now()); }
  };
  canvas.addEventListener("mousedown", (e) => { value = null; paint(e); });
  canvas.addEventListener("mousemove", (e) => { if (e.buttons & 1) paint(e); });
  window.addEventListener("mouseup", () => { value = null; });
  $("cells-all").addEventListener("click", () => { delete E.cells[E.paintFor]; drawCells(); render(performance.now()); });
  $("cells-none").addEventListener("click", () => {
    const [rows, cols] = E.state.grid; E.cells[E.paintFor] = new Array(rows * cols).fill(false); drawCells(); render(performance.now());
  });
}

// --- sliders -------------------------------------------------------------------------------------------------------

function choosePaint(name) {
  E.paintFor = name;
  $("paint-name").textContent = name;
  document.querySelectorAll(".slider input[type=radio]").forEach((r) => { r.checked = r.value === name; });
  drawCells();
}

function buildSliders() {
  const box = $("sliders");
  for (const d of E.state.directions) {
    const row = document.createElement("div");
    row.className = "slider";
    row.title = `${d.note}; one unit is one standard deviation of the bank's codes along it (${d.spread.toFixed(3)})`;
    const radio = Object.assign(document.createElement("input"), { type: "radio", name: "paint", value: d.name, title: "paint cells for this direction" });
    radio.disabled = !E.state.grid;
    radio.addEventListener("change", () => choosePaint(d.name));
    const label = Object.assign(document.createElement("label"), { textContent: d.name, htmlFor: `slider-${d.name}` });
    const input = Object.assign(document.createElement("input"), { type: "range", id: `slider-${d.name}`, min: -3, max: 3, step: 0.05, value: 0 });
    input.dataset.direction = d.name;
    const out = Object.assign(document.createElement("output"), { textContent: "0.00" });
    input.addEventListener("input", () => {
      const t0 = performance.now();
      E.moves[d.name] = Number(input.value);
      out.textContent = `${Number(input.value) >= 0 ? "+" : ""}${Number(input.value).toFixed(2)}`;
      render(t0);
    });
    row.append(radio, label, input, out);
    box.append(row);
  }
  const first = E.state.directions.find((d) => d.name === "wings") || E.state.directions[0];
  if (first && E.state.grid) choosePaint(first.name);
  $("reset-edit").addEventListener("click", () => {
    E.moves = {}; E.cells = {};
    document.querySelectorAll(".slider input[type=range]").forEach((s) => { s.value = 0; s.nextSibling.textContent = "0.00"; });
    drawCells(); render(performance.now());
  });
}

// --- the selected code ------------------------------------------------------------------------------------------------

function editRequest() {
  const cells = {};
  for (const [name, grid] of Object.entries(E.cells)) cells[name] = cellsToHex(grid);
  return { start: E.start, moves: E.moves, cells };
}

async function render(t0) {
  if (!E.start) return;
  if (E.inflight) { E.pending = t0; return; } // only the newest change is sent after the one in flight
  E.inflight = true;
  try {
    const answer = await post("/api/render", editRequest());
    const img = $("edited");
    img.src = answer.image;
    await img.decode();
    const ms = performance.now() - t0;
    E.timings.render.push(ms);
    $("render-time").textContent = `decoded in ${answer.milliseconds.toFixed(0)} ms, shown ${ms.toFixed(0)} ms after the change`;
    E.map.setMarker("edit", answer.x, answer.y, "#e0115f", "edited");
    img.dataset.renders = String(Number(img.dataset.renders || 0) + 1);
  } catch (error) {
    $("render-time").textContent = `error: ${error.message}`;
  } finally {
    E.inflight = false;
    if (E.pending !== null) { const next = E.pending; E.pending = null; render(next); }
  }
}

function select(start, name) {
  E.start = start;
  $("selected-name").textContent = name;
  $("save").disabled = false;
  $("saved").hidden = true;
  render(performance.now());
}

// --- uploads ---------------------------------------------------------------------------------------------------------

async function upload(file) {
  $("upload-error").textContent = "";
  try {
    const answer = await api("/api/upload", { method: "POST", headers: { "X-File-Name": encodeURIComponent(file.name).slice(0, 100) }, body: file });
    $("upload-crop").src = answer.crop;
    $("upload-small").src = answer.small;
    $("upload-decoded").src = answer.decoded;
    $("upload-views").hidden = false;
    E.map.setMarker("upload", answer.x, answer.y, "#111", answer.name);
    select({ kind: "upload", id: answer.id }, `your picture ${answer.name} (${answer.size.join(" x ")})`);
  } catch (error) {
    $("upload-error").textContent = error.message;
  }
}

// --- composes --------------------------------------------------------------------------------------------------------

const RANK_ORDER = "Order: the candidates through every gate (--rank_gate, --rise_gate, --mark_gate) by score, " +
  "then the rest by score; so a higher score can come later.";

function showResults(job) {
  const grid = $("compose-grid");
  grid.textContent = "";
  job.results.forEach((r) => {
    const figure = document.createElement("figure");
    figure.dataset.index = String(r.index);
    const img = Object.assign(document.createElement("img"), { src: r.image, alt: `kept image ${r.index}` });
    const terms = Object.entries(r.intent_terms).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(" ");
    const place = r.passed_gates ? "through the gates" : "below a gate";
    const caption = Object.assign(document.createElement("figcaption"), {
      textContent: `#${r.rank} score ${r.combined.toFixed(2)}\n${place}\n${terms}`,
      title: `combined ${r.combined.toFixed(3)}, realism ${r.realism.toFixed(2)}, intent ${r.intent.toFixed(2)}, sharpness ${r.sharpness.toFixed(2)}` +
        (r.uniqueness !== undefined ? `, uniqueness ${r.uniqueness.toFixed(2)}` : "") + `\n${RANK_ORDER}`,
    });
    figure.append(img, caption);
    figure.addEventListener("click", () => {
      grid.querySelectorAll("figure").forEach((f) => f.classList.remove("chosen"));
      figure.classList.add("chosen");
      E.map.setMarker("compose", r.x, r.y, "#ff9f1c", `${job.expression} #${r.rank}`);
      select({ kind: "compose", job: job.id, index: r.index }, `${job.expression} (seed ${job.seed}${job.start ? `, from ${job.start}` : ""}${job.apart ? ", apart" : ""}), rank ${r.rank}`);
    });
    grid.append(figure);
  });
}

async function compose(event) {
  event.preventDefault();
  const t0 = performance.now();
  $("compose-error").textContent = "";
  const progress = $("compose-progress");
  let job;
  try {
    job = await post("/api/compose", { expression: $("expression").value, seed: Number($("seed").value), start: $("start").value, apart: $("apart").checked });
  } catch (error) {
    $("compose-error").textContent = `error: ${error.message}`;
    return;
  }
  E.job = job.id;
  progress.hidden = false;
  $("compose").disabled = true;
  $("compose-command").textContent = job.command;
  while (true) {
    await new Promise((r) => setTimeout(r, 120));
    try { job = await api(`/api/compose/${job.id}`); } catch (error) { $("compose-error").textContent = `error: ${error.message}`; break; }
    progress.value = job.progress;
    $("compose-stage").textContent = job.state === "done" ? `${job.results.length} kept of ${E.state.pool} in ${job.seconds.toFixed(1)} s` : job.stage;
    if (job.state === "done") { showResults(job); E.timings.compose.push(performance.now() - t0); break; }
    if (job.state === "failed") { $("compose-error").textContent = job.error; break; }
  }
  progress.hidden = true;
  $("compose").disabled = false;
}

// --- save ------------------------------------------------------------------------------------------------------------

async function save() {
  const box = $("saved");
  try {
    const answer = await post("/api/save", editRequest());
    box.textContent = `saved in ${answer.folder}/: ${answer.files.join(", ")}\nthe same picture again:\n${answer.command}`;
  } catch (error) {
    box.textContent = `error: ${error.message}`;
  }
  box.hidden = false;
}

// --- start -----------------------------------------------------------------------------------------------------------

async function start() {
  const [state, points] = await Promise.all([api("/api/state"), api("/api/map")]);
  E.state = state;
  E.points = points;
  $("run").textContent = `${state.run}: ${points.x.length} ${points.split} codes`;
  $("upload-limit").textContent = `PNG or JPEG, up to ${(state.upload_limit_bytes / 2 ** 20).toFixed(0)} MiB; centre-cropped to 32 x 32`;
  const sheets = loadSheets(Array.from({ length: points.sheets }, (_, k) => `/api/sprites/${k}.png`));
  E.map = new LatentMap($("map"), $("tooltip"), points, sheets, {
    onSelect: (i) => select({ kind: "bank", row: points.row[i] }, `${points.classes[points.label[i]]}, ${points.split}:${points.row[i]}`),
  });
  drawLegend($("legend"), points, "class");
  $("colour-by").addEventListener("change", (e) => { E.map.colourBy = e.target.value; E.map.draw(); drawLegend($("legend"), points, e.target.value); });
  $("reset-view").addEventListener("click", () => E.map.resetView());
  buildSliders();
  if (state.grid) bindPainting();
  $("upload").addEventListener("change", (e) => { if (e.target.files.length) upload(e.target.files[0]); e.target.value = ""; });
  $("compose-form").addEventListener("submit", compose);
  $("save").addEventListener("click", save);
  await Promise.all(sheets.map((s) => s.decode().catch(() => null)));
  E.timings.ready = performance.now();
  $("status").textContent = "ready";
  document.body.dataset.ready = "1";
}

start().catch((error) => { $("status").textContent = `error: ${error.message}`; });
