// The customer timeline page (streams/static/customer.html): /customers/<identifier> reads
// GET /api/v1/customers/<identifier> (docs/customer-timeline.md). Every value is set as text.
"use strict";
const label = (s) => (s || "").replaceAll("_", " ");
const when = (iso) => iso ? iso.replace("T", " ").replace(/\.\d+Z$/, " UTC") : "–";
const num = (v, digits) => (v === null || v === undefined) ? "–" : Number(v).toFixed(digits);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== "") node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
const tag = (text, cls) => el("span", {class: "tag" + (cls ? " " + cls : "")}, text);
function mapLink(journey, stage) {
  const q = new URLSearchParams({since: "30d"});
  if (stage) q.set("stage", stage);
  return el("a", {href: "/map/" + encodeURIComponent(journey) + "?" + q.toString()}, label(journey));
}

const parts = location.pathname.split("/").filter(Boolean);
const requested = parts.length > 1 ? decodeURIComponent(parts.slice(1).join("/")) : "";
const status = document.getElementById("status");
const form = document.getElementById("lookup");
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const value = form.elements.identifier.value.trim();
  if (value) location.assign("/customers/" + encodeURIComponent(value));
});

function card(name, title, value, note) {
  return el("div", {class: "card", "data-kpi": name},
    el("div", {class: "label"}, title), el("div", {class: "value", "data-value": value}, value), el("div", {class: "muted"}, note));
}

