// The events page: search and filters, a chart of /events/histogram, pages of /events (one
// line per event, expandable), and "follow" over /events/stream.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_ROWS = 500;     // rows kept on screen while following
  const MAX_HELD = 5000;    // events kept while paused (all are counted)

  const state = {
    // Kept in this page's memory only: a reload asks again, and no storage of the browser
    // ever holds it.
    token: "",
    tenant: "",             // X-Scope-OrgID, when the token holds several tenants
    pages: [],              // URLs of the pages shown so far (for "previous")
    next: null,             // URL of the next page, from the Link header
    following: false,
    paused: false,
    held: [],               // events that arrived while paused
    heldCount: 0,
    stream: null,           // AbortController of the running stream
    lastEventId: "",
    loads: 0,               // numbers page requests; only the newest renders
    charts: 0,              // the same for the chart
    order: "desc",          // newest first
    chart: null,            // the histogram shown: {start, width, counts}
  };

  function status(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    if (state.token) h.Authorization = "Bearer " + state.token;
    if (state.tenant) h["X-Scope-OrgID"] = state.tenant;
    return h;
  }

  // A failed answer as a message for people; a 401 asks for the token.
  async function refusal(resp) {
    let message = resp.status + " " + resp.statusText;
    try { message = (await resp.json()).error || message; } catch (e) { /* not JSON */ }
    if (resp.status === 401 || resp.status === 403) {
      $("token-box").hidden = false;
      $("token").focus();
      return (resp.status === 401 ? "This service needs a read token: "
        : "This token may not read here: ") + message;
    }
    return message;
  }

  function isoFromInput(input) {
    if (!input.value) return "";
    const utc = $("utc").checked;
    const d = new Date(utc ? input.value + "Z" : input.value);
    return isNaN(d) ? "" : d.toISOString();
  }

  function filters() {
    const f = {};
    for (const name of ["q", "topic", "event_id", "source"]) {
      const v = $(name).value.trim();
      if (v) f[name] = v;
    }
    return f;
  }

  function query(extra) {
    const params = new URLSearchParams(Object.assign(filters(), extra || {}));
    return params.toString();
  }

  function formatTime(ts) {
    const d = new Date(ts);
    if (isNaN(d)) return ts;
    if ($("utc").checked) return d.toISOString().replace(".000Z", "Z");
    return d.toLocaleString(undefined, { hour12: false }) + "." +
      String(d.getMilliseconds()).padStart(3, "0");
  }

  // One line for an event given as its raw JSON text: time, topic, source and the payload on
  // one line; Enter or a click shows it pretty-printed below, with a copy button.
  function row(raw, live) {
    const e = JSON.parse(raw);
    const payload = RawJSON.members(raw).payload || "{}";
    const ev = document.createElement("div");
    ev.className = live ? "ev live" : "ev";
    ev.setAttribute("role", "listitem");
    ev.tabIndex = 0;
    ev.setAttribute("aria-expanded", "false");
    ev.dataset.eventId = e.event_id;
    ev.dataset.ts = e.timestamp;
    ev._payload = payload;
    ev._event = e;
    const line = document.createElement("div");
    line.className = "line";
    const cells = [["ts", formatTime(e.timestamp)], ["topic", e.topic], ["source", e.source],
      ["payload", payload.length > 400 ? payload.slice(0, 400) + "…" : payload]];
    for (const [cls, text] of cells) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      line.appendChild(span);
    }
    line.title = e.timestamp + "  " + e.topic + "  " + e.event_id;
    line.addEventListener("click", () => toggle(ev));
    ev.appendChild(line);
    return ev;
  }

  function toggle(ev) {
    const open = ev.getAttribute("aria-expanded") !== "true";
    ev.setAttribute("aria-expanded", String(open));
    let detail = ev.querySelector(".detail");
    if (!open) { if (detail) detail.remove(); return; }
    const e = ev._event;
    const pretty = RawJSON.pretty(ev._payload);
    detail = document.createElement("div");
    detail.className = "detail";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = "event id " + e.event_id + " · " + e.timestamp + " · topic " + e.topic +
      " · source " + e.source;
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy payload";
    copy.addEventListener("click", (click) => { click.stopPropagation(); copyText(pretty, copy); });
    meta.appendChild(copy);
    const pre = document.createElement("pre");
    pre.textContent = pretty;
    detail.append(meta, pre);
    ev.appendChild(detail);
  }

  async function copyText(text, button) {
    let done = false;
    try {
      await navigator.clipboard.writeText(text);
      done = true;
    } catch (e) {
      // No clipboard API here (plain http on another host, or no permission): the old way.
      const area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { done = document.execCommand("copy"); } catch (e2) { done = false; }
      area.remove();
    }
    button.textContent = done ? "Copied" : "Copy failed: select the text instead";
    setTimeout(() => { button.textContent = "Copy payload"; }, 2000);
  }

  function render(raws) {
    const body = $("rows");
    body.textContent = "";
    for (const raw of raws) body.appendChild(row(raw, false));
  }

  // ----- the chart: /events/histogram --------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";

  function rangeQuery() {
    const extra = {};
    const since = isoFromInput($("since")), until = isoFromInput($("until"));
    if (since) extra.since = since;
    if (until) extra.until = until;
    return extra;
  }

  async function loadChart() {
    const ticket = ++state.charts;
    let resp;
    try {
      resp = await fetch("events/histogram?" + query(rangeQuery()), { headers: headers() });
    } catch (e) { return; }
    if (ticket !== state.charts) return;
    if (!resp.ok) { $("chart-caption").textContent = await refusal(resp); return; }
    const h = await resp.json();
    if (ticket !== state.charts) return;
    state.chart = {
      start: Date.parse(h.since), width: h.interval * 1000,
      counts: h.buckets.map((b) => b.count),
    };
    drawChart();
  }

  function widthText(ms) {
    const s = ms / 1000;
    if (s % 86400 === 0) return s / 86400 + " d";
    if (s % 3600 === 0) return s / 3600 + " h";
    if (s % 60 === 0) return s / 60 + " min";
    return s + " s";
  }

  function drawChart() {
    const c = state.chart, box = $("chart");
    box.textContent = "";
    if (!c) return;
    const n = c.counts.length, max = Math.max(1, ...c.counts);
    const total = c.counts.reduce((a, b) => a + b, 0);
    $("chart-caption").textContent = total.toLocaleString() + " event(s) from " +
      formatTime(new Date(c.start).toISOString()) + " to " +
      formatTime(new Date(c.start + n * c.width).toISOString()) + ", one bar per " +
      widthText(c.width) + ": click a bar to zoom in";
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + n + " 100");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "events per " + widthText(c.width));
    c.counts.forEach((count, i) => {
      const from = new Date(c.start + i * c.width).toISOString();
      const title = document.createElementNS(SVG, "title");
      title.textContent = count + " event(s) from " + formatTime(from);
      // A transparent full-height target, so that short bars are as easy to click as tall ones.
      const hit = document.createElementNS(SVG, "rect");
      hit.setAttribute("class", "hit");
      hit.setAttribute("x", i); hit.setAttribute("y", 0);
      hit.setAttribute("width", 1); hit.setAttribute("height", 100);
      hit.dataset.start = from;
      hit.appendChild(title);
      const h = count ? Math.max(2, (count / max) * 100) : 0;
      const bar = document.createElementNS(SVG, "rect");
      bar.setAttribute("class", "b");
      bar.setAttribute("x", i + 0.1); bar.setAttribute("y", 100 - h);
      bar.setAttribute("width", 0.8); bar.setAttribute("height", h);
      bar.dataset.start = from;
      bar.dataset.count = count;
      bar.appendChild(title.cloneNode(true));
      for (const el of [hit, bar]) el.addEventListener("click", () => zoomTo(i));
      svg.append(hit, bar);
    });
    box.appendChild(svg);
  }

  function inputValue(ms) {
    // datetime-local wants local wall time (or UTC with the box ticked), to the second.
    const d = new Date(ms);
    if ($("utc").checked) return d.toISOString().slice(0, 19);
    const local = new Date(ms - d.getTimezoneOffset() * 60000);
    return local.toISOString().slice(0, 19);
  }

  function zoomTo(i) {
    const c = state.chart;
    if (!c || state.following) return;
    $("since").value = inputValue(c.start + i * c.width);
    $("until").value = inputValue(c.start + (i + 1) * c.width);
    restart();
  }

  // A live event counts in its bar; past the last one, the chart moves on (an open range).
  function chartAdd(ts) {
    const c = state.chart;
    const t = Date.parse(ts);
    if (!c || isNaN(t) || t < c.start) return;
    let i = Math.floor((t - c.start) / c.width);
    if (i >= c.counts.length) {
      if (isoFromInput($("until"))) return;
      const shift = i - c.counts.length + 1;
      if (shift >= c.counts.length) { c.counts = c.counts.map(() => 0); }
      else { c.counts = c.counts.slice(shift).concat(new Array(shift).fill(0)); }
      c.start += shift * c.width;
      i = c.counts.length - 1;
    }
    c.counts[i]++;
    drawChart();
  }

  // ----- pages of /events -------------------------------------------------------------------

  async function loadPage(url) {
    // Filters can change while a page is on its way: only the newest request may render, or a
    // slow answer for the old filter would replace the rows of the new one.
    const ticket = ++state.loads;
    status("Loading…");
    let resp, text;
    try {
      resp = await fetch(url, { headers: headers() });
      text = resp.ok ? await resp.text() : "";
    } catch (e) {
      if (ticket === state.loads) status("The read API does not answer: " + e.message, true);
      return false;
    }
    if (ticket !== state.loads) return false;
    if (!resp.ok) { status(await refusal(resp), true); return false; }
    const raws = RawJSON.splitArray(text);
    render(raws);
    const link = resp.headers.get("Link") || "";
    const m = link.match(/<([^>]+)>;\s*rel="next"/);
    state.next = m ? m[1] : null;
    $("next").disabled = !state.next;
    $("prev").disabled = state.pages.length < 2;
    $("pageno").textContent = "page " + state.pages.length;
    status(raws.length ? raws.length + " event(s)" + (state.next ? "; more on the next page" : "")
      : "No events match.");
    return true;
  }

  function firstPage() {
    const extra = rangeQuery();
    if (state.order === "desc") extra.order = "desc";
    const url = "events?" + query(extra);
    state.pages = [url];
    loadChart();
    return loadPage(url);
  }

  function nextPage() {
    if (!state.next || state.following) return;
    // The Link header is absolute-path; keep it relative to where the page is served.
    const url = state.next.replace(/^\//, "");
    state.pages.push(url);
    loadPage(url);
  }

  function prevPage() {
    if (state.pages.length < 2 || state.following) return;
    state.pages.pop();
    loadPage(state.pages[state.pages.length - 1]);
  }

  async function loadTopics() {
    try {
      const resp = await fetch("stats", { headers: headers() });
      if (!resp.ok) { status(await refusal(resp), true); return; }
      const stats = await resp.json();
      const select = $("topic"), chosen = select.value;
      select.length = 1;
      for (const t of stats.topics || []) {
        const opt = document.createElement("option");
        opt.value = opt.textContent = t;
        select.appendChild(opt);
      }
      select.value = chosen;
      if (stats.topics_truncated) {
        select.title = "showing " + stats.topics.length + " of " + stats.topic_count + " topics";
      }
    } catch (e) {
      status("The read API does not answer: " + e.message, true);
    }
  }

  // ----- follow: /events/stream ---------------------------------------------------------------

  function addLive(raw) {
    if (state.paused) {
      state.heldCount++;
      state.held.push(raw);
      if (state.held.length > MAX_HELD) state.held.shift();
      $("held").textContent = String(state.heldCount);
      return;
    }
    const body = $("rows");
    const ev = row(raw, true);
    body.insertBefore(ev, body.firstChild);
    while (body.children.length > MAX_ROWS) body.lastChild.remove();
    chartAdd(ev.dataset.ts);
  }

  // Reads one SSE response; returns when it ends. Calls onEvent(type, data, id).
  async function readSSE(resp, onEvent) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r\n\r\n|\n\n|\r\r/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^(\r\n\r\n|\n\n|\r\r)/, "");
        let type = "message", data = [], id = null;
        for (const line of block.split(/\r\n|\n|\r/)) {
          if (!line || line.startsWith(":")) continue;   // heartbeat
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") type = val;
          else if (field === "data") data.push(val);
          else if (field === "id") id = val;
        }
        if (data.length) onEvent(type, data.join("\n"), id);
      }
    }
  }

  async function follow() {
    const controller = new AbortController();
    state.stream = controller;
    const since = isoFromInput($("since"));
    let attempt = 0;
    while (state.following && state.stream === controller) {
      const extra = {};
      if (since && !state.lastEventId) extra.since = since;
      const h = headers({ Accept: "text/event-stream" });
      if (state.lastEventId) h["Last-Event-ID"] = state.lastEventId;
      let ended = "";
      try {
        const resp = await fetch("events/stream?" + query(extra),
          { headers: h, signal: controller.signal, cache: "no-store" });
        if (!resp.ok) {
          const message = await refusal(resp);
          status(message, true);
          if (resp.status === 400 || resp.status === 401) { stopFollowing(); return; }
        } else {
          attempt = 0;
          status("Following live" + (filters().topic ? " (topic " + filters().topic + ")" : "") +
            ": new events appear at the top.");
          await readSSE(resp, (type, data, id) => {
            if (type === "message") {
              if (id) state.lastEventId = id;
              addLive(data);
            } else {
              try { ended = JSON.parse(data).error; } catch (e) { ended = data; }
            }
          });
        }
      } catch (e) {
        if (controller.signal.aborted) return;
        ended = "the stream was interrupted (" + e.message + ")";
      }
      if (!state.following || state.stream !== controller) return;
      attempt++;
      const wait = Math.min(1000 * attempt, 10000);
      status((ended || "the stream ended") + "; reconnecting in " + wait / 1000 + " s…", true);
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  function startFollowing() {
    state.following = true;
    state.lastEventId = "";
    $("follow").setAttribute("aria-pressed", "true");
    $("follow").textContent = "Stop following";
    $("pause").disabled = false;
    $("prev").disabled = $("next").disabled = true;
    $("until").disabled = true;
    state.loads++;          // a page still on its way must not replace the live rows
    $("rows").textContent = "";
    loadChart();
    follow();
  }

  function stopFollowing() {
    state.following = false;
    if (state.stream) state.stream.abort();
    state.stream = null;
    setPaused(false);
    $("follow").setAttribute("aria-pressed", "false");
    $("follow").textContent = "Follow live";
    $("pause").disabled = true;
    $("until").disabled = false;
    firstPage();
  }

  function setPaused(paused) {
    state.paused = paused;
    $("pause").setAttribute("aria-pressed", String(paused));
    $("pause").textContent = paused ? "Resume" : "Pause";
    $("paused").hidden = !paused;
    document.body.classList.toggle("is-paused", paused);
    if (!paused) {
      const held = state.held;
      state.held = [];
      state.heldCount = 0;
      $("held").textContent = "0";
      for (const raw of held) addLive(raw);
    }
  }

  function clearRows() {
    $("rows").textContent = "";
    state.held = [];
    state.heldCount = 0;
    $("held").textContent = "0";
    status("Cleared.");
  }

  function setOrder(order) {
    state.order = order;
    const b = $("order");
    b.dataset.order = order;
    b.textContent = order === "desc" ? "Newest first" : "Oldest first";
    if (!state.following) firstPage();
  }

  // j / k: the next or previous event line.
  function move(step) {
    const lines = Array.from($("rows").children);
    if (!lines.length) return;
    const at = lines.indexOf(document.activeElement);
    const to = at < 0 ? 0 : Math.min(lines.length - 1, Math.max(0, at + step));
    lines[to].focus();
    lines[to].scrollIntoView({ block: "nearest" });
  }

  function restart() {
    if (state.following) { state.stream && state.stream.abort(); startFollowing(); }
    else firstPage();
  }

  // ----- wiring ------------------------------------------------------------------------------

  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); restart(); });
  $("topic").addEventListener("change", restart);
  $("utc").addEventListener("change", restart);
  $("follow").addEventListener("click", () => (state.following ? stopFollowing() : startFollowing()));
  $("pause").addEventListener("click", () => setPaused(!state.paused));
  $("clear").addEventListener("click", clearRows);
  $("order").addEventListener("click", () => setOrder(state.order === "desc" ? "asc" : "desc"));
  $("whole-range").addEventListener("click", () => {
    $("since").value = $("until").value = "";
    restart();
  });
  $("rows").addEventListener("keydown", (ev) => {
    const line = ev.target.closest && ev.target.closest(".ev");
    if (line && ev.target === line && (ev.key === "Enter" || ev.key === " ")) {
      ev.preventDefault();
      toggle(line);
    }
  });
  $("next").addEventListener("click", nextPage);
  $("prev").addEventListener("click", prevPage);
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    state.tenant = $("tenant").value.trim();
    $("token-box").hidden = true;
    loadTopics();
    restart();
  });

  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement ||
        t instanceof HTMLTextAreaElement) {
      if (ev.key === "Escape") t.blur();
      return;
    }
    const keys = {
      "/": () => $("q").focus(),
      j: () => move(1),
      k: () => move(-1),
      o: () => $("order").click(),
      f: () => $("follow").click(),
      p: () => { if (state.following) $("pause").click(); },
      n: nextPage,
      b: prevPage,
      c: clearRows,
    };
    const act = keys[ev.key];
    if (act) { ev.preventDefault(); act(); }
  });

  loadTopics();
  firstPage();
})();
