/*
 * The agents' inbox (/inbox): the handoffs of the tenant live, one conversation with the passages the
 * bot had and the reason it handed off, take / reply / close, and a chart of the daily analytics.
 *
 * The admin key is typed once and kept in this tab's sessionStorage (never in localStorage or a
 * cookie); every call sends it in X-Admin-Key, same-origin only. Changes arrive on the inbox's event
 * stream (GET /v1/support/inbox/events, read from a fetch body so the key can go in a header), which
 * resumes after the last event id it saw; each change reloads the list and the open conversation.
 * Server text is only ever put in the page as textContent. No external script, font or CDN.
 */
(() => {
  "use strict";

  const KEY_STORE = "domainllm-inbox-key";
  const AGENT_STORE = "domainllm-inbox-agent";
  const DAYS = 14;
  const $ = (id) => document.getElementById(id);

  const state = {
    key: null,
    agent: null,
    tab: "open",
    handoffs: [],
    selected: null,
    cursor: null,
    stream: null,
    retry: 1000,
    timers: {},
    drafts: {}, // the reply being written, per handoff: a live re-render must not lose it
  };

  // ---- small helpers ----
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === false || value == null) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child == null) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text != null) node.textContent = text;
    return node;
  }

  function ago(ts) {
    if (!ts) return "";
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return new Date(ts * 1000).toLocaleDateString();
  }

  function safeUrl(url) {
    if (!url) return null;
    try {
      const parsed = new URL(url, location.origin + "/");
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (e) {
      return null;
    }
  }

  function debounce(name, ms, fn) {
    clearTimeout(state.timers[name]);
    state.timers[name] = setTimeout(fn, ms);
  }

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, body) {
    const headers = { "X-Admin-Key": state.key, Accept: "application/json" };
    const init = { method: body === undefined ? "GET" : "POST", headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = {};
    try {
      data = await response.json();
    } catch (e) {
      /* an empty or non-JSON body */
    }
    if (!response.ok) {
      const message = (data && data.error && data.error.message) || `The server answered ${response.status}.`;
      if (response.status === 401 && state.key) signOut(message);
      throw new ApiError(message, response.status);
    }
    return data;
  }

  function flash(message) {
    const box = $("detail").querySelector(".error") || el("p", { class: "error", role: "alert", "data-testid": "inbox-action-error" });
    box.textContent = message;
    box.hidden = false;
    if (!box.parentNode) $("detail").prepend(box);
  }

  // ---- sign in ----
  function showSignIn(message) {
    $("app").hidden = true;
    $("signin").hidden = false;
    $("signout").hidden = true;
    $("me").textContent = "";
    $("agent").value = state.agent || sessionStorage.getItem(AGENT_STORE) || "";
    const error = $("signin-error");
    error.hidden = !message;
    error.textContent = message || "";
  }

  function signOut(message) {
    stopStream();
    state.key = null;
    sessionStorage.removeItem(KEY_STORE);
    showSignIn(message);
  }

  async function start() {
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    $("me").textContent = `Signed in as ${state.agent}`;
    await loadList(true);
    follow();
    loadAnalytics();
  }

  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.key = $("key").value.trim();
    state.agent = $("agent").value.trim();
    if (!state.key || !state.agent) return;
    try {
      await api("/v1/support/handoffs?limit=1");
    } catch (err) {
      state.key = null;
      showSignIn(err.message);
      return;
    }
    sessionStorage.setItem(KEY_STORE, state.key);
    sessionStorage.setItem(AGENT_STORE, state.agent);
    $("key").value = "";
    start();
  });
  $("signout").addEventListener("click", () => signOut());

  // ---- the list ----
  async function loadList(first) {
    const data = await api("/v1/support/handoffs?limit=200");
    state.handoffs = data.handoffs || [];
    if (first || !state.cursor) state.cursor = data.cursor;
    renderList();
  }

  function renderList() {
    const counts = { open: 0, taken: 0, closed: 0 };
    for (const h of state.handoffs) counts[h.status] += 1;
    $("n-open").textContent = counts.open;
    $("n-taken").textContent = counts.taken;
    const shown = state.handoffs.filter((h) => h.status === state.tab);
    const list = $("list");
    list.replaceChildren(
      ...shown.map((h) => {
        const meta = el("div", { class: "meta" }, el("span", { class: `badge ${h.status}`, text: h.status }));
        meta.append(el("span", { text: ago(h.created_at) }), el("span", { class: "badge", text: h.reason }));
        if (h.taken_by) meta.append(el("span", { text: `· ${h.taken_by}` }));
        if (h.no_agent_at && h.status === "open") meta.append(el("span", { class: "badge alert", text: "waited too long" }));
        if (h.has_contact) meta.append(el("span", { class: "badge", text: "e-mail left" }));
        if (h.csat) meta.append(el("span", { class: "badge", text: `rated ${h.csat}/5` }));
        const button = el(
          "button",
          {
            type: "button",
            "data-testid": "handoff-item",
            "data-handoff-id": h.id,
            "data-status": h.status,
            "aria-current": h.id === state.selected ? "true" : "false",
          },
          el("div", { class: "q", text: h.question || "(the customer asked for a person)" }),
          meta
        );
        button.addEventListener("click", () => select(h.id));
        return el("li", null, button);
      })
    );
    $("empty").hidden = shown.length > 0;
  }

  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => showTab(tab.dataset.status));
  }

  // ---- one conversation ----
  async function select(id) {
    state.selected = id;
    renderList();
    await loadDetail();
  }

  async function loadDetail() {
    if (!state.selected) return;
    try {
      renderDetail(await api(`/v1/support/handoffs/${encodeURIComponent(state.selected)}`));
    } catch (err) {
      if (err.status === 404) {
        state.selected = null;
        $("detail").replaceChildren(el("p", { class: "placeholder", text: "That conversation is gone." }));
      } else flash(err.message);
    }
  }

  function renderDetail(h) {
    const mine = h.status === "taken" && h.taken_by === state.agent;
    const detail = $("detail");
    const writing = document.activeElement && document.activeElement.dataset.testid === "reply-input";
    const meta = el("div", { class: "meta" }, el("span", { class: `badge ${h.status}`, "data-testid": "handoff-status", text: h.status }));
    meta.append(
      el("span", { "data-testid": "handoff-reason", text: `reason: ${h.reason}` }),
      el("span", { text: `opened ${ago(h.created_at)}` }),
      el("span", { text: `session ${h.session_id.slice(0, 8)}` })
    );
    if (h.taken_by) meta.append(el("span", { text: `taken by ${h.taken_by}` }));
    if (h.csat) meta.append(el("span", { class: "badge", "data-testid": "handoff-csat", text: `rated ${h.csat}/5` }));

    const actions = el("div", { class: "actions" });
    if (h.status === "open") {
      const take = el("button", { type: "button", class: "primary", "data-testid": "take-button", text: "Take this conversation" });
      take.addEventListener("click", () => act(`/v1/support/handoffs/${h.id}/take`, { agent: state.agent }));
      actions.append(take);
    }
    if (h.status === "open" || mine) {
      const close = el("button", { type: "button", class: "secondary", "data-testid": "close-button", text: mine ? "Close and ask for a rating" : "Close" });
      close.addEventListener("click", () => act(`/v1/support/handoffs/${h.id}/close`, { agent: state.agent }));
      actions.append(close);
    }
    if (h.status === "taken" && !mine) actions.append(el("span", { class: "note", text: `${h.taken_by} holds this conversation.` }));
    if (h.status === "closed") actions.append(el("span", { class: "note", text: `Closed by ${h.closed_by || "?"} ${ago(h.closed_at)}.` }));

    const conversation = el("div", { class: "conversation", "data-testid": "handoff-conversation" });
    for (const m of h.conversation || []) {
      const role = m.role === "assistant" ? "assistant" : m.role === "agent" ? "agent" : m.role === "system" ? "system" : "user";
      const who = { user: "Customer", assistant: "Bot", agent: m.agent || "Agent", system: null }[role];
      conversation.append(
        el("div", { class: `msg ${role}`, "data-testid": "conversation-message", "data-role": role }, who ? el("div", { class: "who", text: who }) : null, m.text || "")
      );
    }

    const passages = el("ol", { class: "passages", "data-testid": "handoff-passages" });
    for (const p of h.passages || []) {
      const href = safeUrl(p.url);
      const title = href ? el("a", { href, target: "_blank", rel: "noopener noreferrer", class: "t", text: p.title || p.doc_id }) : el("span", { class: "t", text: p.title || p.doc_id });
      passages.append(el("li", { "data-testid": "passage" }, el("span", { class: "s", text: `cos ${Number(p.score).toFixed(2)}` }), title, el("p", { text: p.text })));
    }
    if (!passages.children.length) passages.append(el("li", { class: "note", text: "The bot retrieved nothing for this turn." }));

    const children = [el("h2", { "data-testid": "handoff-question", text: h.question || "(the customer asked for a person)" }), meta];
    if (h.contact_email) {
      const mail = el("a", { href: `mailto:${h.contact_email}`, "data-testid": "handoff-contact", text: h.contact_email });
      children.push(el("div", { class: "contact-box" }, "No one was free in time; the customer asked to be answered at ", mail, "."));
    } else if (h.no_agent_at && h.status === "open") {
      children.push(el("div", { class: "contact-box", text: "No one took this in time: the customer was asked for an e-mail address." }));
    }
    if (h.csat_comment) children.push(el("p", { class: "note", text: `Customer's comment: ${h.csat_comment}` }));
    children.push(actions);

    const right = el("div", null, el("h3", { text: "What the bot found" }), passages);
    const left = el("div", null, el("h3", { text: "Conversation" }), conversation);
    if (mine) {
      const box = el("textarea", { "data-testid": "reply-input", "aria-label": "Your reply", placeholder: "Write to the customer…", maxlength: "2000" });
      box.value = state.drafts[h.id] || "";
      box.addEventListener("input", () => {
        state.drafts[h.id] = box.value;
      });
      const send = el("button", { type: "submit", class: "primary", "data-testid": "reply-send", text: "Send" });
      const form = el("form", { class: "reply" }, box, send);
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const text = box.value.trim();
        if (!text) return;
        send.disabled = true;
        try {
          await api(`/v1/support/handoffs/${h.id}/messages`, { agent: state.agent, text });
          delete state.drafts[h.id];
          box.value = "";
          await loadDetail();
        } catch (err) {
          flash(err.message);
        } finally {
          send.disabled = false;
        }
      });
      box.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          form.requestSubmit();
        }
      });
      left.append(form);
    }
    children.push(el("div", { class: "columns" }, left, right));
    detail.replaceChildren(...children);
    detail.setAttribute("data-handoff-id", h.id);
    detail.setAttribute("data-status", h.status);
    conversation.scrollTop = conversation.scrollHeight;
    const input = detail.querySelector("textarea");
    if (input && (writing || document.activeElement === document.body)) {
      input.focus();
      input.setSelectionRange(input.value.length, input.value.length);
    }
  }

  async function act(path, body) {
    try {
      const record = await api(path, body);
      showTab(record.status); // follow the conversation to its new tab
    } catch (err) {
      flash(err.message);
    }
    await Promise.all([loadList(), loadDetail()]);
  }

  function showTab(status) {
    state.tab = status;
    for (const t of document.querySelectorAll("[role=tab]")) t.setAttribute("aria-selected", String(t.dataset.status === status));
    renderList();
  }

  // ---- live: the inbox's event stream ----
  function stopStream() {
    if (state.stream) state.stream.abort();
    state.stream = null;
    setLive(false);
  }

  function setLive(on) {
    $("live").dataset.state = on ? "live" : "off";
    $("live").textContent = on ? "live" : "reconnecting…";
  }

  async function follow() {
    if (state.stream || !state.key) return;
    const controller = new AbortController();
    state.stream = controller;
    try {
      const query = state.cursor ? `?after=${encodeURIComponent(state.cursor)}` : "";
      const response = await fetch(`/v1/support/inbox/events${query}`, {
        headers: { "X-Admin-Key": state.key, Accept: "text/event-stream" },
        signal: controller.signal,
      });
      if (response.status === 401) return signOut("The admin key was refused. Sign in again.");
      if (!response.ok) throw new ApiError(`events: ${response.status}`, response.status);
      state.retry = 1000;
      setLive(true);
      await readEvents(response, onEvent);
      state.retry = 0; // the server ended it on purpose: resume at once
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    if (state.stream !== controller) return;
    state.stream = null;
    setLive(false);
    setTimeout(follow, state.retry);
    state.retry = Math.min(Math.max(state.retry * 2, 1000), 15000);
  }

  function onEvent(name, data, id) {
    if (id) state.cursor = id;
    if (name === "ready" || name === "end" || name === "error") return;
    debounce("list", 100, () => loadList().catch(() => {}));
    if (data && data.handoff_id === state.selected) debounce("detail", 100, loadDetail);
    if (["handoff_opened", "handoff_closed", "csat_recorded"].includes(name)) debounce("analytics", 1500, loadAnalytics);
  }

  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let event = "message";
    let data = [];
    let id = null;
    const line = (text) => {
      if (text === "") {
        if (data.length) {
          let payload = null;
          try {
            payload = JSON.parse(data.join("\n"));
          } catch (e) {
            /* not ours */
          }
          onEvent(event, payload, id);
        }
        event = "message";
        data = [];
        return;
      }
      if (text[0] === ":") return;
      const colon = text.indexOf(":");
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "event") event = value || "message";
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    };
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      lines.forEach(line);
    }
  }

  // ---- analytics: stacked bars (answered by the bot, handed off), deflection line, CSAT dots ----
  async function loadAnalytics() {
    let report;
    try {
      report = await api(`/v1/support/analytics?days=${DAYS}`);
    } catch (err) {
      $("chart").textContent = err.message;
      return;
    }
    drawChart(report.series);
    const t = report.totals;
    const pct = (x) => (x == null ? "–" : `${Math.round(x * 100)}%`);
    $("kpis").replaceChildren(
      kpi(t.conversations, "conversations"),
      kpi(pct(t.deflection_rate), "answered by the bot"),
      kpi(pct(t.handoff_rate), "handed to a person"),
      kpi(t.csat.mean == null ? "–" : `${t.csat.mean.toFixed(1)} / 5`, `CSAT (${t.csat.count} ratings)`)
    );
    const top = report.top_unanswered || [];
    $("unanswered").replaceChildren(
      ...(top.length
        ? top.map((q) => el("li", { "data-testid": "unanswered-question" }, q.question, el("span", { class: "c", text: `×${q.count}` })))
        : [el("li", { class: "note", text: "None yet." })])
    );
  }

  function kpi(value, label) {
    return el("div", { class: "kpi" }, el("b", { text: String(value) }), el("span", { text: label }));
  }

  function drawChart(series) {
    const W = 348, H = 210, left = 28, right = 30, top = 10, bottom = 34;
    const plotW = W - left - right, plotH = H - top - bottom;
    const max = Math.max(1, ...series.map((d) => d.conversations));
    const step = plotW / series.length;
    const bar = Math.max(4, step * 0.62);
    const y = (v) => top + plotH - (v / max) * plotH;
    const yRate = (r) => top + plotH - r * plotH;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": "Daily conversations, deflection and CSAT" });
    for (const frac of [0, 0.5, 1]) {
      const count = max * frac;
      root.append(svg("line", { x1: left, x2: W - right, y1: yRate(frac), y2: yRate(frac), stroke: "#e6ebee" }));
      if (Number.isInteger(count)) root.append(svg("text", { x: left - 4, y: yRate(frac) + 3, "text-anchor": "end" }, String(count)));
      root.append(svg("text", { x: W - right + 4, y: yRate(frac) + 3 }, `${Math.round(frac * 100)}%`));
    }
    const line = [];
    series.forEach((d, i) => {
      const x = left + i * step + (step - bar) / 2;
      const g = svg("g", { "data-date": d.date });
      g.append(svg("title", null, `${d.date}: ${d.conversations} conversations, ${d.answered_by_bot} by the bot, ${d.handed_off} handed off` + (d.csat.mean == null ? "" : `, CSAT ${d.csat.mean} (${d.csat.count})`)));
      g.append(svg("rect", { x, y: y(d.answered_by_bot), width: bar, height: plotH - (y(d.answered_by_bot) - top), fill: "var(--bot)", rx: 1.5 }));
      g.append(svg("rect", { x, y: y(d.conversations), width: bar, height: y(d.answered_by_bot) - y(d.conversations), fill: "var(--person)", rx: 1.5 }));
      root.append(g);
      if (d.deflection_rate != null) line.push(`${x + bar / 2},${yRate(d.deflection_rate)}`);
      if (d.csat.mean != null) root.append(svg("circle", { cx: x + bar / 2, cy: yRate((d.csat.mean - 1) / 4), r: 3.2, fill: "#fff", stroke: "var(--blue)", "stroke-width": 2 }));
      if (i % 2 === series.length % 2 || series.length <= 7) {
        root.append(svg("text", { x: x + bar / 2, y: H - bottom + 13, "text-anchor": "middle" }, d.date.slice(5)));
      }
    });
    if (line.length > 1) root.append(svg("polyline", { points: line.join(" "), fill: "none", stroke: "var(--accent)", "stroke-width": 2 }));
    else if (line.length === 1) {
      const [cx, cy] = line[0].split(",");
      root.append(svg("circle", { cx, cy, r: 3, fill: "var(--accent)" }));
    }
    const legend = el(
      "div",
      { class: "legend" },
      el("span", null, el("i", { style: "background:var(--bot)" }), "answered by the bot"),
      el("span", null, el("i", { style: "background:var(--person)" }), "handed off"),
      el("span", null, el("i", { style: "background:var(--accent);height:3px" }), "deflection %"),
      el("span", null, el("i", { style: "border:2px solid var(--blue);border-radius:50%;width:8px;height:8px" }), "CSAT (1–5 on the % axis)")
    );
    $("chart").replaceChildren(root, legend);
    $("chart").dataset.days = String(series.length);
  }

  // ---- start ----
  state.key = sessionStorage.getItem(KEY_STORE);
  state.agent = sessionStorage.getItem(AGENT_STORE);
  if (state.key && state.agent) start().catch((err) => showSignIn(err.message));
  else showSignIn();
  setInterval(() => renderList(), 30000); // keep the "x min ago" fresh
})();
