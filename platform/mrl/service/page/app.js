// The search page's logic: plain JavaScript, no libraries. Everything shown comes from the service's JSON API:
//   GET /healthz      what the index is (rows, d, modality), which queries and modes it takes
//   GET /calibration  the plans budgets choose from (recall and p50 latency each), drawn as the curve
//   POST /search      the query; the reply's `search` is the plan that ran, `budget` the calibrated row it chose
//   GET /items/{id}   each result: a PNG (image corpora, fetched and shown from a blob: URL) or {id, label, text}
// With an API key the service asked for it when the page was opened (HTTP Basic: any user name, the key as
// password; mrl.service.guard), and the browser sends it with each of these calls: the page never sees the key.
// Data is written into the page with textContent only, never as HTML.
"use strict";

const state = { health: null, table: null, image: null, blobs: [], chosen: null };
const LOGIN = "reload the page and log in with the service's API key (any user name, the key as password)";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

// ------------------------------------------------------------------------------------------------ the API

class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return JSON.stringify(detail);
}

async function api(path, options = {}) {
  const resp = await fetch(path, options); // same origin: the browser adds the login it holds
  if (!resp.ok) {
    let detail = resp.statusText;
    try {
      detail = detailText((await resp.json()).detail);
    } catch (_) { /* not JSON: keep the status text */ }
    throw new ApiError(resp.status, detail);
  }
  return resp;
}

// ------------------------------------------------------------------------------------------------ start-up

function setStatus(text, stateName) {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = stateName;
}

async function start() {
  try {
    state.health = await (await api("healthz")).json();
  } catch (err) {
    setStatus(`the service did not answer /healthz (${err.message})`, "error");
    return;
  }
  if (state.health.rows === undefined) { // /healthz tells a caller without the key only that it is up
    setStatus(`the service did not recognise this browser's login: ${LOGIN}`, "error");
    return;
  }
  describeService(state.health);
  setUpQuery(state.health);
  await loadCalibration();
}

function describeService(h) {
  const model = h.model && (h.model.name ? `${h.model.name} v${h.model.version}` : h.model.uri);
  const parts = [`${h.rows.toLocaleString()} ${h.modality === "text" ? "documents" : "images"}`, `d = ${h.dim}`,
    `prefix indexes ${h.index.sizes.join(", ")}`, `index ${h.index.version}`];
  if (model) parts.push(`model ${model}`);
  parts.push(h.encoder ? `queries: ${h.queries.join(", ")}` : "no encoder: id and vector queries only");
  $("service").textContent = parts.join(" · ");
}

function setUpQuery(h) {
  const content = h.queries.filter((q) => q === "image" || q === "text");
  for (const kind of content) $(`kind-${kind}-label`).hidden = false;
  const first = content.length ? content[0] : "id";
  document.querySelector(`input[name=kind][value=${first}]`).checked = true;
  showKind(first);
  for (const mode of h.modes) {
    const option = document.createElement("option");
    option.value = option.textContent = mode;
    $("mode").appendChild(option);
  }
  $("k").value = Math.min(10, h.limits.max_k);
  $("k").max = h.limits.max_k;
  $("shortlist-k").max = h.limits.max_shortlist_k;
  $("budget-row").hidden = !h.budgets;
}

async function loadCalibration() {
  if (state.health.budgets) {
    try {
      state.table = await (await api("calibration")).json();
    } catch (err) {
      setStatus(`no calibration table (${err.message})${err.status === 401 ? `: ${LOGIN}` : ""}`, "error");
      return;
    }
    setUpBudget();
  }
  drawCurve();
  setStatus("ready: choose a query", "ready");
}

// ------------------------------------------------------------------------------------------------ the query

function showKind(kind) {
  for (const k of ["image", "text", "id"]) $(`by-${k}`).hidden = k !== kind;
}

function currentKind() {
  return document.querySelector("input[name=kind]:checked").value;
}

function readImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const url = reader.result; // data:<type>;base64,<data>
    state.image = { name: file.name, base64: url.slice(url.indexOf(",") + 1) };
    $("preview").src = url;
    $("preview").hidden = false;
    $("drop-hint").textContent = file.name;
  };
  reader.onerror = () => setStatus(`could not read ${file.name}`, "error");
  reader.readAsDataURL(file);
}

function setUpBudget() {
  const kind = $("budget-kind").value;
  const field = kind === "latency_ms" ? "p50_ms" : "recall";
  state.budgetValues = [...new Set(state.table.rows.map((r) => r[field]))].sort((a, b) => a - b);
  const slider = $("budget");
  slider.max = state.budgetValues.length - 1;
  slider.value = Math.floor((state.budgetValues.length - 1) / 2);
  showBudget();
}

function showBudget() {
  const value = state.budgetValues[Number($("budget").value)];
  $("budget-value").textContent = $("budget-kind").value === "latency_ms" ? `≤ ${value} ms` : `≥ ${value}`;
}

function requestBody() {
  const body = {};
  const kind = currentKind();
  if (kind === "image") {
    if (!state.image) throw new Error("choose or drop an image first");
    body.image = state.image.base64;
  } else if (kind === "text") {
    const text = $("text").value.trim();
    if (!text) throw new Error("type a text first");
    body.text = text;
  } else {
    const id = $("item-id").value.trim();
    if (!/^-?\d+$/.test(id)) throw new Error("give a corpus id (a whole number)");
    body.id = Number(id);
  }
  if ($("k").value) body.k = Number($("k").value);
  if (document.querySelector("input[name=plan]:checked").value === "budget" && state.table) {
    body.budget = { [$("budget-kind").value]: state.budgetValues[Number($("budget").value)] };
  } else {
    body.mode = $("mode").value;
    if ($("shortlist-k").value) body.shortlist_k = Number($("shortlist-k").value);
  }
  return body;
}

async function search(event) {
  event.preventDefault();
  let body;
  try {
    body = requestBody();
  } catch (err) {
    setStatus(err.message, "error");
    return;
  }
  const size = JSON.stringify(body).length;
  if (size > state.health.limits.max_body_bytes) {
    setStatus(`the query is ${size.toLocaleString()} bytes of JSON, above this service's limit of ` +
              `${state.health.limits.max_body_bytes.toLocaleString()} (serve.max_body_bytes): use a smaller image`,
              "error");
    return;
  }
  setStatus("searching…", "searching");
  const started = performance.now();
  let reply;
  try {
    reply = await (await api("search", { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify(body) })).json();
  } catch (err) {
    setStatus(`the search failed: ${err.message}${err.status === 401 ? `: ${LOGIN}` : ""}`, "error");
    return;
  }
  const roundTrip = performance.now() - started;
  showPlan(reply, roundTrip);
  const summary = await showResults(reply);
  // for benchmarks/search_page.py: the search's round trip, and the time until every result was shown
  $("status").dataset.searchMs = roundTrip.toFixed(2);
  $("status").dataset.resultsMs = (performance.now() - started).toFixed(2);
  setStatus(summary, "done");
}

// ------------------------------------------------------------------------------------------------ the answer

function planText(search) {
  const s = search.shortlist;
  const extra = ["nprobe", "ef_search"].filter((key) => key in s).map((key) => `, ${key} ${s[key]}`).join("");
  const shortlist = `${s.k} from ${s.source}${extra}`;
  const reranks = search.reranks.length ? search.reranks.map(([size, keep]) => `${keep} at ${size}-d`).join(" → ")
                                        : "none";
  return `${search.mode}: shortlist ${shortlist}; rerank ${reranks}; k ${search.k}`;
}

function calibratedRow(reply) {
  if (!state.table) return null;
  if (reply.budget) return { recall: reply.budget.calibrated.recall, p50_ms: reply.budget.calibrated.p50_ms,
                             met: reply.budget.met };
  const s = reply.search;
  return state.table.rows.find((r) => r.setting.mode === s.mode && (s.mode === "full" ||
    (s.mode === "adaptive" && `size_${r.setting.shortlist_size}` === s.shortlist.source &&
     r.setting.shortlist_k === s.shortlist.k))) || null;
}

