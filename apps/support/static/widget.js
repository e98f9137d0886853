/*
 * The support chat widget: one dependency-free script, embedded with
 *
 *   <script src="/widget/widget.js" data-key="pk_demo_store" defer></script>
 *
 * Attributes: data-key (public key, sent as X-Support-Key; required), data-api (base URL of the API;
 * default: the origin this script was served from), data-title (panel title), data-greeting (first
 * line in the panel). It renders a launcher and a panel inside a Shadow DOM so the host page's CSS
 * cannot reach it, keeps the session id in sessionStorage, and reads the answer as server-sent
 * events from a POST (fetch + ReadableStream: EventSource can only GET). Server text is only ever
 * put in the page as textContent, never as HTML. window.SupportWidget.open() / close() / ask(text) let
 * the host page drive it from its own buttons.
 *
 * Once the conversation goes to a person, the widget follows the session's event stream (GET
 * /v1/support/sessions/{id}/events, resumed with ?after=<last event id>): the agent joining, their
 * messages, the close with a 1-5 rating prompt, and the "nobody is free" notice with an e-mail field.
 * While a person holds the conversation the bot is silent: messages go to them (the API answers 202).
 */
(function () {
  "use strict";

  if (window.SupportWidget) return; // embedded twice: one widget

  var script =
    document.currentScript ||
    document.querySelector('script[src*="widget.js"][data-key]') ||
    document.querySelector('script[src*="widget.js"]');
  if (!script) return;

  var KEY = script.getAttribute("data-key") || "";
  var API = (script.getAttribute("data-api") || new URL(script.src, location.href).origin).replace(/\/+$/, "");
  var TITLE = script.getAttribute("data-title") || "Help";
  var GREETING =
    script.getAttribute("data-greeting") || "Hi! Ask me about orders, shipping, returns or your account.";
  // The server hands off below its own threshold (DOMAINLLM_SUPPORT_MIN_CONFIDENCE, 0.5 by default);
  // an answer that stands but is below this one says it may be wrong and points to a person.
  var LOW_CONFIDENCE = 0.65;
  var MAX_CHARS = 2000;
  var SESSION_STORE = "support-session:" + API + ":" + KEY;

  var CSS = [
    ":host{all:initial;}",
    "*,*::before,*::after{box-sizing:border-box;}",
    ".root{--accent:#1f5f4a;--accent-ink:#fff;--ink:#1d2327;--muted:#5b6770;--line:#dde3e7;--bg:#fff;",
    "  --soft:#f3f6f7;--warn:#8a5300;--warn-bg:#fff6e5;--err:#a3262a;--err-bg:#fdecec;",
    "  font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;color:var(--ink);",
    "  position:fixed;right:20px;bottom:20px;z-index:2147483000;display:flex;flex-direction:column;align-items:flex-end;gap:12px;}",
    "button{font:inherit;cursor:pointer;}",
    "button:disabled{cursor:default;opacity:.55;}",
    ":focus-visible{outline:2px solid var(--accent);outline-offset:2px;}",
    ".launcher{width:56px;height:56px;border-radius:50%;border:0;background:var(--accent);color:var(--accent-ink);",
    "  box-shadow:0 6px 20px rgba(0,0,0,.22);display:grid;place-items:center;transition:transform .15s;}",
    ".launcher:hover{transform:scale(1.06);}",
    ".launcher svg{width:26px;height:26px;fill:currentColor;}",
    ".panel{width:370px;max-width:calc(100vw - 40px);height:560px;max-height:calc(100vh - 110px);background:var(--bg);",
    "  border:1px solid var(--line);border-radius:14px;box-shadow:0 12px 40px rgba(0,0,0,.2);display:flex;",
    "  flex-direction:column;overflow:hidden;}",
    ".panel[hidden]{display:none;}",
    ".head{display:flex;align-items:center;gap:8px;padding:12px 12px 12px 16px;background:var(--accent);color:var(--accent-ink);}",
    ".head h2{font-size:15px;font-weight:600;margin:0;flex:1;min-width:0;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;}",
    ".head button{flex:none;background:rgba(255,255,255,.16);color:inherit;border:0;border-radius:8px;padding:5px 9px;font-size:12.5px;}",
    ".head button:hover:not(:disabled){background:rgba(255,255,255,.28);}",
    ".head .close{font-size:18px;line-height:1;padding:4px 9px;}",
    ".log{flex:1;overflow-y:auto;padding:14px;display:flex;flex-direction:column;gap:10px;background:var(--soft);}",
    ".msg{max-width:88%;padding:9px 12px;border-radius:12px;white-space:pre-wrap;overflow-wrap:anywhere;}",
    ".msg.user{align-self:flex-end;background:var(--accent);color:var(--accent-ink);border-bottom-right-radius:4px;}",
    ".msg.assistant,.msg.notice{align-self:flex-start;background:var(--bg);border:1px solid var(--line);border-bottom-left-radius:4px;}",
    ".msg.notice{background:#eef5f2;}",
    ".msg.error{align-self:stretch;max-width:none;background:var(--err-bg);color:var(--err);border:1px solid #f3c4c4;}",
    ".msg .text:empty::before{content:'';display:inline-block;width:28px;height:8px;",
    "  background:radial-gradient(circle,var(--muted) 2.5px,transparent 3px) 0 0/9px 8px repeat-x;animation:blink 1s infinite;}",
    "@keyframes blink{50%{opacity:.3}}",
    ".sources{margin:8px 0 0;padding:8px 0 0;border-top:1px solid var(--line);font-size:12.5px;white-space:normal;}",
    ".sources p{margin:0 0 3px;color:var(--muted);font-weight:600;}",
    ".sources ol{margin:0;padding:0;list-style:none;}",
    ".sources li{margin:2px 0;}",
    ".sources a{color:var(--accent);}",
    ".hint{margin-top:8px;padding:6px 8px;border-radius:8px;font-size:12.5px;white-space:normal;background:var(--warn-bg);color:var(--warn);}",
    ".hint.handoff{background:#e8f1fb;color:#1b4d80;}",
    ".feedback{display:flex;align-items:center;gap:6px;margin-top:8px;font-size:12.5px;color:var(--muted);white-space:normal;}",
    ".feedback button{border:1px solid var(--line);background:var(--bg);color:var(--muted);border-radius:8px;",
    "  padding:4px 7px;display:inline-grid;place-items:center;}",
    ".feedback button svg{width:15px;height:15px;fill:currentColor;}",
    ".feedback button.down svg{transform:rotate(180deg);}",
    ".feedback button:hover:not(:disabled){background:var(--soft);}",
    ".feedback button[aria-pressed=true]{border-color:var(--accent);color:var(--accent);background:#e3efe9;opacity:1;}",
    ".msg.agent{align-self:flex-start;background:#e8f1fb;border:1px solid #c9dcf2;border-bottom-left-radius:4px;}",
    ".msg .who{font-size:12px;font-weight:600;color:#1b4d80;margin-bottom:2px;white-space:normal;}",
    ".msg .sent{font-size:11.5px;opacity:.85;margin-top:3px;text-align:right;white-space:normal;}",
    ".rating{display:flex;gap:6px;margin-top:8px;white-space:normal;}",
    ".rating button{min-width:36px;border:1px solid var(--line);background:var(--bg);color:var(--ink);border-radius:8px;",
    "  padding:5px 0;font-weight:600;}",
    ".rating button:hover:not(:disabled){background:var(--soft);}",
    ".rating button[aria-pressed=true]{border-color:var(--accent);background:#e3efe9;color:var(--accent);opacity:1;}",
    ".contact{display:flex;gap:6px;margin-top:8px;white-space:normal;}",
    ".contact input{flex:1;min-width:0;font:inherit;color:inherit;border:1px solid var(--line);border-radius:8px;padding:6px 8px;}",
    ".contact button{border:0;border-radius:8px;background:var(--accent);color:var(--accent-ink);padding:0 12px;font-weight:600;}",
    ".launcher[data-unread]::after{content:'';position:absolute;top:6px;right:6px;width:12px;height:12px;border-radius:50%;",
    "  background:#d9480f;border:2px solid #fff;}",
    ".launcher{position:relative;}",
    ".form{display:flex;gap:8px;padding:10px;border-top:1px solid var(--line);background:var(--bg);}",
    ".form textarea{flex:1;resize:none;font:inherit;color:inherit;border:1px solid var(--line);border-radius:10px;",
    "  padding:8px 10px;height:40px;max-height:120px;}",
    ".form textarea:focus{border-color:var(--accent);outline:none;box-shadow:0 0 0 2px rgba(31,95,74,.18);}",
    ".form .send{border:0;border-radius:10px;background:var(--accent);color:var(--accent-ink);padding:0 14px;font-weight:600;}",
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap;}",
    "@media (max-width:480px){.root{right:12px;bottom:12px;}.panel{max-width:calc(100vw - 24px);}}",
  ].join("\n");

  var CHAT_ICON =
    '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"/></svg>';
  var CLOSE_ICON =
    '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M6.4 5 12 10.6 17.6 5 19 6.4 13.4 12 19 17.6 17.6 19 12 13.4 6.4 19 5 17.6 10.6 12 5 6.4z"/></svg>';

  // Icons are inline SVG, not emoji: a machine without an emoji font would show empty boxes.
  var THUMB_ICON =
    '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05c.09-.23.14-.47.14-.73v-2z"/></svg>';

  // ---- tiny DOM helper: el("div", {class: "x", "data-testid": "y"}, child, "text") ----
  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      var value = attrs[name];
      if (value === false || value == null) return;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    });
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child == null) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // ---- the DOM: host element, shadow root, launcher, panel ----
  var host = el("div", { "data-support-widget": "" });
  var shadow = host.attachShadow({ mode: "open" }); // open: the e2e tests and assistive tech can reach in
  shadow.appendChild(el("style", { text: CSS }));

  var launcher = el("button", {
    class: "launcher",
    type: "button",
    "aria-label": "Open support chat",
    "aria-expanded": "false",
    "aria-controls": "support-panel",
    "data-testid": "support-launcher",
  });
  launcher.innerHTML = CHAT_ICON; // our own constant markup, no server text

  var handoffButton = el("button", {
    type: "button",
    "aria-label": "Talk to a person",
    "data-testid": "support-handoff",
    text: "Talk to a person",
  });
  var closeButton = el("button", {
    class: "close",
    type: "button",
    "aria-label": "Close support chat",
    "data-testid": "support-close",
    text: "\u00d7",
  });
  var log = el("div", {
    class: "log",
    role: "log",
    "aria-live": "polite",
    "aria-relevant": "additions text",
    "aria-label": "Conversation",
    tabindex: "0",
    "data-testid": "support-messages",
  });
  var input = el("textarea", {
    rows: "1",
    maxlength: String(MAX_CHARS),
    placeholder: "Type your question\u2026",
    "aria-label": "Your question",
    "data-testid": "support-input",
  });
  var sendButton = el("button", {
    class: "send",
    type: "submit",
    "aria-label": "Send message",
    "data-testid": "support-send",
    text: "Send",
  });
  var form = el("form", { class: "form", "aria-label": "Ask a question" }, input, sendButton);
  var titleId = "support-title";
  var panel = el(
    "div",
    {
      class: "panel",
      id: "support-panel",
      role: "dialog",
      "aria-labelledby": titleId,
      hidden: true,
      "data-testid": "support-panel",
    },
    el("div", { class: "head" }, el("h2", { id: titleId, text: TITLE }), handoffButton, closeButton),
    log,
    form
  );
  var root = el("div", { class: "root" }, panel, launcher);
  shadow.appendChild(root);

  // ---- state ----
  var sessionId = null;
  var sessionPromise = null;
  var busy = false;
  var greeted = false;

  function readStoredSession() {
    try {
      return sessionStorage.getItem(SESSION_STORE);
    } catch (e) {
      return null; // storage blocked (privacy mode, sandboxed frame): a session per page view
    }
  }
  function storeSession(id) {
    try {
      if (id) sessionStorage.setItem(SESSION_STORE, id);
      else sessionStorage.removeItem(SESSION_STORE);
    } catch (e) {
      /* see readStoredSession */
    }
  }

  // ---- HTTP ----
  function headers() {
    return { "Content-Type": "application/json", Accept: "application/json", "X-Support-Key": KEY };
  }

  function ApiError(message, status) {
    this.message = message;
    this.status = status || 0;
  }

  // The message of a non-2xx answer: the API's {"error": {"message"}} when there is one.
  function errorFrom(response) {
    return response
      .json()
      .then(
        function (body) {
          var message = body && body.error && body.error.message;
          return message || "The help service answered " + response.status + ".";
        },
        function () {
          return "The help service answered " + response.status + ".";
        }
      )
      .then(function (message) {
        throw new ApiError(message, response.status);
      });
  }

  function request(path, body) {
    return fetch(API + path, { method: "POST", headers: headers(), body: JSON.stringify(body || {}) }).then(
      function (response) {
        if (!response.ok) return errorFrom(response);
        return response.json();
      },
      networkError
    );
  }

  function networkError() {
    throw new ApiError("We couldn't reach the help service. Check your connection and try again.", 0);
  }

  function ensureSession() {
    if (sessionId) return Promise.resolve(sessionId);
    if (!sessionPromise) {
      sessionPromise = request("/v1/support/sessions", { metadata: { page: location.pathname } }).then(
        function (body) {
          sessionId = body.session_id;
          storeSession(sessionId);
          return sessionId;
        },
        function (err) {
          sessionPromise = null; // let the next attempt try again
          throw err;
        }
      );
    }
    return sessionPromise;
  }

  function forgetSession() {
    sessionId = null;
    sessionPromise = null;
    storeSession(null);
    stopFollowing(); // a new session has no person on it
    if (held) clearHeld();
  }

  // ---- server-sent events over a fetch body ----
  // Calls onEvent(name, data, lastEventId) for each event; resolves when the stream ends.
  function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    var eventName = "message";
    var dataLines = [];
    var lastId = null;

    function dispatch() {
      if (dataLines.length) onEvent(eventName, dataLines.join("\n"), lastId);
      eventName = "message";
      dataLines = [];
    }
    function line(text) {
      if (text === "") return dispatch();
      if (text.charAt(0) === ":") return; // a comment: keep-alive pings
      var colon = text.indexOf(":");
      var field = colon < 0 ? text : text.slice(0, colon);
      var value = colon < 0 ? "" : text.slice(colon + 1);
      if (value.charAt(0) === " ") value = value.slice(1);
      if (field === "event") eventName = value || "message";
      else if (field === "data") dataLines.push(value);
      else if (field === "id") lastId = value;
    }
    function pump() {
      return reader.read().then(function (chunk) {
        if (chunk.done) {
          buffer += decoder.decode();
          if (buffer) line(buffer.replace(/\r$/, ""));
          dispatch();
          return;
        }
        buffer += decoder.decode(chunk.value, { stream: true });
        var held = "";
        if (buffer.slice(-1) === "\r") {
          held = "\r"; // maybe the first half of "\r\n": decide when the next chunk comes
          buffer = buffer.slice(0, -1);
        }
        var lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop() + held; // an unfinished line waits for the next chunk
        for (var i = 0; i < lines.length; i++) line(lines[i]);
        return pump();
      });
    }
    return pump();
  }

  // ---- rendering ----
  function scrollToEnd() {
    log.scrollTop = log.scrollHeight;
  }

  function addMessage(kind, text, testid) {
    var node = el("div", { class: "msg " + kind, "data-testid": testid || "message-" + kind });
    var body = el("div", { class: "text", "data-testid": "message-text" });
    body.textContent = text || "";
    node.appendChild(body);
    log.appendChild(node);
    scrollToEnd();
    return node;
  }

  function showError(message) {
    var node = addMessage("error", message, "message-error");
    node.setAttribute("role", "alert");
    return node;
  }

  function safeUrl(url) {
    if (!url) return null;
    try {
      var parsed = new URL(url, API + "/");
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (e) {
      return null;
    }
  }

  function renderSources(node, citations) {
    if (!citations || !citations.length) return;
    var list = el("ol");
    citations.forEach(function (c, i) {
      var n = c.n != null ? c.n : i + 1;
      var label = "[" + n + "] " + (c.title || c.doc_id || "Source");
      var href = safeUrl(c.url);
      var item = href
        ? el("a", {
            href: href,
            target: "_blank",
            rel: "noopener noreferrer",
            "data-testid": "source-link",
            "data-doc-id": c.doc_id || "",
            text: label,
          })
        : el("span", { "data-testid": "source-item", text: label });
      list.appendChild(el("li", null, item));
    });
    node.appendChild(el("div", { class: "sources", "data-testid": "message-sources" }, el("p", { text: "Sources" }), list));
  }

  function renderFeedback(node, messageId, answerSession) {
    var thanks = el("span", { "data-testid": "feedback-thanks", hidden: true, text: "Thanks for your feedback" });
    var label = el("span", { text: "Was this helpful?" });
    var up = el("button", {
      type: "button",
      "aria-label": "Helpful",
      "aria-pressed": "false",
      "data-testid": "thumbs-up",
    });
    up.innerHTML = THUMB_ICON; // our own constant markup
    var down = el("button", {
      type: "button",
      "aria-label": "Not helpful",
      "aria-pressed": "false",
      "data-testid": "thumbs-down",
    });
    down.innerHTML = THUMB_ICON;
    down.classList.add("down");
    var box = el("div", { class: "feedback", "data-testid": "message-feedback" }, label, up, down, thanks);

    function rate(rating, button) {
      up.disabled = down.disabled = true;
      request("/v1/support/feedback", { session_id: answerSession, message_id: messageId, rating: rating }).then(
        function () {
          button.setAttribute("aria-pressed", "true");
          label.hidden = true;
          thanks.hidden = false;
          node.setAttribute("data-feedback", rating);
        },
        function (err) {
          up.disabled = down.disabled = false;
          showError(err.message);
        }
      );
    }
    up.addEventListener("click", function () {
      rate("up", up);
    });
    down.addEventListener("click", function () {
      rate("down", down);
    });
    node.appendChild(box);
  }

  // The final event (or a non-streamed answer): the whole answer, its sources, hints and feedback.
  function renderFinal(node, result) {
    var body = node.querySelector(".text");
    if (typeof result.answer === "string" && result.answer) body.textContent = result.answer; // authoritative
    node.setAttribute("data-message-id", result.message_id || "");
    node.setAttribute("data-source", result.source || "");
    if (typeof result.confidence === "number") node.setAttribute("data-confidence", String(result.confidence));
    renderSources(node, result.citations);
    if (result.handoff) {
      node.setAttribute("data-handoff", "true");
      node.appendChild(
        el("div", {
          class: "hint handoff",
          "data-testid": "handoff-notice",
          text: "Handed to a person on our team",
        })
      );
      setHeld("open");
      follow();
    } else if (typeof result.confidence === "number" && result.confidence < LOW_CONFIDENCE) {
      node.appendChild(
        el("div", {
          class: "hint",
          "data-testid": "confidence-hint",
          text: "I'm not fully sure about this answer. Please check the sources, or talk to a person.",
        })
      );
    }
    if (result.message_id) renderFeedback(node, result.message_id, sessionId); // the session that answered
    node.setAttribute("data-state", "done");
    scrollToEnd();
  }

  function failMessage(node, message) {
    node.setAttribute("data-state", "error");
    if (!node.querySelector(".text").textContent) node.remove(); // nothing streamed: drop the empty bubble
    showError(message);
  }

  function postMessage(id, text) {
    return fetch(API + "/v1/support/sessions/" + encodeURIComponent(id) + "/messages", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", "X-Support-Key": KEY },
      body: JSON.stringify({ message: text, stream: true }),
    }).then(null, networkError);
  }

  function ask(text) {
    var node = addMessage("assistant", "", "message-assistant");
    var body = node.querySelector(".text");
    var tokens = 0;
    var finished = false;
    node.setAttribute("data-state", "streaming");
    node.setAttribute("data-token-count", "0");
    node.setAttribute("aria-busy", "true");

    function send(retried) {
      return ensureSession()
        .then(function (id) {
          return postMessage(id, text);
        })
        .then(function (response) {
          if (response.status === 404 && !retried) {
            forgetSession(); // the session expired on the server: start a new one, once
            return send(true);
          }
          if (!response.ok) return errorFrom(response);
          var type = response.headers.get("Content-Type") || "";
          if (type.indexOf("text/event-stream") < 0) {
            return response.json().then(function (result) {
              finished = true;
              if (result && result.held) {
                node.remove(); // a person holds the conversation (another tab handed it off): no bot answer
                setHeld("open");
                follow();
                return;
              }
              renderFinal(node, result);
            });
          }
          return readEvents(response, function (name, data) {
            var payload;
            try {
              payload = JSON.parse(data);
            } catch (e) {
              return; // not ours to understand
            }
            if (name === "token") {
              if (payload && typeof payload.text === "string") {
                body.appendChild(document.createTextNode(payload.text));
                tokens += 1;
                node.setAttribute("data-token-count", String(tokens));
                scrollToEnd();
              }
            } else if (name === "final") {
              finished = true;
              renderFinal(node, payload || {});
            } else if (name === "error") {
              finished = true;
              var message = payload && payload.error && payload.error.message;
              failMessage(node, message || "Something went wrong while answering.");
            }
          }).then(function () {
            if (!finished) failMessage(node, "The answer was cut off. Please try again.");
          });
        });
    }

    return send(false)
      .then(null, function (err) {
        failMessage(node, err && err.message ? err.message : "Something went wrong. Please try again.");
      })
      .then(function () {
        node.removeAttribute("aria-busy");
      });
  }

  function setBusy(value) {
    busy = value;
    sendButton.disabled = value;
    form.setAttribute("aria-busy", value ? "true" : "false");
  }

  function submit() {
    var text = input.value.trim();
    if (!text || busy) return;
    input.value = "";
    var userNode = addMessage("user", text, "message-user");
    setBusy(true);
    (held ? sendToPerson(text, userNode) : ask(text)).then(function () {
      setBusy(false);
      input.focus();
    });
  }

  function markHandedOff() {
    handoffButton.disabled = true;
    handoffButton.textContent = "Person requested";
  }

  function requestHandoff() {
    handoffButton.disabled = true;
    ensureSession()
      .then(function (id) {
        return request("/v1/support/sessions/" + encodeURIComponent(id) + "/handoff", {
          reason: "the customer asked for a person",
        });
      })
      .then(
        function (result) {
          var text = (result && result.message) || "We've asked a person on our team to join.";
          var node = addMessage("notice", text, "handoff-message");
          if (result && result.handoff_id) node.setAttribute("data-handoff-id", result.handoff_id);
          setHeld(held ? held.status : "open");
          follow();
        },
        function (err) {
          handoffButton.disabled = false;
          showError(err.message);
        }
      );
  }

  // ---- a person in the conversation: the session's event stream ----
  var HANDOFF_STORE = "support-handoff:" + API + ":" + KEY;
  var following = null; // the AbortController of the open event stream, while following
  var eventsCursor = null; // the last event id seen: a reconnect resumes after it
  var retryDelay = 1000;
  var held = null; // while a person holds the conversation: {status: "open"|"taken", agent}
  var asked = {}; // prompts already shown, by kind and handoff id

  function storeFollowing(on) {
    try {
      if (on) sessionStorage.setItem(HANDOFF_STORE, "1");
      else sessionStorage.removeItem(HANDOFF_STORE);
    } catch (e) {
      /* see readStoredSession */
    }
  }
  function readFollowing() {
    try {
      return sessionStorage.getItem(HANDOFF_STORE) === "1";
    } catch (e) {
      return false;
    }
  }

  function setHeld(status, agent) {
    held = { status: status, agent: agent || (held && held.agent) || null };
    panel.setAttribute("data-handoff", status);
    markHandedOff();
    input.placeholder = held.agent ? "Write to " + held.agent + "\u2026" : "Write to our team\u2026";
  }

  function clearHeld() {
    held = null;
    panel.removeAttribute("data-handoff");
    handoffButton.disabled = false;
    handoffButton.textContent = "Talk to a person";
    input.placeholder = "Type your question\u2026";
  }

  function follow() {
    storeFollowing(true);
    if (following) return;
    var controller = new AbortController();
    following = controller;
    ensureSession()
      .then(function (id) {
        var query = eventsCursor ? "?after=" + encodeURIComponent(eventsCursor) : "";
        return fetch(API + "/v1/support/sessions/" + encodeURIComponent(id) + "/events" + query, {
          headers: { Accept: "text/event-stream", "X-Support-Key": KEY },
          signal: controller.signal,
        });
      })
      .then(function (response) {
        if (response.status === 404) return stopFollowing(); // the session expired
        if (!response.ok) throw new ApiError("events: " + response.status, response.status);
        retryDelay = 1000;
        panel.setAttribute("data-live", "true");
        return readEvents(response, function (name, data, id) {
          var payload;
          try {
            payload = JSON.parse(data);
          } catch (e) {
            return;
          }
          if (id) eventsCursor = id;
          onPersonEvent(name, payload || {});
        });
      })
      .then(
        function () {
          reconnect(controller, 500); // the server ended the stream (it does, now and then): resume
        },
        function () {
          reconnect(controller, retryDelay);
          retryDelay = Math.min(retryDelay * 2, 15000);
        }
      );
  }

  function reconnect(controller, delay) {
    if (following !== controller) return; // stopped, or already replaced
    following = null;
    panel.removeAttribute("data-live");
    setTimeout(function () {
      if (!following && readFollowing()) follow();
    }, delay);
  }

  function stopFollowing() {
    storeFollowing(false);
    var controller = following;
    following = null;
    panel.removeAttribute("data-live");
    if (controller) controller.abort();
  }

  function onPersonEvent(name, data) {
    if (name === "state") {
      if (data.handoff) setHeld(data.handoff.status, data.handoff.taken_by);
      else if (held) clearHeld();
      if (data.csat_pending) askRating(data.csat_pending);
      else if (!data.handoff) stopFollowing(); // nothing left to wait for
    } else if (name === "handoff_opened") {
      setHeld("open");
    } else if (name === "agent_joined") {
      setHeld("taken", data.agent);
      addMessage("notice", (data.agent || "Someone from our team") + " joined the conversation.", "agent-joined");
      nudge();
    } else if (name === "agent_message" && data.message) {
      var node = addMessage("agent", data.message.text, "message-agent");
      node.insertBefore(el("div", { class: "who", text: data.message.agent || "Support team" }), node.firstChild);
      node.setAttribute("data-message-id", data.message.id || "");
      nudge();
    } else if (name === "handoff_closed") {
      var who = held && held.agent;
      clearHeld();
      addMessage("notice", (who || "Our team") + " closed the conversation.", "handoff-closed");
      if (data.csat) askRating(data.handoff_id);
      else stopFollowing();
    } else if (name === "no_agent") {
      askEmail(data.handoff_id, data.message);
      nudge();
    }
  }

  function nudge() {
    if (panel.hidden) launcher.setAttribute("data-unread", "true");
  }

  function askRating(handoffId) {
    if (asked["rating:" + handoffId]) return;
    asked["rating:" + handoffId] = true;
    var node = addMessage("notice", "How did we do? Please rate this conversation.", "csat-prompt");
    node.setAttribute("data-handoff-id", handoffId || "");
    var row = el("div", { class: "rating", role: "group", "aria-label": "Your rating, 1 (poor) to 5 (great)" });
    var buttons = [];
    [1, 2, 3, 4, 5].forEach(function (rating) {
      var button = el("button", {
        type: "button",
        "aria-label": rating + " out of 5",
        "aria-pressed": "false",
        "data-testid": "csat-" + rating,
        text: String(rating),
      });
      button.addEventListener("click", function () {
        rate(rating, button);
      });
      buttons.push(button);
      row.appendChild(button);
    });
    node.appendChild(row);
    scrollToEnd();

    function thanks(text) {
      node.appendChild(el("div", { class: "hint", "data-testid": "csat-thanks", text: text }));
      stopFollowing();
      scrollToEnd();
    }
    function rate(rating, button) {
      buttons.forEach(function (b) {
        b.disabled = true;
      });
      request("/v1/support/sessions/" + encodeURIComponent(sessionId) + "/csat", { rating: rating }).then(
        function () {
          button.setAttribute("aria-pressed", "true");
          node.setAttribute("data-rating", String(rating));
          thanks("Thanks for rating us " + rating + " out of 5.");
        },
        function (err) {
          if (err.status === 409) return thanks("Thanks, we already have your rating.");
          buttons.forEach(function (b) {
            b.disabled = false;
          });
          showError(err.message);
        }
      );
    }
  }

  function askEmail(handoffId, message) {
    if (asked["email:" + handoffId]) return;
    asked["email:" + handoffId] = true;
    var node = addMessage(
      "notice",
      message || "Everyone on our team is busy right now. Leave your e-mail address and we'll answer you there.",
      "no-agent-notice"
    );
    var field = el("input", {
      type: "email",
      autocomplete: "email",
      maxlength: "254",
      placeholder: "you@example.com",
      "aria-label": "Your e-mail address",
      "data-testid": "contact-email",
    });
    var button = el("button", { type: "submit", "data-testid": "contact-send", text: "Send" });
    var contact = el("form", { class: "contact", "aria-label": "Leave your e-mail address" }, field, button);
    contact.addEventListener("submit", function (event) {
      event.preventDefault();
      var email = field.value.trim();
      if (!email) return field.focus();
      button.disabled = true;
      request("/v1/support/sessions/" + encodeURIComponent(sessionId) + "/contact", { email: email }).then(
        function (result) {
          contact.replaceWith(
            el("div", {
              class: "hint",
              "data-testid": "contact-thanks",
              text: (result && result.message) || "Thanks: we'll answer you by e-mail.",
            })
          );
        },
        function (err) {
          button.disabled = false;
          showError(err.message);
        }
      );
    });
    node.appendChild(contact);
    scrollToEnd();
  }

  // While a person holds the conversation: the message goes to them, and no bot answer is expected.
  function sendToPerson(text, userNode) {
    return ensureSession()
      .then(function (id) {
        return fetch(API + "/v1/support/sessions/" + encodeURIComponent(id) + "/messages", {
          method: "POST",
          headers: headers(),
          body: JSON.stringify({ message: text, stream: false }),
        }).then(null, networkError);
      })
      .then(function (response) {
        if (!response.ok) return errorFrom(response);
        return response.json().then(function (result) {
          if (response.status === 202 && result && result.held) {
            userNode.setAttribute("data-delivered", "person");
            var to = held && held.agent ? held.agent : "our team";
            userNode.appendChild(el("div", { class: "sent", "data-testid": "message-delivered", text: "Sent to " + to }));
            return;
          }
          clearHeld(); // the person had closed it a moment ago: the bot answered
          renderFinal(addMessage("assistant", "", "message-assistant"), result || {});
        });
      })
      .then(null, function (err) {
        showError(err && err.message ? err.message : "Something went wrong. Please try again.");
      });
  }

  // ---- open / close ----
  function open() {
    if (!panel.hidden) return;
    panel.hidden = false;
    launcher.removeAttribute("data-unread");
    launcher.setAttribute("aria-expanded", "true");
    launcher.setAttribute("aria-label", "Close support chat");
    launcher.innerHTML = CLOSE_ICON;
    if (!greeted) {
      greeted = true;
      addMessage("notice", GREETING, "message-greeting");
      ensureSession().then(null, function (err) {
        showError(err.message);
      });
    }
    input.focus();
  }

  function close() {
    if (panel.hidden) return;
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-label", "Open support chat");
    launcher.innerHTML = CHAT_ICON;
    launcher.focus();
  }

  launcher.addEventListener("click", function () {
    if (panel.hidden) open();
    else close();
  });
  closeButton.addEventListener("click", close);
  handoffButton.addEventListener("click", requestHandoff);
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    submit();
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault(); // Enter sends, Shift+Enter is a new line
      submit();
    }
  });
  panel.addEventListener("keydown", function (event) {
    if (event.key === "Escape") close();
  });

  sessionId = readStoredSession();
  if (sessionId && readFollowing()) follow(); // a person was on this conversation before the page changed

  function mount() {
    document.body.appendChild(host);
  }
  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);

  // Open the panel and send a question, as if typed (the host page's own search box can use it).
  function askFromPage(text) {
    open();
    input.value = String(text || "").slice(0, MAX_CHARS);
    submit();
  }

  window.SupportWidget = { open: open, close: close, ask: askFromPage };
})();