function render(t) {
  document.title = "journeywatch: " + (t.customer_id ? "customer " + t.customer_id : "person " + t.person_id);
  document.body.dataset.person = t.person_id;
  const persons = t.persons.filter((p) => p !== t.person_id);
  document.getElementById("who").replaceChildren(
    t.customer_id ? el("strong", {"data-customer": t.customer_id}, "Customer " + t.customer_id) : el("strong", {}, "Anonymous person"),
    " ", el("code", {}, t.person_id),
    persons.length ? el("span", {class: "muted"}, ` · stitched from ${persons.length} other person${persons.length === 1 ? "" : "s"}`) : "",
    el("span", {class: "muted"}, ` · ${t.touchpoints.length} touchpoints, ${t.journeys.length} journeys`));
  const k = t.kpis;
  document.getElementById("kpis").replaceChildren(
    card("csat", "CSAT (1-5)", num(k.csat.mean, 1), `${k.csat.answers} answers`),
    card("nps", "NPS", num(k.nps.score, 0), `${k.nps.promoters} promoters, ${k.nps.detractors} detractors`),
    card("first_contact_resolution", "First-contact resolution", k.first_contact_resolution.rate === null ? "–" : num(100 * k.first_contact_resolution.rate, 0) + " %", `${k.first_contact_resolution.cases} cases`),
    card("complaint_response", "Complaint response", k.complaint_response.mean_s === null ? "–" : num(k.complaint_response.mean_s / 60, 1) + " min", `${k.complaint_response.responses} responses`),
    card("value", "Value", num(k.value.revenue, 2) + (k.value.currencies.length ? " " + k.value.currencies.join(", ") : ""), `${k.value.purchases} purchases`));

  document.getElementById("merges").replaceChildren(...(t.merges.length ? t.merges.map((m) =>
    el("tr", {"data-merge-from": m.from_person},
      el("td", {}, when(m.at)), el("td", {}, el("code", {}, m.from_person)),
      el("td", {}, ...m.identifiers.map((i) => el("code", {"data-linked-by": i}, i + " "))))) :
    [el("tr", {}, el("td", {colspan: "3", class: "muted"}, "No merge: every touchpoint came with an identifier of this person."))]));
  document.getElementById("identifiers").replaceChildren(...t.identifiers.map((i) =>
    el("tr", {"data-identifier": i.identifier},
      el("td", {}, when(i.linked_at)),
      el("td", {}, el("code", {}, i.identifier), i.blocked ? tag("shared: not used to stitch", "bad") : ""),
      el("td", {}, el("code", {}, i.person_id)))));

  document.getElementById("journeys").replaceChildren(...t.journeys.map((j) =>
    el("tr", {"data-journey-id": j.journey_id, "data-outcome": j.outcome},
      el("td", {}, mapLink(j.journey, j.stage), el("div", {class: "muted"}, el("code", {}, j.journey_id))),
      el("td", {}, when(j.started_at)),
      el("td", {}, ...j.stages.map((s) => tag(label(s.stage)))),
      el("td", {class: j.outcome === "converted" ? "good" : (j.outcome === "dropped_off" ? "bad" : "")},
        label(j.outcome), j.stage ? el("div", {class: "muted"}, "at " + label(j.stage)) : ""),
      el("td", {class: "n", "data-score": j.score === null ? "" : String(j.score)}, num(j.score, 2)))));

  const moments = [
    ...t.negative_moments.map((m) => ({at: m.at, row: el("tr", {"data-negative": m.kind, "data-event-id": m.event_id || ""},
      el("td", {}, when(m.at)),
      el("td", {class: "bad"}, label(m.kind), m.moment_of_truth ? tag("moment of truth: " + label(m.moment_of_truth), "bad") : ""),
      el("td", {}, [label(m.journey), label(m.stage), label(m.channel)].filter(Boolean).join(" · ")))})),
    ...t.moments_of_truth.map((m) => ({at: m.at, row: el("tr", {"data-moment-of-truth": m.name, "data-passed": String(m.passed)},
      el("td", {}, when(m.at)),
      el("td", {class: m.passed ? "good" : "bad"}, "moment of truth " + label(m.name) + (m.passed ? ": passed" : ": failed")),
      el("td", {}, [label(m.journey), label(m.stage), label(m.channel)].filter(Boolean).join(" · ")))})),
  ].sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0));
  document.getElementById("moments").replaceChildren(...(moments.length ? moments.map((m) => m.row) :
    [el("tr", {}, el("td", {colspan: "3", class: "muted"}, "None."))]));

  document.getElementById("touchpoints").replaceChildren(...t.touchpoints.map((p) =>
    el("tr", {"data-event-id": p.event_id, "data-channel": p.channel},
      el("td", {}, when(p.at)),
      el("td", {class: "channel", "data-channel": p.channel}, label(p.channel), p.session_hint ? el("div", {class: "muted"}, p.session_hint) : ""),
      el("td", {}, p.touchpoint, el("div", {class: "muted"}, p.action)),
      el("td", {class: p.outcome === "ok" ? "" : "bad"}, label(p.outcome), p.outcome_reason ? el("div", {class: "muted"}, label(p.outcome_reason)) : "",
        p.csat !== null ? tag("CSAT " + p.csat) : "", p.nps !== null ? tag("NPS " + p.nps) : "",
        p.revenue !== null ? tag(num(p.revenue, 2) + " " + (p.currency || "")) : ""),
      el("td", {}, ...p.negative_moments.map((n) => tag(label(n), "bad")), ...p.moments_of_truth.map((n) => tag("MOT " + label(n)))),
      el("td", {}, ...p.identifiers.map((i) => el("div", {}, el("code", {}, i)))))));
  document.getElementById("truncated").hidden = !t.truncated;
  document.getElementById("timeline").hidden = false;
  document.getElementById("error").hidden = true;
}

async function load() {
  if (!requested) {
    status.textContent = "name a customer";
    return;
  }
  try {
    const response = await fetch("/api/v1/customers/" + encodeURIComponent(requested), {credentials: "same-origin"});
    const body = await response.json().catch(() => ({error: response.statusText}));
    if (!response.ok) {
      const error = document.getElementById("error");
      error.textContent = body.error || ("HTTP " + response.status);
      error.hidden = false;
      status.textContent = "";
      document.body.dataset.loaded = "error";
      return;
    }
    // a raw e-mail or phone number named in the address leaves it: the page shows the person's key
    const key = body.customer_id ? "customer_id:" + body.customer_id : body.person_id.replace(/^a:/, "");
    if (key !== requested) history.replaceState(null, "", "/customers/" + encodeURIComponent(key));
    render(body);
    status.textContent = "as of " + new Date().toLocaleTimeString([], {hourCycle: "h23"});
    document.body.dataset.loaded = "yes";
  } catch (e) {
    status.textContent = "cannot reach journeywatch";
  }
}
load();
