// Payment success: follows the enrollment's live progress stream until it is ready, then
// calls verify-session once (which logs this browser in) and moves on. When the stream is
// refused or lost it long-polls verify-session instead. Tokens arrive as HttpOnly cookies
// set by verify-session, never through the stream; this script never stores any.
(function () {
  "use strict";
  var STATE_TEXT = {
    done: "Done", skipped: "Skipped", running: "Working", retrying: "Retrying",
    failed: "Needs help", pending: "Waiting",
  };
  var TOOL_TEXT = {
    ready: "Ready", pending: "Being set up", failed: "Our team is finishing this",
    skipped: "Our team will contact you", disabled: "Disabled",
  };
  // Why this browser is not logged in automatically, by the cause verify-session gives.
  var LOGIN_REASONS = {
    other_browser:
      "This browser didn't start this checkout, so we can't log you in here. Log in, or " +
      "use the link in your welcome email to choose your password.",
    existing_account:
      "You already have an Onramp account with {email}, so we added this track to it. " +
      "Log in with your password to open your dashboard.",
    password_set:
      "A password has been chosen for {email} since this checkout. Log in with it.",
    already_used:
      "This checkout already logged a browser in once. Log in, or use the link in your " +
      "welcome email to choose your password.",
    logged_in: "You're logged in already.",
    expired:
      "The automatic login for this checkout has expired. Use the link in your welcome " +
      "email to choose your password, then log in.",
  };
  var MAX_DELAY = 8000;
  var SLOW_AFTER = 60000;
  var GIVE_UP_AFTER = 15 * 60000;

  var stepsEl = document.getElementById("steps");
  var summary = document.getElementById("summary");
  if (!stepsEl) return;

  // Read the checkout reference once, then take it out of the address bar and history.
  var params = new URLSearchParams(window.location.search);
  var sessionId = params.get("session_id") || (history.state && history.state.sessionId) || "";
  if (params.has("session_id")) {
    history.replaceState({ sessionId: sessionId }, "", window.location.pathname);
  }

  var startedAt = Date.now();
  var delay = 1000;
  var failures = 0;
  var lastDone = -1;
  var version = null; // what verify-session's long-poll waits to move past
  var LONG_POLL_SECONDS = 25;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function link(href, text, className) {
    var a = el("a", className === undefined ? "btn" : className, text);
    a.href = href;
    return a;
  }

  function stepItem(step) {
    var li = stepsEl.querySelector('li[data-key="' + CSS.escape(step.key) + '"]');
    if (!li) {
      li = el("li");
      li.dataset.key = step.key;
      stepsEl.appendChild(li);
    }
    return li;
  }

  function renderProgress(progress) {
    if (!progress || !progress.steps) return;
    var keys = progress.steps.map(function (s) { return s.key; });
    Array.prototype.slice.call(stepsEl.children).forEach(function (li) {
      if (keys.indexOf(li.dataset.key) === -1) li.remove();
    });
    progress.steps.forEach(function (step) {
      var li = stepItem(step);
      var signature = step.status + "|" + step.label + "|" + (step.detail || "");
      if (li.dataset.signature === signature) return; // unchanged: don't re-announce
      li.dataset.signature = signature;
      li.replaceChildren();
      li.appendChild(el("span", "state state-" + step.status, STATE_TEXT[step.status] || "Waiting"));
      var label = el("span", "", step.label);
      if (step.detail && step.status !== "failed") label.appendChild(el("span", "step-detail", step.detail));
      li.appendChild(label);
    });
    if (progress.steps_done !== lastDone) {
      lastDone = progress.steps_done;
      var text = progress.steps_done + " of " + progress.steps_total + " steps done.";
      if (progress.current_step_label) text += " Now: " + progress.current_step_label + ".";
      summary.textContent = text;
    }
    if (progress.needs_attention) {
      showProblem(
        "Part of your setup needs our team",
        "One of your tools didn't set up on its own. Our team has been told and will finish it; the rest carries on.",
        []
      );
    }
  }

  function renderTools(tools) {
    if (!tools || !tools.length) return;
    var list = document.getElementById("tool-list");
    list.replaceChildren();
    tools.forEach(function (tool) {
      var li = el("li");
      var head = el("div", "tool-head");
      head.appendChild(el("h3", "", tool.label));
      var ready = tool.status === "ready";
      head.appendChild(el("span", ready ? "badge badge-ok" : "badge", TOOL_TEXT[tool.status] || tool.status));
      if (tool.development) head.appendChild(el("span", "badge badge-dev", "Development stand-in"));
      li.appendChild(head);
      if (ready && /^https?:\/\//.test(tool.url || "")) {
        var p = el("p");
        p.appendChild(link(tool.url, "Open " + tool.label, ""));
        li.appendChild(p);
      }
      list.appendChild(li);
    });
    document.getElementById("tools").hidden = false;
  }

  function reloadButton() {
    var button = el("button", "btn", "Try again");
    button.type = "button";
    button.addEventListener("click", function () { window.location.reload(); });
    return button;
  }

  function showProblem(title, text, actions) {
    document.getElementById("problem-title").textContent = title;
    var textEl = document.getElementById("problem-text");
    textEl.textContent = text;
    textEl.hidden = !text;
    var box = document.getElementById("problem-actions");
    box.replaceChildren.apply(box, actions);
    box.hidden = !actions.length;
    document.getElementById("problem").hidden = false;
  }

  function stop(title, text, actions) {
    document.getElementById("success-title").textContent = title;
    summary.textContent = text;
    if (lastDone === -1) stepsEl.hidden = true; // only the placeholder step: nothing to show
    showProblem("What you can do", "", actions);
  }

  function showNext(title, text, actions) {
    document.getElementById("next-title").textContent = title;
    document.getElementById("next-text").textContent = text;
    var box = document.getElementById("next-actions");
    box.replaceChildren.apply(box, actions);
    document.getElementById("next").hidden = false;
  }

  function goToDashboard() {
    document.getElementById("success-title").textContent = "You're enrolled!";
    summary.textContent = "Your account is ready. Taking you to your dashboard…";
    showNext(
      "You're all set",
      "Your account is ready and you are logged in. Your dashboard opens in a moment.",
      [link("/student/dashboard", "Go to your dashboard now")]
    );
    setTimeout(function () { window.location.assign("/student/dashboard"); }, 2500);
  }

  async function offerLogin(data) {
    // Already logged in (e.g. this page was reloaded): nothing to ask.
    try {
      var me = await window.onramp.getJSON("/api/auth/me");
      if (me.ok) { goToDashboard(); return; }
    } catch (_) { /* fall through to the login offer */ }
    var email = (data.user && data.user.email) || "your email";
    var why = LOGIN_REASONS[data.login_reason] || LOGIN_REASONS.other_browser;
    document.getElementById("success-title").textContent = "You're enrolled!";
    summary.textContent = "Payment received and your enrollment is ready. Please log in.";
    showNext(
      "Log in to continue",
      why.replace("{email}", email),
      [
        link("/login?next=/student/dashboard", "Log in"),
        link("/forgot-password", "Forgot your password?", "btn btn-secondary"),
      ]
    );
  }

  function schedule(response) {
    var retryAfter = response ? Number(response.headers.get("Retry-After")) * 1000 : 0;
    var wait = Math.max(delay, retryAfter || 0);
    // A long-poll already waited on the server: no need to back off between them.
    if (!version) delay = Math.min(Math.round(delay * 1.5), MAX_DELAY);
    if (Date.now() - startedAt > GIVE_UP_AFTER) {
      stop(
        "This is taking longer than usual",
        "Your payment is safe and we'll email you as soon as your account is ready. You can close this page.",
        [link("/login", "Log in"), link("/", "Back to home", "btn btn-secondary")]
      );
      return;
    }
    setTimeout(poll, wait);
  }

  async function poll() {
    var response;
    var data = null;
    try {
      var url = "/api/payments/verify-session/?session_id=" + encodeURIComponent(sessionId);
      if (version) url += "&wait=" + LONG_POLL_SECONDS + "&since=" + encodeURIComponent(version);
      response = await fetch(
        url,
        { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" }
      );
      try { data = await response.json(); } catch (_) { data = null; }
    } catch (_) {
      failures += 1;
      summary.textContent = "We lost the connection for a moment; trying again…";
      schedule(null);
      return;
    }
    if (response.status === 200 && data) {
      renderProgress(data.progress);
      renderTools(data.tools);
      if (data.login_required === false) goToDashboard();
      else offerLogin(data);
      return;
    }
    if (response.status === 202 && data) {
      failures = 0;
      version = data.version || null;
      renderProgress(data.progress);
      var waitingForPayment = data.progress && data.progress.current_step === "payment";
      if (waitingForPayment && Date.now() - startedAt > SLOW_AFTER) {
        showProblem(
          "We haven't received your payment yet",
          "If your card was declined, go back to the checkout page and try another card, or start again. We keep checking in the meantime.",
          [link("/get-started", "Start again", "btn btn-secondary")]
        );
      }
      schedule(response);
      return;
    }
    if (response.status === 410) {
      stop(
        "This checkout has expired",
        "It expired before payment, so you haven't been charged. Start again to enroll.",
        [link("/get-started", "Start again")]
      );
      return;
    }
    if (response.status === 400 || response.status === 404) {
      stop(
        "We couldn't find this checkout",
        "The link may be incomplete. If you paid, your welcome email has everything you need; otherwise start again.",
        [link("/get-started", "Start again"), link("/login", "Log in", "btn btn-secondary")]
      );
      return;
    }
    failures += 1;
    summary.textContent = "We're having trouble confirming right now; trying again…";
    if (failures > 8) {
      stop(
        "We can't confirm your enrollment right now",
        "Your payment is safe. Refresh this page in a minute, or check your email.",
        [reloadButton()]
      );
      return;
    }
    schedule(response);
  }

  if (!sessionId) {
    stop(
      "We couldn't find this checkout",
      "The link is missing its checkout reference. If you paid, your welcome email has everything you need.",
      [link("/get-started", "Start again"), link("/login", "Log in", "btn btn-secondary")]
    );
    return;
  }
  // One stream per enrollment: each step as it changes, then `ready` (or `end`: a person
  // decides), after which verify-session is read once. Refused (429, 503) or lost: poll.
  function follow() {
    if (!window.EventSource) { poll(); return; }
    var stream = new EventSource(
      "/api/payments/progress-stream/?session_id=" + encodeURIComponent(sessionId)
    );
    var over = false;
    function toVerifySession() {
      if (over) return;
      over = true;
      stream.close();
      poll();
    }
    stream.addEventListener("progress", function (event) {
      var data = JSON.parse(event.data);
      version = data.version || null;
      renderProgress(data.progress);
    });
    stream.addEventListener("ready", function (event) {
      renderProgress(JSON.parse(event.data).progress);
      version = null; // the next verify-session answers at once
      toVerifySession();
    });
    stream.addEventListener("end", function () { version = null; toVerifySession(); });
    stream.onerror = toVerifySession;
  }

  follow();
})();
