// camlens app: one page, no framework, no network beyond this server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const ui = {
  state: { info: null, image: null, target: null, job: null, poll: null, timer: null, seq: 0 },
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(path, options = {}) {
  const res = await fetch(path, options);
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  if (!res.ok) {
    const detail = body && body.detail ? body.detail : `${res.status} ${res.statusText}`;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("#error").hidden = true;
  $("#error").textContent = "";
}

function display() {
  return { colormap: $("#colormap").value, alpha: Number($("#opacity").value).toFixed(2) };
}

function renderUrl(job, method, kind) {
  const d = display();
  const q = new URLSearchParams({ colormap: d.colormap, alpha: d.alpha });
  return `/api/jobs/${job}/${encodeURIComponent(method)}/${kind}.png?${q}`;
}

// ------------------------------------------------------------------ set-up
async function init() {
  const info = await api("/api/info");
  ui.state.info = info;
  $("#model").textContent = `model: ${info.model} · ${info.size} px · ${info.classes} classes`;
  $("#limits").textContent =
    `PNG, JPEG, GIF, BMP, WEBP, TIFF ≤ ${(info.limits.max_bytes / 2 ** 20).toFixed(0)} MiB`;
  const methods = $("#methods");
  for (const m of info.methods) {
    const box = el("input", { type: "checkbox", value: m.name, onchange: schedule });
    box.checked = m.default;
    const label = el("label", { class: "method", title: m.paper }, box, m.name);
    if (m.slow) label.append(el("span", { class: "slow-tag" }, "slow"));
    methods.append(label);
  }
  const layer = $("#layer");
  layer.append(el("option", { value: "" }, `automatic (${info.auto_layer || "none"})`));
  for (const name of info.layers) layer.append(el("option", { value: name }, name));
  layer.addEventListener("change", schedule);
  for (const c of info.colormaps) $("#colormap").append(el("option", { value: c }, c));
  $("#colormap").addEventListener("change", recolour);
  $("#opacity").addEventListener("input", () => {
    $("#opacity-value").textContent = Number($("#opacity").value).toFixed(2);
    recolour();
  });
  const examples = $("#examples");
  for (const ex of info.examples) {
    const img = el("img", { src: `/api/images/${ex.id}/input.png`, alt: ex.name, title: ex.name });
    examples.append(el("button", { type: "button", class: "example", "data-id": ex.id,
      onclick: () => { clearError(); showImage(ex); } }, img));
  }
  $("#file").addEventListener("change", (e) => {
    if (e.target.files.length) upload(e.target.files[0]);
    e.target.value = "";
  });
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  $("#cancel").addEventListener("click", cancel);
  const names = $("#class-names");
  info.class_names.forEach((n, i) => names.append(el("option", { value: n }, `${i}`)));
  $("#class-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("#class-id").value.trim();
    let c = /^\d+$/.test(text) ? Number(text) : info.class_names.indexOf(text);
    if (c < 0 || c >= info.classes) {
      showError(`no class ${JSON.stringify(text)}: give a name from the list or an id in 0..${info.classes - 1}`);
      return;
    }
    clearError();
    ui.state.target = c;
    renderClasses();
    explain();
  });
  if (info.examples.length) showImage(info.examples[0]);
}

// ------------------------------------------------------------------ image and classes
async function upload(file) {
  clearError();
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const image = await api("/api/images", { method: "POST", body: form });
    showImage(image);
  } catch (err) {
    showError(`${file.name}: ${err.message}`);
  }
}

function showImage(image) {
  ui.state.image = image;
  ui.state.target = image.top.length ? image.top[0].class : null;
  $("#input-img").src = `/api/images/${image.id}/input.png`;
  $("#image-name").textContent = image.name + (image.has_mask ? " · with ground-truth mask" : "");
  for (const b of document.querySelectorAll(".example")) {
    b.classList.toggle("selected", b.dataset.id === image.id);
  }
  renderClasses();
  explain();
}

function renderClasses() {
  const list = $("#classes");
  list.replaceChildren();
  for (const t of ui.state.image.top) {
    const pct = t.prob < 0.001 ? "<0.1" : (100 * t.prob).toFixed(1);
    const bar = el("span", { class: "prob-bar" });
    bar.style.width = `${Math.max(1, 100 * t.prob)}%`;
    const button = el("button", { type: "button", class: "class", "data-class": t.class,
      onclick: () => { ui.state.target = t.class; renderClasses(); explain(); } },
      bar, el("span", { class: "class-name" }, t.name), el("span", { class: "prob" }, `${pct}%`));
    if (t.class === ui.state.target) button.classList.add("selected");
    list.append(el("li", {}, button));
  }
}

// ------------------------------------------------------------------ jobs
function selectedMethods() {
  return [...document.querySelectorAll("#methods input:checked")].map((b) => b.value);
}

function schedule() {
  clearTimeout(ui.state.timer);
  ui.state.timer = setTimeout(explain, 250);
}

async function cancel() {
  const job = ui.state.job;
  if (job) {
    try { await api(`/api/jobs/${job}/cancel`, { method: "POST" }); } catch (_) { /* gone */ }
  }
}

