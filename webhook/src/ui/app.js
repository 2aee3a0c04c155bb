// Tocsin dashboard: the campaigns page and the campaign page.
// Vanilla JS, no build step. Data comes from /api/v1 with the API key the
// user entered (sessionStorage, or localStorage when asked to remember),
// sent as `Authorization: Bearer`. The live stream is read with fetch() and
// a streaming reader, because EventSource cannot send that header and a key
// in a URL would land in access logs.
"use strict";

const KEY = "tocsin.apiKey";
const OUTCOMES = ["completed", "voicemail", "busy", "no_answer", "rejected", "failed", "unknown", "cancelled", "skipped", "expired"];
const ACTIVE = ["dialing", "placed", "ringing", "answered"];
const WAITING = ["queued", "retry_wait"];
const LABELS = { no_answer: "no answer", retry_wait: "retry wait" };
const MAX_LIVE = 4; // browsers allow six connections per host over HTTP/1.1

const $ = (sel) => document.querySelector(sel);
const label = (s) => LABELS[s] || s;

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function getKey() {
  return sessionStorage.getItem(KEY) || localStorage.getItem(KEY);
}

function forgetKey() {
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
}

class AuthError extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${getKey()}`, Accept: "application/json" },
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) throw new AuthError(body.error ? body.error.message : "unauthorized");
  if (!response.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${response.status}`);
  return body;
}

