// The journey map page (streams/static/map.html); its journeys come in body[data-journeys].
"use strict";
const JOURNEYS = JSON.parse(document.body.dataset.journeys);
const parts = location.pathname.split("/").filter(Boolean);
const journey = parts[1] || JOURNEYS[0].name;
const form = document.getElementById("filters");
const params = new URLSearchParams(location.search);
for (const [k, v] of params) if (form.elements[k]) form.elements[k].value = v;

const nav = document.getElementById("journeys");
for (const j of JOURNEYS) {
  const a = document.createElement("a");
  a.href = "/map/" + j.name + location.search;
  a.textContent = j.name.replaceAll("_", " ");
  if (j.name === journey) a.setAttribute("aria-current", "page");
  nav.append(a);
}
function query(extra) {
  const q = new URLSearchParams();
  for (const el of form.elements) if (el.name && el.value) q.set(el.name, el.value);
  for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
  return q.toString();
}
for (const fmt of ["html", "svg", "png"]) {
  document.getElementById("dl-" + fmt).href = `/api/v1/map/${journey}?` + query({format: fmt, download: "1"});
}
// ?stage=NAME (the live page's links): that stage's rows are highlighted in every table
const stage = params.get("stage") || "";
const stageLabel = stage.replaceAll("_", " ");
if (stage && JOURNEYS.some((j) => j.name === journey)) {
  const note = document.getElementById("selected-stage");
  note.textContent = "Stage " + stageLabel + " is highlighted in the tables below the map.";
  note.hidden = false;
}
function selectStage() {
  if (!stage) return;
  for (const row of document.querySelectorAll("#map tr")) {
    const head = row.querySelector("th[scope=row]");
    const change = row.dataset.change;
    const selected = change !== undefined ? change.split("|")[0] === stage
      : Boolean(head && head.textContent.trim() === stageLabel);
    row.classList.toggle("selected", selected);
    if (selected) row.dataset.selected = stage;
  }
}
const status = document.getElementById("status");
let loading = false, loadedAt = 0, again = false, timer = null;
async function load() {
  if (loading) { again = true; return; }
  loading = true;
  try {
    const response = await fetch(`/api/v1/map/${journey}?` + query({format: "html"}));
    if (!response.ok) {
      const body = await response.json().catch(() => ({error: response.statusText}));
      status.textContent = "";
      const p = document.createElement("p"); p.className = "error"; p.textContent = body.error;
      document.getElementById("map").replaceChildren(p);
      return;
    }
    // our own server renders the fragment (every value escaped there)
    document.getElementById("map").innerHTML = await response.text();
    selectStage();
    loadedAt = Date.now();
    document.body.dataset.loads = String(Number(document.body.dataset.loads || 0) + 1);
    status.textContent = "updated " + new Date().toLocaleTimeString([], {hourCycle: "h23"});
  } catch (e) {
    status.textContent = "cannot reach journeywatch; retrying";
  } finally {
    loading = false;
    if (again) { again = false; schedule(); }
  }
}
// New figures in ClickHouse: redraw at most every 5 seconds, and always after the last
// change (figures that arrive within 5 s of a redraw are drawn when the 5 s are over).
function schedule() {
  if (timer) return;
  const wait = Math.max(0, loadedAt + 5000 - Date.now());
  timer = setTimeout(() => { timer = null; load(); }, wait);
}
load();
const source = new EventSource("/api/v1/live/stream");
source.onmessage = schedule;
