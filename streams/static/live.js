// The live page (streams/static/live.html): figures pushed by server-sent events.
"use strict";
const fmt = new Intl.NumberFormat("en-US");
const pct = (r) => (r === null || r === undefined) ? "–" : (100 * r).toFixed(1) + " %";
const per100 = (r) => (r === null || r === undefined) ? "–" : r.toFixed(2);
const label = (s) => (s || "").replaceAll("_", " ");
const time = (iso) => new Date(iso).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZone: "UTC"}) + " UTC";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}
// Alert annotations are anyone's text: only an absolute http(s) URL becomes a link (the server
// checks too); anything else is shown as text.
function safeHref(value) {
  if (typeof value !== "string" || !value) return null;
  try {
    const url = new URL(value);
    return (url.protocol === "http:" || url.protocol === "https:") ? url.href : null;
  } catch (e) {
    return null;
  }
}
function link(name, url, text) {
  const href = safeHref(url);
  if (href) return [" ", el("a", {href: href, rel: "noopener noreferrer"}, name)];
  const shown = text || url;
  return shown ? [" ", el("span", {class: "muted", "data-link": name}, `${name}: ${shown}`)] : [];
}
// The journey map of what the page shows: the journeys started in its window, compared with its
// baseline, the stage (and the channel) selected. Names come from the journeys file.
let periods = {since: "15m", compare_since: "375m", compare_until: "15m"};
// ?segment=NAME: the figures of one segment's journeys (docs/segments.md); its map too.
const segment = new URLSearchParams(window.location.search).get("segment") || "";
function mapHref(journey, stage, channel) {
  const q = new URLSearchParams(periods);
  if (stage) q.set("stage", stage);
  if (channel) q.set("channel", channel);
  if (segment) q.set("segment", segment);
  return "/map/" + encodeURIComponent(journey) + "?" + q.toString();
}
function mapLink(text, journey, stage, channel) {
  return el("a", {href: mapHref(journey, stage, channel), "data-map": journey + (stage ? "/" + stage : "")}, text);
}
// A shipped alert's runbook (docs/runbooks/NAME.md in the repository) is served by this sink.
function runbookLink(a) {
  const m = /\/docs\/runbooks\/([a-z0-9-]+)\.md$/.exec(a.runbook_url || "");
  return m ? [" ", el("a", {href: "/runbooks/" + m[1], "data-runbook": m[1]}, "runbook")] : link("runbook", a.runbook_url, a.runbook_text);
}
// The customer page of a person (docs/customer-timeline.md): named by its anchor identifier.
function customerLink(person, text) {
  if (!person) return text;
  const key = person.startsWith("c:") ? "customer_id:" + person.slice(2) : person.replace(/^a:/, "");
  return el("a", {href: "/customers/" + encodeURIComponent(key), "data-customer-link": person}, text);
}
function figure(name, value, text) {
  return el("span", {"data-figure": name, "data-value": value === null ? "" : String(value)}, text);
}
function state(now, base) {
  if (now === null || base === null || base === undefined) return el("span", {class: "muted"}, "no baseline");
  if (now > base * 1.5 && now - base > 0.005) return el("span", {class: "above"}, "▲ above baseline");
  return el("span", {class: "ok"}, "normal");
}
function spark(series) {
  const max = Math.max(1, ...series);
  const w = 100, h = 20;
  const points = series.map((v, i) => `${(i / Math.max(1, series.length - 1) * w).toFixed(1)},${(h - v / max * (h - 2) - 1).toFixed(1)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`); svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "spark"); svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `per minute, highest ${max}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points); svg.append(line);
  return svg;
}

// Experience KPIs (sinks/clickhouse/live.py kpi_figures): each tile shows the window's figure,
// how many answers (cases, journeys) it rests on, its baseline and the same window a week before.
// "worse" uses the alerts' margins (NpsDrop 15 points, CsatDrop 10) and alike for the others.
const KPI_TILES = [
  {name: "csat", label: "CSAT (4–5 of 5)", unit: "answers", show: pct, worse: (now, base) => now < base - 0.10},
  {name: "nps", label: "NPS", unit: "answers", show: (v) => v === null ? "–" : v.toFixed(0), worse: (now, base) => now < base - 15},
  {name: "first_contact_resolution", label: "First-contact resolution", unit: "cases", show: pct, worse: (now, base) => now < base - 0.10},
  {name: "complaint_response", label: "Complaint response, median", unit: "responses", show: (v) => duration(v), worse: (now, base) => now > 1.5 * base},
  {name: "peak_end", label: "Peak-end score (0–100)", unit: "journeys", show: (v) => v === null ? "–" : v.toFixed(1), worse: (now, base) => now < base - 10},
];
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${seconds.toFixed(0)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(0)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
function kpiTile(key, label, unit, f, show, worse) {
  const noted = (v) => v === null || v === undefined;
  const bad = !noted(f.value) && !noted(f.baseline) && worse(f.value, f.baseline);
  return el("div", {class: "card", "data-kpi": key},
    el("div", {class: "label"}, label),
    el("div", {class: "value"}, figure("kpi." + key, f.value, show(f.value))),
    el("div", {class: "muted"}, "on ", figure(`kpi.${key}.n`, f.n, fmt.format(f.n)), ` ${unit}`),
    el("div", {class: "muted"}, "baseline ", figure(`kpi.${key}.baseline`, f.baseline, show(f.baseline)),
      " · a week before ", figure(`kpi.${key}.week_before`, f.week_before, show(f.week_before))),
    bad ? el("div", {class: "above"}, "▼ worse than the baseline") : "");
}
function renderKpis(kpis) {
  if (!kpis) return;
  const money = (currency) => (v) => {
    if (v === null || v === undefined) return "–";
    try {
      return new Intl.NumberFormat("en-US", {style: "currency", currency: currency, maximumFractionDigits: 0}).format(v);
    } catch (e) {
      return `${fmt.format(Math.round(v))} ${currency}`;  // a code Intl does not take
    }
  };
  document.getElementById("kpis").replaceChildren(
    ...KPI_TILES.map((t) => kpiTile(t.name, t.label, t.unit, kpis[t.name], t.show, t.worse)),
    ...kpis.revenue.map((r) => kpiTile(`revenue.${r.currency}`, `Revenue (${r.currency}, known customers)`, "purchases", r, money(r.currency), (now, base) => now < 0.5 * base)));
}

function renderSegments(names) {
  const choice = document.getElementById("segment-choice");
  const select = document.getElementById("segment");
  const known = names.length ? [...names, "other"] : [];
  choice.hidden = !known.length && !segment;
  if (select.options.length === known.length + 1) return;
  select.replaceChildren(el("option", {value: ""}, "all journeys"),
    ...known.map((name) => el("option", {value: name}, label(name))));
  select.value = segment;
}
document.getElementById("segment").addEventListener("change", (event) => {
  const q = new URLSearchParams(window.location.search);
  if (event.target.value) q.set("segment", event.target.value); else q.delete("segment");
  window.location.search = q.toString();
});

function render(s) {
  periods = {since: `${s.window_minutes}m`, compare_since: `${s.window_minutes + s.baseline_minutes}m`, compare_until: `${s.window_minutes}m`};
  document.getElementById("window").textContent = s.as_of
    ? `Last ${s.window_minutes} minutes up to ${time(s.as_of)} (newest touchpoint); baseline: the ${s.baseline_minutes} minutes before`
    : "No touchpoints yet.";
  if (s.segment) document.getElementById("window").prepend(el("strong", {"data-segment": s.segment}, `Segment ${label(s.segment)}: `));
  for (const [k, v] of Object.entries(s.totals)) {
    const node = document.querySelector(`[data-figure="totals.${k}"]`);
    if (node) { node.textContent = fmt.format(v); node.dataset.value = v; }
  }
  renderKpis(s.kpis);
  renderSegments(s.segments || []);
  // alerts
  const alerts = document.getElementById("alerts");
  if (s.alerts === null) {
    alerts.replaceChildren(el("p", {class: "muted"}, "Alerts: " + s.alerts_status));
  } else if (!s.alerts.length) {
    alerts.replaceChildren(el("p", {class: "ok"}, "No alert is firing."));
  } else {
    alerts.replaceChildren(...s.alerts.map((a) => {
      const where = [a.journey, a.stage, a.channel].filter(Boolean).map(label).join(" · ");
      const box = el("div", {class: "alert", "data-alert": a.name},
        el("strong", {}, a.name), el("span", {class: "tag"}, a.severity || "no severity"),
        where ? el("span", {class: "tag"}, where) : "",
        el("div", {}, a.summary || ""),
        el("div", {class: "muted"}, "since " + (a.starts_at ? time(a.starts_at) : "?")));
      box.append(...runbookLink(a));
      if (a.journey) box.append(" ", mapLink("journey map", a.journey, a.stage, a.channel));
      box.append(...link("dashboard", a.dashboard_url, a.dashboard_text));
      return box;
    }));
  }
  // traffic
  document.getElementById("traffic").replaceChildren(...s.traffic.map((t) =>
    el("tr", {}, el("th", {scope: "row"}, label(t.channel)),
      el("td", {class: "n"}, figure(`traffic.${t.channel}`, t.touchpoints, fmt.format(t.touchpoints))),
      el("td", {}, spark(t.per_minute)))));
  // rates
  document.getElementById("dropoff-rates").replaceChildren(...s.journeys.map((j) =>
    el("tr", {}, el("th", {scope: "row"}, mapLink(label(j.journey), j.journey)),
      el("td", {class: "n"}, figure(`drop_off_rate.${j.journey}`, j.drop_off_rate, pct(j.drop_off_rate))),
      el("td", {class: "n"}, figure(`baseline_drop_off_rate.${j.journey}`, j.baseline_drop_off_rate, pct(j.baseline_drop_off_rate))),
      el("td", {}, state(j.drop_off_rate, j.baseline_drop_off_rate)))));
  document.getElementById("negative-rates").replaceChildren(...s.negative_moment_rates.map((r) =>
    el("tr", {}, el("th", {scope: "row"}, label(r.channel)),
      el("td", {class: "n"}, figure(`negative_rate.${r.channel}`, r.per_100_touchpoints, per100(r.per_100_touchpoints))),
      el("td", {class: "n"}, figure(`baseline_negative_rate.${r.channel}`, r.baseline_per_100_touchpoints, per100(r.baseline_per_100_touchpoints))),
      el("td", {}, state(r.per_100_touchpoints === null ? null : r.per_100_touchpoints / 100,
                         r.baseline_per_100_touchpoints === null ? null : r.baseline_per_100_touchpoints / 100)))));
  // funnels
  document.getElementById("funnels").replaceChildren(...s.journeys.map((j) => {
    const widest = Math.max(1, ...j.stages.map((st) => st.entered));
    return el("div", {class: "card"},
      el("table", {},
        el("caption", {}, `${label(j.journey)}: ${fmt.format(j.started)} started, ${fmt.format(j.converted)} converted`),
        el("thead", {}, el("tr", {}, el("th", {scope: "col"}, "Stage"), el("th", {scope: "col", class: "n"}, "Entered"),
          el("th", {scope: "col"}, ""), el("th", {scope: "col", class: "n"}, "Dropped off"), el("th", {scope: "col", class: "n"}, "Rate"))),
        el("tbody", {}, ...j.stages.map((st) => el("tr", {},
          el("th", {scope: "row"}, mapLink(label(st.stage), j.journey, st.stage)),
          el("td", {class: "n"}, figure(`funnel.${j.journey}.${st.stage}.entered`, st.entered, fmt.format(st.entered))),
          el("td", {style: "width: 35%"}, el("div", {class: "bar", style: `width: ${(100 * st.entered / widest).toFixed(1)}%`, "aria-hidden": "true"})),
          el("td", {class: "n"}, figure(`funnel.${j.journey}.${st.stage}.dropped_off`, st.dropped_off, fmt.format(st.dropped_off))),
          el("td", {class: "n"}, pct(st.drop_off_rate)))))));
  }));
  // feeds
  document.getElementById("negative-feed").replaceChildren(...s.negative_moments.map((m) =>
    el("li", {"data-at": m.at},
      el("strong", {}, label(m.kind)), " ", el("span", {class: "muted"}, time(m.at)),
      m.journey ? el("span", {class: "tag"}, `${label(m.journey)} · ${label(m.stage)}`) : "",
      el("span", {class: "tag"}, `${label(m.channel)} · ${m.touchpoint}`),
      m.moment_of_truth ? el("span", {class: "tag above"}, "moment of truth: " + label(m.moment_of_truth)) : "",
      m.person_id ? el("span", {class: "tag"}, customerLink(m.person_id, "customer")) : "")));
  const risk = document.getElementById("risk-feed");
  risk.replaceChildren(...s.at_risk.map((r) =>
    el("li", {"data-journey-id": r.journey_id},
      el("strong", {}, label(r.journey)), ` at ${label(r.stage)}: `,
      `${label(r.moment_of_truth)} failed`, " ", el("span", {class: "muted"}, time(r.failed_at)),
      r.channel ? el("span", {class: "tag"}, label(r.channel)) : "",
      el("span", {class: "tag"}, customerLink(r.person_id, "journey " + r.journey_id)))));
  if (s.totals.at_risk > s.at_risk.length) {
    risk.append(el("li", {class: "muted"}, `and ${fmt.format(s.totals.at_risk - s.at_risk.length)} more`));
  }
  // the processes of `journeywatch run` (absent elsewhere): restarts after a crash
  const run = document.getElementById("run");
  const processes = (s.run && s.run.processes) || [];
  run.hidden = !processes.length;
  run.replaceChildren(...processes.filter((p) => p.restarts || p.state !== "running").map((p) => {
    const last = p.last_exit ? ` (last: ${p.last_exit.description} at ${time(p.last_exit.at)})` : "";
    const what = p.restarts ? `restarted ${p.restarts} time${p.restarts === 1 ? "" : "s"}${last}` : label(p.state);
    return el("span", {class: p.state === "running" ? "tag" : "tag above", "data-process": p.process,
                       "data-restarts": p.restarts}, `${p.process}: ${what}` + (p.restarts && p.state !== "running" ? `, ${label(p.state)}` : ""));
  }));
  if (processes.length && !run.children.length) run.textContent = `${processes.length} processes up, none restarted`;
  document.body.dataset.version = s.version;
}

const connection = document.getElementById("connection");
function connect() {
  const source = new EventSource("/api/v1/live/stream" + (segment ? "?segment=" + encodeURIComponent(segment) : ""));
  source.onopen = () => { connection.dataset.state = "live"; connection.textContent = "live"; };
  source.onmessage = (event) => render(JSON.parse(event.data));
  source.onerror = async () => {
    connection.dataset.state = "reconnecting"; connection.textContent = "reconnecting";
    if (!segment) return;
    // a segment the journeys file does not name is refused (400): say so instead of retrying
    try {
      const response = await fetch("/api/v1/live?segment=" + encodeURIComponent(segment), {credentials: "same-origin"});
      if (response.status === 400) {
        source.close();
        const body = await response.json();
        connection.dataset.state = "refused";
        connection.textContent = body.error || "this segment is refused";
      }
    } catch (e) {
      // the server is away: EventSource keeps reconnecting
    }
  };
}
connect();

// Sign-out: a form posted with this session's CSRF token (GET /api/v1/auth/session).
async function showSession() {
  const who = document.getElementById("who");
  try {
    const response = await fetch("/api/v1/auth/session", {credentials: "same-origin"});
    if (!response.ok) return;
    const session = await response.json();
    who.hidden = false;
    document.getElementById("who-name").textContent = `${session.user} (${session.role})`;
    const form = document.getElementById("signout");
    form.hidden = session.via !== "session";
    form.elements.csrf.value = session.csrf_token || "";
  } catch (e) {
    // the figures do not depend on it
  }
}
showSession();