// Downloads the campaign's calls as CSV: fetched with the key (a plain link
// cannot carry the header), handed to the browser as a file.
async function download(path, filename) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${getKey()}` } });
  if (response.status === 401) throw new AuthError("unauthorized");
  if (!response.ok) throw new Error(`export: HTTP ${response.status}`);
  const url = URL.createObjectURL(await response.blob());
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function showError(e) {
  if (e instanceof AuthError) {
    forgetKey();
    askForKey(e.message);
    return;
  }
  const box = $("#error");
  box.textContent = String(e.message || e);
  box.hidden = false;
}

function askForKey(message) {
  for (const id of ["#campaigns", "#campaign", "#new", "#audit", "#forget-key"]) $(id).hidden = true;
  $("#login").hidden = false;
  const err = $("#login-error");
  err.hidden = !message;
  err.textContent = message ? `That key was refused: ${message}` : "";
  $("#key").focus();
}

// ---- live stream: SSE over fetch ------------------------------------------

// Calls onEvent(type, data) for every event of the campaign's stream and
// reconnects with Last-Event-ID after a drop, so nothing is missed.
function watch(name, onEvent) {
  let lastId = null;
  let stopped = false;
  const controller = new AbortController();
  const state = $("#stream-state");
  const setState = (s) => {
    state.hidden = false;
    state.textContent = s;
    state.className = `pill ${s}`;
  };
  async function run() {
    let delay = 500;
    while (!stopped) {
      try {
        const headers = { Authorization: `Bearer ${getKey()}`, Accept: "text/event-stream" };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const response = await fetch(`/api/v1/campaigns/${encodeURIComponent(name)}/events`, {
          headers,
          signal: controller.signal,
          cache: "no-store",
        });
        if (response.status === 401) throw new AuthError("unauthorized");
        if (!response.ok || !response.body) throw new Error(`stream: HTTP ${response.status}`);
        setState("live");
        delay = 500;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const frame = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let type = "message";
            let data = "";
            let id = null;
            for (const line of frame.split("\n")) {
              if (line.startsWith(":")) continue;
              const colon = line.indexOf(":");
              const field = colon < 0 ? line : line.slice(0, colon);
              const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
              if (field === "event") type = val;
              else if (field === "data") data += val;
              else if (field === "id") id = val;
            }
            if (!data) continue;
            if (id !== null) lastId = id;
            onEvent(type, JSON.parse(data));
          }
        }
      } catch (e) {
        if (stopped || e.name === "AbortError") return;
        if (e instanceof AuthError) return showError(e);
      }
      if (stopped) return;
      setState("reconnecting");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }
  run();
  return () => {
    stopped = true;
    controller.abort();
  };
}

// ---- shared rendering -------------------------------------------------------

function summary(c) {
  const s = c.states || {};
  const sum = (list) => list.reduce((n, k) => n + (s[k] || 0), 0);
  const waiting = sum(WAITING);
  const active = sum(ACTIVE);
  const neverDialled = (s.cancelled || 0) + (s.skipped || 0) + (s.expired || 0);
  return { total: c.total, finished: c.finished, waiting, active, started: c.total - waiting - neverDialled };
}

// A bar of the outcome breakdown: each finished state, then calls in progress.
function progress(c) {
  const box = el("div", { class: "progress" });
  const total = Math.max(c.total, 1);
  const bar = el("div", { class: "bar", title: `${c.finished} of ${c.total} finished` });
  const legend = el("ul", { class: "legend" });
  const parts = OUTCOMES.map((k) => [k, (c.states || {})[k] || 0]);
  parts.push(["active", summary(c).active]);
  for (const [k, n] of parts) {
    if (!n) continue;
    const seg = el("span", { class: `s-${k}`, title: `${label(k)}: ${n}` });
    seg.style.width = `${(100 * n) / total}%`;
    bar.append(seg);
    legend.append(el("li", {}, el("i", { class: `s-${k}` }), `${label(k === "active" ? "in progress" : k)} ${n}`));
  }
  const pct = Math.floor((100 * c.finished) / total);
  box.append(
    bar,
    el("div", { class: "note", text: `${c.finished} of ${c.total} finished (${pct}%)`, "data-finished": String(c.finished) }),
    legend,
  );
  if (c.confirm) box.append(confirmations(c));
  return box;
}

// Who heard and confirmed: a bar of confirmed contacts out of all, with the opt-outs.
function confirmations(c) {
  const total = Math.max(c.total, 1);
  const bar = el("div", { class: "bar confirm", title: `${c.confirmed} of ${c.total} confirmed` });
  const seg = el("span", { class: "s-confirmed" });
  seg.style.width = `${(100 * (c.confirmed || 0)) / total}%`;
  bar.append(seg);
  const pct = Math.floor((100 * (c.confirmed || 0)) / total);
  let text = `${c.confirmed || 0} of ${c.total} confirmed (${pct}%)`;
  if (c.opted_out) text += ` · ${c.opted_out} opted out`;
  if (c.confirmed_late) text += ` · ${c.confirmed_late} after the deadline`;
  if (c.until_confirmed) text += " · redialled until confirmed";
  return el("div", { class: "confirmations" }, bar, el("div", { class: "note", text, "data-confirmed": String(c.confirmed || 0) }));
}

// ---- charts (uPlot, served from /ui/uplot.js) -------------------------------

const COLOURS = {
  completed: "#2e7d32", voicemail: "#00897b", busy: "#ef6c00", no_answer: "#f9a825", rejected: "#c62828",
  failed: "#b71c1c", unknown: "#880e4f", cancelled: "#90a4ae", skipped: "#78909c", expired: "#546e7a",
};

// The campaign over time: attempts started per second against the limit,
// outcomes per bucket, confirmations per bucket and in all. Redrawn from
// /series (the state log) every few seconds while the page is open.
function charts(enc) {
  const made = {};
  function draw(id, data, series, more = {}) {
    if (typeof uPlot === "undefined") return;
    if (made[id]) made[id].destroy();
    const box = $(id);
    const opts = {
      width: Math.max(300, box.clientWidth || 320),
      height: 180,
      scales: { x: { time: true } },
      series: [{}, ...series],
      ...more,
    };
    made[id] = new uPlot(opts, data, box);
  }
  // "≤15 s", "≤2 min", …, "> 1 h": the histogram's bucket names.
  const span = (secs) => (secs < 60 ? `${secs} s` : secs < 3600 ? `${secs / 60} min` : `${secs / 3600} h`);
  return async function refresh() {
    const s = await api(`/api/v1/campaigns/${enc}/series`);
    if (s.start == null) return;
    const n = Math.max(1, ...Object.values(s.series).map((a) => a.length));
    const x = Array.from({ length: n }, (_, i) => s.start + i * s.step_secs);
    const zeros = new Array(n).fill(0);
    const perSecond = (a) => (a || zeros).map((v) => v / s.step_secs);
    const rate = [x, perSecond(s.series.dialing)];
    const rateSeries = [{ label: "started / s", stroke: "#1565c0", width: 2 }];
    if (s.limit) {
      rate.push(new Array(n).fill(s.limit));
      rateSeries.push({ label: "limit", stroke: "#c62828", dash: [6, 4], width: 1 });
      $("#limit-note").textContent = `limit ${s.limit} / s`;
    }
    draw("#chart-rate", rate, rateSeries);
    const outcomes = OUTCOMES.filter((k) => s.series[k]);
    draw(
      "#chart-outcomes",
      [x, ...outcomes.map((k) => s.series[k])],
      outcomes.map((k) => ({ label: label(k), stroke: COLOURS[k] || "#455a64", width: 2 })),
    );
    if (s.series.confirmed || s.series.opted_out) {
      $("#chart-confirm-box").hidden = false;
      const confirmed = s.series.confirmed || zeros;
      let sum = 0;
      const total = confirmed.map((v) => (sum += v));
      draw("#chart-confirm", [x, confirmed, total], [
        { label: "confirmed", stroke: "#6a1b9a", width: 2 },
        { label: "confirmed in all", stroke: "#ab47bc", dash: [4, 3], width: 1 },
      ]);
    }
    const ttc = s.time_to_confirm;
    if (ttc) {
      $("#chart-ttc-box").hidden = false;
      const names = [...ttc.bounds_secs.map((b) => `≤ ${span(b)}`), `> ${span(ttc.bounds_secs[ttc.bounds_secs.length - 1])}`];
      const xs = names.map((_, i) => i);
      draw("#chart-ttc", [xs, ttc.counts], [
        { label: "contacts", stroke: "#6a1b9a", fill: "#ce93d8", paths: uPlot.paths.bars({ size: [0.8] }), points: { show: false } },
      ], {
        scales: { x: { time: false, range: [-0.5, names.length - 0.5] } },
        axes: [{ values: (_, ticks) => ticks.map((t) => names[t] || ""), splits: () => xs }, {}],
      });
    }
  };
}

// ---- campaigns page ---------------------------------------------------------

async function campaignsPage() {
  $("#campaigns").hidden = false;
  const list = $("#campaign-list");
  const cards = new Map();
  const live = new Map();
  const card = (c) => {
    const node = el(
      "div",
      { class: "card", "data-campaign": c.name },
      el(
        "h2",
        {},
        el("a", { href: `/ui/campaigns/${encodeURIComponent(c.name)}`, text: c.name }),
        " ",
        el("span", { class: `pill ${c.status}`, text: c.status }),
        " ",
        el("span", { class: "note", text: c.route || c.provider }),
      ),
      progress(c),
    );
    const old = cards.get(c.name);
    if (old) old.replaceWith(node);
    else list.append(node);
    cards.set(c.name, node);
  };
  async function refresh() {
    const { campaigns } = await api("/api/v1/campaigns");
    if (!campaigns.length) list.replaceChildren(el("p", { class: "note", text: "No campaigns yet." }));
    for (const c of campaigns) {
      if (!live.has(c.name)) card(c);
      const running = c.status !== "cancelled" && c.finished < c.total;
      if (running && !live.has(c.name) && live.size < MAX_LIVE) {
        live.set(
          c.name,
          watch(c.name, (type, data) => {
            if (type === "counts") card(data);
          }),
        );
      }
    }
  }
  await refresh();
  setInterval(() => refresh().catch(showError), 15000);
  await accounts();
  setInterval(() => accounts().catch(showError), 5000);
}

/** The provider accounts' table: health, rate in use, lines in use. */
async function accounts() {
  const { accounts, shared_state } = await api("/api/v1/accounts");
  const list = $("#account-list");
  if (!accounts.length) {
    list.replaceChildren(el("p", { class: "note", text: "No provider account is configured on this service." }));
    return;
  }
  const number = (v, digits = 1) => (v === undefined || v === null ? "–" : Number(v).toFixed(digits));
  const rows = accounts.map((a) =>
    el(
      "tr",
      { "data-account": a.account },
      el("td", { text: a.account }),
      el("td", {}, el("span", { class: `pill ${a.state}`, text: a.state.replace("_", "-") })),
      el("td", { text: `${number(a.rate_in_use_per_sec)} of ${a.rate} (${number(a.rate_per_sec)}/s)` }),
      el("td", { text: a.max_concurrent ? `${a.lines_in_use ?? "–"} of ${a.max_concurrent}` : "no cap" }),
      el("td", { text: a.failures_in_window ?? "–" }),
    ),
  );
  const head = el(
    "tr",
    {},
    ...["Account", "State", "Calls/s in use", "Lines in use", "Recent failures"].map((t) => el("th", { text: t })),
  );
  const nodes = [el("table", { id: "accounts-table" }, el("thead", {}, head), el("tbody", {}, ...rows))];
  if (!shared_state) nodes.unshift(el("p", { class: "error", text: "Redis cannot be read: the accounts' state is unknown." }));
  list.replaceChildren(...nodes);
}

// ---- campaign page ----------------------------------------------------------

async function campaignPage(name) {
  $("#campaign").hidden = false;
  const enc = encodeURIComponent(name);
  const rows = new Map();
  let chosen = null;

  function showCounts(c) {
    const status = $("#campaign-status");
    status.textContent = c.status;
    status.className = `pill ${c.status}`;
    $("#campaign-route").textContent = c.route ? `through ${c.route}` : "";
    $("#campaign-progress").replaceChildren(progress(c));
    const s = summary(c);
    $("#count-total").textContent = s.total;
    $("#count-started").textContent = s.started;
    $("#count-active").textContent = s.active;
    $("#count-finished").textContent = s.finished;
    $("#count-waiting").textContent = s.waiting;
    for (const id of ["#count-confirmed-box", "#count-opted-out-box"]) $(id).hidden = !c.confirm;
    $("#not-confirmed-box").hidden = !c.confirm;
    $("#count-confirmed").textContent = c.confirmed || 0;
    $("#count-opted-out").textContent = c.opted_out || 0;
    $("#pause").disabled = c.status !== "active";
    $("#resume").disabled = c.status !== "paused";
    $("#cancel").disabled = c.status === "cancelled";
  }

  function row(call) {
    const tr = el(
      "tr",
      { "data-call": call.id },
      el("td", { text: call.number }),
      el("td", { class: "state", text: label(call.state) }),
      el("td", { class: "attempt", text: String(call.attempt) }),
      el("td", { class: "confirmed", text: confirmedText(call) }),
      el("td", { class: "updated", text: new Date(call.updated_at).toLocaleTimeString() }),
    );
    tr.addEventListener("click", () => timeline(call.id, tr));
    rows.set(call.id, tr);
    return tr;
  }

  function confirmedText(call) {
    if (call.opted_out_at) return "opted out";
    if (!call.confirmed_at) return "–";
    const at = new Date(call.confirmed_at).toLocaleTimeString();
    return `${at} (key ${call.confirmed_key}, attempt ${call.confirmed_attempt})${call.confirmed_late ? " late" : ""}`;
  }

  let after = null;
  async function moreCalls() {
    let q = after ? `?limit=100&after=${encodeURIComponent(after)}` : "?limit=100";
    if ($("#not-confirmed").checked) q += "&confirmed=false";
    const page = await api(`/api/v1/campaigns/${enc}/calls${q}`);
    $("#calls tbody").append(...page.calls.map(row));
    after = page.next_after;
    $("#more-calls").hidden = !after;
  }

  async function timeline(id, tr) {
    if (chosen) chosen.classList.remove("chosen");
    chosen = tr;
    tr.classList.add("chosen");
    const t = await api(`/api/v1/campaigns/${enc}/calls/${id}`);
    const c = t.call;
    const body = $("#timeline-body");
    const states = el("ol", {}, ...t.states.map((s) => el("li", { text: `${new Date(s.at).toLocaleTimeString()} — ${label(s.state)}` })));
    const events = el(
      "ol",
      {},
      ...t.events.map((e) =>
        el("li", {
          text: `${new Date(e.occurred_at || e.received_at).toLocaleTimeString()} — ${e.provider} ${e.provider_status}` +
            (e.state ? ` → ${label(e.state)}` : "") + (e.attempt ? ` (attempt ${e.attempt})` : ""),
        }),
      ),
    );
    const facts = [`number ${c.number}`, `state ${label(c.state)}`, `attempt ${c.attempt}`];
    if (c.confirmed_at || c.opted_out_at) facts.push(confirmedText(c) === "opted out" ? "opted out" : `confirmed ${confirmedText(c)}`);
    if (c.duration_secs != null) facts.push(`talked ${c.duration_secs} s`);
    if (c.error_code) facts.push(`error ${c.error_code}${c.error_detail ? `: ${c.error_detail}` : ""}`);
    body.replaceChildren(
      el("p", { text: facts.join(" · ") }),
      el("h3", { text: "States" }),
      t.states.length ? states : el("p", { class: "note", text: "No state changes yet." }),
      el("h3", { text: "Provider events" }),
      t.events.length ? events : el("p", { class: "note", text: "No provider events yet." }),
    );
  }

  async function control(action) {
    if (action === "cancel" && !confirm(`Cancel every call of ${name} not yet placed?`)) return;
    const result = $("#control-result");
    result.textContent = `${action}…`;
    try {
      const r = await api(`/api/v1/campaigns/${enc}/${action}`, { method: "POST" });
      showCounts(r.campaign);
      result.textContent = r.changed ? `${action}: done` : `${action}: nothing to change`;
    } catch (e) {
      result.textContent = "";
      showError(e);
    }
  }
  for (const action of ["pause", "resume", "cancel"]) $(`#${action}`).addEventListener("click", () => control(action));
  $("#export").addEventListener("click", () => download(`/api/v1/campaigns/${enc}/calls.csv`, `${name}-calls.csv`).catch(showError));
  $("#more-calls").addEventListener("click", () => moreCalls().catch(showError));
  $("#not-confirmed").addEventListener("change", () => {
    after = null;
    rows.clear();
    $("#calls tbody").replaceChildren();
    moreCalls().catch(showError);
  });

  const first = await api(`/api/v1/campaigns/${enc}`);
  showCounts(first);
  await moreCalls();
  // The series is read from the whole state log: a big campaign's is redrawn less often.
  const redraw = charts(enc);
  redraw().catch(showError);
  setInterval(() => redraw().catch(showError), first.total > 100000 ? 30000 : 5000);
  watch(name, (type, data) => {
    if (type === "counts") showCounts(data);
    else if (type === "deleted") showError(new Error("this campaign was deleted"));
    else if (type === "confirmation") {
      const tr = rows.get(data.call_id);
      if (!tr) return;
      if ($("#not-confirmed").checked && data.reply === "confirmed") {
        tr.remove();
        rows.delete(data.call_id);
        return;
      }
      const when = new Date(data.at).toLocaleTimeString();
      tr.querySelector(".confirmed").textContent = data.reply === "confirmed" ? when : "opted out";
      tr.classList.remove("flash");
      void tr.offsetWidth;
      tr.classList.add("flash");
    }
    else if (type === "call") {
      const tr = rows.get(data.call_id);
      if (!tr) return;
      tr.querySelector(".state").textContent = label(data.state);
      tr.querySelector(".updated").textContent = new Date(data.at).toLocaleTimeString();
      tr.classList.remove("flash");
      void tr.offsetWidth; // restart the highlight
      tr.classList.add("flash");
      if (tr === chosen) timeline(data.call_id, tr).catch(showError);
    }
  });
}