function addFact(list, term, value) {
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = term;
  dd.textContent = value;
  list.append(dt, dd);
  return dd;
}

function showPlan(reply, roundTrip) {
  const list = $("plan");
  list.replaceChildren();
  addFact(list, "plan", planText(reply.search)).id = "plan-text";
  const row = calibratedRow(reply);
  state.chosen = row;
  const at = state.table ? state.table.k : null;
  let calibrated = "not one of the calibrated plans";
  if (row) {
    calibrated = `recall@${at} ${row.recall.toFixed(3)}, p50 ${row.p50_ms} ms (search only)`;
    if (reply.budget) calibrated += reply.budget.met ? "; budget met" : "; budget not met: the closest plan";
  }
  if (state.table) addFact(list, "calibrated", calibrated).id = "plan-calibrated";
  addFact(list, "time", `${reply.took_ms.toFixed(1)} ms searching in the service, ${roundTrip.toFixed(0)} ms round trip` +
                        (reply.batch > 1 ? ` (batched with ${reply.batch - 1} other)` : ""));
  drawCurve();
}

function itemCard(id, label, score, rank) {
  const card = document.createElement("figure");
  card.className = "result";
  card.dataset.id = id;
  card.dataset.rank = rank;
  const caption = document.createElement("figcaption");
  caption.textContent = `#${rank + 1} · id ${id} · label ${label} · score ${score.toFixed(4)}`;
  card.appendChild(caption);
  return card;
}

async function fillImage(card, id) {
  const blob = await (await api(`items/${id}`)).blob();
  const url = URL.createObjectURL(blob);
  state.blobs.push(url);
  const img = document.createElement("img");
  img.className = "item";
  img.alt = `item ${id}`;
  await new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = () => reject(new Error("the item's image did not decode"));
    img.src = url;
  });
  card.prepend(img);
}

async function fillText(card, id) {
  const item = await (await api(`items/${id}`)).json();
  const text = document.createElement("p");
  text.className = "item-text";
  text.textContent = item.text;
  card.prepend(text);
}

async function showResults(reply) {
  for (const url of state.blobs) URL.revokeObjectURL(url);
  state.blobs = [];
  const grid = $("results");
  grid.replaceChildren();
  const fill = state.health.modality === "text" ? fillText : fillImage;
  const cards = reply.ids.map((id, i) => itemCard(id, reply.labels[i], reply.scores[i], i));
  grid.append(...cards);
  const loads = await Promise.allSettled(cards.map((card, i) => fill(card, reply.ids[i])));
  const failed = loads.filter((l) => l.status === "rejected");
  failed.forEach((l) => console.warn(l.reason));
  loads.forEach((l, i) => {
    if (l.status === "rejected") {
      const note = document.createElement("p");
      note.className = "item-error";
      note.textContent = l.reason.message;
      cards[i].prepend(note);
    }
  });
  const note = failed.length ? `; ${failed.length} item(s) could not be shown` : "";
  return `${reply.ids.length} results${note}`;
}

// ------------------------------------------------------------------------------------------------ the curve

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function scales(rows) {
  const box = { left: 44, right: 350, top: 12, bottom: 190 };
  const lat = rows.map((r) => r.p50_ms);
  const lo = Math.min(...lat), hi = Math.max(...lat);
  const log = hi / lo > 20; // a wide latency range reads better on a log axis
  const tx = (v) => (log ? Math.log10(v) : v);
  const pad = hi > lo ? 0.05 * (tx(hi) - tx(lo)) : 1; // keep the points off the axes
  const [x0, x1] = [tx(lo) - pad, tx(hi) + pad];
  const recalls = rows.map((r) => r.recall);
  const y0 = Math.max(0, Math.min(...recalls) - 0.05), y1 = 1.02;
  return { box, log, lo, hi, y0, y1,
    x: (v) => box.left + (box.right - box.left) * (tx(v) - x0) / (x1 - x0 || 1),
    y: (v) => box.bottom - (box.bottom - box.top) * (v - y0) / (y1 - y0 || 1) };
}