async function explain() {
  const image = ui.state.image;
  if (!image) return;
  const methods = selectedMethods();
  const seq = ++ui.state.seq;
  if (ui.state.job) cancel();
  clearInterval(ui.state.poll);
  ui.state.job = null;
  $("#cards").replaceChildren();
  $("#download-npz").hidden = true;
  if (!methods.length) {
    $("#status-text").textContent = "choose at least one method";
    $("#progress").hidden = true;
    $("#cancel").hidden = true;
    return;
  }
  let job;
  try {
    job = await api("/api/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image: image.id, methods, layer: $("#layer").value || null,
        target: ui.state.target }),
    });
  } catch (err) {
    if (seq === ui.state.seq) showError(err.message);
    return;
  }
  if (seq !== ui.state.seq) {  // a newer request superseded this one
    api(`/api/jobs/${job.id}/cancel`, { method: "POST" }).catch(() => {});
    return;
  }
  ui.state.job = job.id;
  for (const m of methods) $("#cards").append(card(m));
  const cls = image.top.find((t) => t.class === job.target);
  $("#explaining").textContent = `explaining ${job.target_name}` +
    (cls ? ` (${(100 * cls.prob).toFixed(1)}%)` : "") + ` at layer ${job.layer}`;
  update(job);
  ui.state.poll = setInterval(() => poll(job.id), 150);
}

async function poll(id) {
  if (ui.state.job !== id) return;
  let job;
  try { job = await api(`/api/jobs/${id}`); } catch (err) {
    clearInterval(ui.state.poll);
    showError(err.message);
    return;
  }
  if (ui.state.job === id) update(job);
}

function update(job) {
  const running = job.status === "queued" || job.status === "running";
  $("#progress").hidden = !running;
  $("#progress .bar").style.width = `${(100 * job.progress).toFixed(0)}%`;
  $("#cancel").hidden = !running;
  let text = job.status;
  if (job.status === "running" && job.current) {
    text = `running ${job.current}` + (job.passes > 1 ? ` · ${job.passes} forward passes` : "");
  }
  if (job.status === "error") text = `error: ${job.error}`;
  $("#status-text").textContent = text;
  $("#status-text").dataset.status = job.status;
  for (const r of job.results) fill(job.id, r);
  if (job.status === "cancelled") {
    for (const c of document.querySelectorAll(".card.pending")) {
      c.classList.remove("pending");
      c.querySelector(".note").textContent = "cancelled";
    }
  }
  if (job.results.some((r) => r.ok)) {
    const a = $("#download-npz");
    a.href = `/api/jobs/${job.id}/raw.npz`;
    a.setAttribute("download", `camlens_${job.target_name}.npz`);
    a.hidden = running;
  }
  if (!running) clearInterval(ui.state.poll);
}

function card(method) {
  return el("article", { class: "card pending", "data-method": method },
    el("header", {}, el("h3", {}, method), el("span", { class: "time" }, "")),
    el("div", { class: "pair" },
      el("figure", {}, el("div", { class: "slot heatmap-slot" }), el("figcaption", {}, "heatmap")),
      el("figure", {}, el("div", { class: "slot overlay-slot" }), el("figcaption", {}, "overlay"))),
    el("footer", {}, el("span", { class: "metrics" }, ""), el("span", { class: "note" }, "waiting…")));
}

function fill(job, r) {
  const c = document.querySelector(`.card[data-method="${CSS.escape(r.method)}"]`);
  if (!c || !c.classList.contains("pending")) return;
  c.classList.remove("pending");
  const note = c.querySelector(".note");
  if (!r.ok) {
    c.classList.add("failed");
    note.textContent = r.error;
    return;
  }
  c.querySelector(".time").textContent =
    `${(1000 * r.seconds).toFixed(0)} ms` + (r.cached ? " · cached" : "");
  c.querySelector(".heatmap-slot").append(
    el("img", { class: "heatmap", alt: `${r.method} heatmap`, src: renderUrl(job, r.method, "heatmap") }));
  c.querySelector(".overlay-slot").append(
    el("img", { class: "overlay", alt: `${r.method} overlay`, src: renderUrl(job, r.method, "overlay") }));
  if (r.metrics && "pointing_game" in r.metrics) {
    const hit = r.metrics.pointing_game >= 0.5;
    c.querySelector(".metrics").replaceChildren(
      el("span", { class: hit ? "hit" : "miss" }, hit ? "pointing ✓" : "pointing ✗"),
      ` IoU ${r.metrics.iou.toFixed(2)}`);
  }
  const link = el("a", { class: "button small", href: renderUrl(job, r.method, "overlay"),
    download: `${r.method}_overlay.png` }, "PNG");
  note.replaceChildren(link);
}

// Colormap and opacity: new pictures of the stored maps; nothing is recomputed.
function recolour() {
  const job = ui.state.job;
  if (!job) return;
  for (const c of document.querySelectorAll(".card")) {
    const method = c.dataset.method;
    for (const kind of ["heatmap", "overlay"]) {
      const img = c.querySelector(`img.${kind}`);
      if (img) img.src = renderUrl(job, method, kind);
    }
    const link = c.querySelector("footer a");
    if (link) link.href = renderUrl(job, method, "overlay");
  }
}

window.addEventListener("DOMContentLoaded", () => {
  init().catch((err) => showError(`could not start: ${err.message}`));
});