// ---- new broadcast ----------------------------------------------------------

// The launch form: contacts are checked first (an upload or pasted numbers
// become a saved list through PUT /api/v1/lists/<name>, streamed from the
// file, its rejected lines shown), then a dry run says how many would be
// called and how the first hear the message, then the launch asks to
// confirm with that number.
async function newPage() {
  $("#new").hidden = false;
  const report = $("#contacts-report");
  let checkedList = null; // the saved list the campaign will call
  const lists = await api("/api/v1/lists").catch(() => ({ lists: [] }));
  $("#contacts-list").replaceChildren(
    ...lists.lists.map((l) => el("option", { value: l.name, text: `${l.name} (${l.contacts} contacts)` })),
  );
  const source = () => document.querySelector("input[name=source]:checked").value;
  const rejectedTable = (rows) =>
    el(
      "table",
      { class: "rejected" },
      el("thead", {}, el("tr", {}, el("th", { text: "Line" }), el("th", { text: "Value" }), el("th", { text: "Reason" }))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, el("td", { text: String(r.line) }), el("td", { text: r.number }), el("td", { text: r.detail })))),
    );

  // Sends a body to PUT /api/v1/lists/<name> with upload progress (XHR: a
  // File is streamed from disk, never read whole into the page).
  function upload(name, body, filename) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      const q = `?filename=${encodeURIComponent(filename)}`;
      xhr.open("PUT", `/api/v1/lists/${encodeURIComponent(name)}${q}`);
      xhr.setRequestHeader("Authorization", `Bearer ${getKey()}`);
      const bar = $("#upload-progress");
      bar.hidden = false;
      bar.value = 0;
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
      xhr.onload = () => {
        bar.value = 1;
        let answer = {};
        try { answer = JSON.parse(xhr.responseText); } catch (_) {}
        if (xhr.status === 401) reject(new AuthError("unauthorized"));
        else if (xhr.status >= 400) reject(new Error(answer.error ? `${answer.error.code}: ${answer.error.message}` : `HTTP ${xhr.status}`));
        else resolve(answer);
      };
      xhr.onerror = () => reject(new Error("the upload failed"));
      xhr.send(body);
    });
  }

  $("#check-contacts").addEventListener("click", async () => {
    report.textContent = "checking…";
    checkedList = null;
    $("#launch").disabled = true;
    try {
      const campaign = $("#f-name").value.trim() || "broadcast";
      if (source() === "list") {
        checkedList = $("#contacts-list").value;
        report.replaceChildren(el("p", { text: `saved list ${checkedList}: checked again against do-not-call when launched` }));
        return;
      }
      const listName = `${campaign}-contacts`;
      let answer;
      if (source() === "upload") {
        const file = $("#contacts-file").files[0];
        if (!file) throw new Error("choose a file first");
        answer = await upload(listName, file, file.name);
      } else {
        const text = "number\n" + $("#contacts-paste").value.split(/\r?\n/).map((l) => l.trim()).filter(Boolean).join("\n") + "\n";
        answer = await upload(listName, new Blob([text], { type: "text/csv" }), "pasted.csv");
      }
      checkedList = listName;
      const l = answer.list;
      const parts = [el("p", { class: "ok", text: `${l.saved} contacts ready (list ${listName}); ${answer.rejected_total} lines rejected` })];
      if (answer.rejected.length) parts.push(rejectedTable(answer.rejected));
      report.replaceChildren(...parts);
    } catch (e) {
      report.textContent = "";
      showError(e);
    }
  });

  function body(dryRun) {
    const v = (id) => $(id).value.trim();
    const b = { name: v("#f-name"), contact_list: checkedList, dry_run: dryRun };
    if (v("#f-message")) b.message = v("#f-message");
    if (v("#f-audio")) b.audio_url = v("#f-audio");
    if (v("#f-from")) b.from = v("#f-from");
    if (v("#f-provider")) b.provider = v("#f-provider");
    if (v("#f-route")) b.route = v("#f-route");
    if (v("#f-language")) b.language = v("#f-language");
    if (v("#f-voice")) b.voice = v("#f-voice");
    b.confirm = $("#f-confirm").checked;
    b.until_confirmed = $("#f-confirm").checked && $("#f-until").checked;
    b.max_attempts = Number($("#f-attempts").value || 1);
    b.retry_delay_secs = Math.round(Number($("#f-retry").value || 0) * 60);
    if (v("#f-expires")) b.expires_in = v("#f-expires");
    if (v("#f-voicemail") !== "ignore") b.voicemail = v("#f-voicemail");
    if (v("#f-window")) b.window = v("#f-window");
    if (v("#f-timezone")) b.timezone = v("#f-timezone");
    if (v("#f-start")) b.start_at = new Date(v("#f-start")).toISOString();
    return b;
  }

  let wouldCall = 0;
  $("#preview").addEventListener("click", async () => {
    $("#launch").disabled = true;
    try {
      if (!checkedList) throw new Error("check the contacts first");
      const r = await api("/api/v1/campaigns", { method: "POST", body: JSON.stringify(body(true)), headers: { "Content-Type": "application/json" } });
      const e = r.enqueue;
      wouldCall = e.new_contacts;
      const parts = [el("p", { class: "ok", text: `${e.new_contacts} people would be called (${e.already_enqueued} already in the campaign, ${e.do_not_call} on the do-not-call list, ${e.invalid} cannot hear this message)` })];
      const audio = $("#f-audio").value.trim();
      const previews = e.preview.length && !audio ? e.preview : [];
      for (const p of previews) parts.push(el("p", { class: "note", text: `line ${p.line} (${p.number}) hears: ${p.text}` }));
      if (audio) parts.push(el("p", { class: "note", text: `everyone hears the recording ${audio}` }));
      else if (!previews.length) parts.push(el("p", { class: "note", text: `everyone hears: ${$("#f-message").value.trim()}` }));
      if (e.rejected.length) parts.push(rejectedTable(e.rejected));
      $("#preview-report").replaceChildren(...parts);
      $("#launch").disabled = wouldCall === 0;
    } catch (err) {
      showError(err);
    }
  });

  $("#new-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!confirm(`Call ${wouldCall} people now?`)) return;
    try {
      const r = await api("/api/v1/campaigns", { method: "POST", body: JSON.stringify(body(false)), headers: { "Content-Type": "application/json" } });
      $("#launch-result").textContent = `launched: ${r.enqueue.published} calls queued`;
      location.assign(`/ui/campaigns/${encodeURIComponent(r.campaign.name)}`);
    } catch (err) {
      showError(err);
    }
  });
}

