// The events page: filters, pages of /events, and "follow" over /events/stream.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_ROWS = 500;     // rows kept on screen while following
  const MAX_HELD = 5000;    // events kept while paused (all are counted)

  const state = {
    token: sessionStorage.getItem("pubsub-read-token") || "",
    pages: [],              // URLs of the pages shown so far (for "previous")
    next: null,             // URL of the next page, from the Link header
    following: false,
    paused: false,
    held: [],               // events that arrived while paused
    heldCount: 0,
    stream: null,           // AbortController of the running stream
    lastEventId: "",
    loads: 0,               // numbers page requests; only the newest renders
  };

  function status(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    if (state.token) h.Authorization = "Bearer " + state.token;
    return h;
  }

  // A failed answer as a message for people; a 401 asks for the token.
  async function refusal(resp) {
    let message = resp.status + " " + resp.statusText;
    try { message = (await resp.json()).error || message; } catch (e) { /* not JSON */ }
    if (resp.status === 401) {
      $("token-box").hidden = false;
      $("token").focus();
      return "This service needs a read token: " + message;
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
    for (const name of ["topic", "event_id", "source"]) {
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

  // One table row for an event given as its raw JSON text.
  function row(raw, live) {
    const e = JSON.parse(raw);
    const payload = RawJSON.members(raw).payload || "{}";
    const tr = document.createElement("tr");
    if (live) tr.className = "live";
    const cells = [formatTime(e.timestamp), e.topic, e.event_id, e.source];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 0) td.title = e.timestamp;
      tr.appendChild(td);
    });
    const td = document.createElement("td");
    const pre = document.createElement("pre");
    pre.textContent = RawJSON.pretty(payload);
    td.appendChild(pre);
    tr.appendChild(td);
    tr.dataset.eventId = e.event_id;
    return tr;
  }

  function render(raws) {
    const body = $("rows");
    body.textContent = "";
    for (const raw of raws) body.appendChild(row(raw, false));
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
    const extra = {};
    const since = isoFromInput($("since")), until = isoFromInput($("until"));
    if (since) extra.since = since;
    if (until) extra.until = until;
    const url = "events?" + query(extra);
    state.pages = [url];
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
    body.insertBefore(row(raw, true), body.firstChild);
    while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
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
  $("next").addEventListener("click", nextPage);
  $("prev").addEventListener("click", prevPage);
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("pubsub-read-token", state.token);
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
      "/": () => $("event_id").focus(),
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