function drawAxes(svg, s) {
  const { box } = s;
  svg.append(svgEl("line", { x1: box.left, y1: box.bottom, x2: box.right, y2: box.bottom, class: "axis" }),
             svgEl("line", { x1: box.left, y1: box.top, x2: box.left, y2: box.bottom, class: "axis" }));
  for (const v of [s.y0, (s.y0 + 1) / 2, 1]) {
    svg.append(svgEl("text", { x: box.left - 4, y: s.y(v) + 3, class: "tick", "text-anchor": "end" }, v.toFixed(2)));
  }
  for (const v of [s.lo, s.log ? Math.sqrt(s.lo * s.hi) : (s.lo + s.hi) / 2, s.hi]) {
    svg.append(svgEl("text", { x: s.x(v), y: box.bottom + 14, class: "tick", "text-anchor": "middle" },
                     v < 1 ? v.toPrecision(2) : v.toFixed(1)));
  }
  svg.append(svgEl("text", { x: (box.left + box.right) / 2, y: box.bottom + 32, class: "label",
                             "text-anchor": "middle" }, `p50 latency, ms${s.log ? " (log)" : ""}`),
             svgEl("text", { x: 10, y: (box.top + box.bottom) / 2, class: "label", "text-anchor": "middle",
                             transform: `rotate(-90 10 ${(box.top + box.bottom) / 2})` },
                   `recall@${state.table.k}`));
}

function frontier(rows) {
  // the plans a latency budget can choose: each is the most accurate at its latency or below
  const sorted = [...rows].sort((a, b) => a.p50_ms - b.p50_ms || b.recall - a.recall);
  const out = [];
  for (const r of sorted) if (!out.length || r.recall > out[out.length - 1].recall) out.push(r);
  return out;
}

function settingText(setting) {
  return setting.mode === "full" ? "full search"
    : `${setting.mode}: shortlist ${setting.shortlist_k} from size_${setting.shortlist_size}`;
}

function drawCurve() {
  const svg = $("curve");
  svg.replaceChildren();
  if (!state.table || !state.table.rows.length) return;
  const rows = state.table.rows;
  const s = scales(rows);
  drawAxes(svg, s);
  const line = frontier(rows).map((r) => `${s.x(r.p50_ms).toFixed(1)},${s.y(r.recall).toFixed(1)}`).join(" ");
  svg.append(svgEl("polyline", { points: line, class: "frontier" }));
  for (const r of rows) {
    const dot = svgEl("circle", { cx: s.x(r.p50_ms), cy: s.y(r.recall), r: 3, class: "plan-point" });
    dot.append(svgEl("title", {}, `${settingText(r.setting)}: recall ${r.recall}, p50 ${r.p50_ms} ms`));
    svg.append(dot);
  }
  if (state.chosen) {
    svg.append(svgEl("circle", { cx: s.x(state.chosen.p50_ms), cy: s.y(state.chosen.recall), r: 7,
                                 class: "chosen", id: "chosen-point" }));
  }
  $("curve-caption").textContent = `${rows.length} calibrated plans, measured on ${state.table.queries} held-out ` +
    `queries when the index was built; the line is what latency budgets choose from` +
    (state.chosen ? "; ringed: the plan of the last answer" : "");
}

// ------------------------------------------------------------------------------------------------ wiring

function wire() {
  document.querySelectorAll("input[name=kind]").forEach((radio) =>
    radio.addEventListener("change", () => showKind(radio.value)));
  $("image-file").addEventListener("change", () => readImage($("image-file").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    readImage(event.dataTransfer.files[0]);
  });
  $("budget-kind").addEventListener("change", setUpBudget);
  $("budget").addEventListener("input", () => {
    showBudget();
    $("plan-budget").checked = true;
  });
  $("search-form").addEventListener("submit", search);
}

wire();
start();