// ---- audit log ----------------------------------------------------------------

async function auditPage() {
  $("#audit").hidden = false;
  async function show() {
    const q = new URLSearchParams({ limit: "500" });
    const campaign = $("#audit-campaign").value.trim();
    if (campaign) q.set("campaign", campaign);
    const hours = $("#audit-since").value;
    if (hours) q.set("since", new Date(Date.now() - Number(hours) * 3600e3).toISOString());
    const { entries } = await api(`/api/v1/audit?${q}`);
    $("#audit-table tbody").replaceChildren(
      ...entries.map((e) =>
        el(
          "tr",
          {},
          el("td", { text: new Date(e.at).toLocaleString() }),
          el("td", { text: e.action }),
          el("td", { text: `${e.actor} (${e.via})` }),
          el("td", { text: e.client || "–" }),
          el("td", { text: e.campaign || "–" }),
          el("td", { class: "details", text: JSON.stringify(e.details) }),
        ),
      ),
    );
    if (!entries.length) $("#audit-table tbody").append(el("tr", {}, el("td", { text: "No actions recorded." })));
  }
  $("#audit-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    show().catch(showError);
  });
  await show();
}

// ---- start ------------------------------------------------------------------

function start() {
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("#key").value.trim();
    if (!key) return;
    forgetKey();
    ($("#remember").checked ? localStorage : sessionStorage).setItem(KEY, key);
    location.reload();
  });
  $("#forget-key").addEventListener("click", () => {
    forgetKey();
    location.reload();
  });
  if (!getKey()) return askForKey();
  $("#forget-key").hidden = false;
  const page = document.body.dataset.page;
  const run =
    page === "campaign"
      ? campaignPage(document.body.dataset.campaign)
      : page === "new"
        ? newPage()
        : page === "audit"
          ? auditPage()
          : campaignsPage();
  run.catch(showError);
}

start();
