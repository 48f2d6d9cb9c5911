// Log in, forgot password and set password: each form posts JSON to the auth API.
(function () {
  "use strict";

  function say(id, text) {
    var el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  function messageOf(r, fallback) {
    return (r.data && r.data.message) || fallback;
  }

  var NETWORK = "We couldn't reach Onramp. Check your connection and try again.";

  var login = document.getElementById("login-form");
  if (login && window.onramp.cookie("onramp_csrf")) {
    // The short-lived access cookie expired but the login may still be valid: renew it
    // (the refresh cookie is only sent to /api/auth/) and carry on where the student was.
    window.onramp.postJSON("/api/auth/refresh", {}).then(function (r) {
      if (r.ok) window.location.replace(login.dataset.next || "/student/dashboard");
    }).catch(function () { return null; });
  }
  if (login) {
    login.addEventListener("submit", async function (event) {
      event.preventDefault();
      var email = login.elements.email.value.trim();
      var password = login.elements.password.value;
      if (!email || !password) {
        say("login-error", "Enter your email and your password.");
        (email ? login.elements.password : login.elements.email).focus();
        return;
      }
      say("login-error", "");
      try {
        var r = await window.onramp.postJSON("/api/auth/login", { email: email, password: password });
        if (r.ok) { window.location.assign(login.dataset.next || "/student/dashboard"); return; }
        if (r.status === 429) say("login-error", "Too many attempts. Wait a minute and try again.");
        else if (r.status === 400 || r.status === 401) say("login-error", "That email and password don't match. Try again, or reset your password.");
        else say("login-error", messageOf(r, "Something went wrong. Please try again."));
      } catch (_) {
        say("login-error", NETWORK);
      }
    });
  }

  var forgot = document.getElementById("forgot-form");
  if (forgot) {
    forgot.addEventListener("submit", async function (event) {
      event.preventDefault();
      var email = forgot.elements.email.value.trim();
      if (!email) { say("forgot-error", "Enter your email address."); forgot.elements.email.focus(); return; }
      say("forgot-error", "");
      try {
        var r = await window.onramp.postJSON("/api/auth/forgot-password", { email: email });
        if (r.ok) {
          forgot.hidden = true;
          document.getElementById("forgot-done").hidden = false;
          return;
        }
        say("forgot-error", r.status === 429 ? "Too many requests. Wait a minute and try again." : messageOf(r, "Something went wrong. Please try again."));
      } catch (_) {
        say("forgot-error", NETWORK);
      }
    });
  }

  var setForm = document.getElementById("set-password-form");
  if (window.location.search.indexOf("token=") !== -1) {
    // The one-time token must not stay in the address bar, history or referrers.
    history.replaceState(null, "", window.location.pathname);
  }
  if (setForm) {
    setForm.addEventListener("submit", async function (event) {
      event.preventDefault();
      var password = setForm.elements.password.value;
      if (password.length < 10) { say("set-password-error", "Use at least 10 characters."); setForm.elements.password.focus(); return; }
      if (password !== setForm.elements.password2.value) { say("set-password-error", "The two passwords don't match."); setForm.elements.password2.focus(); return; }
      say("set-password-error", "");
      try {
        var r = await window.onramp.postJSON("/api/auth/set-password", { token: setForm.elements.token.value, password: password });
        if (r.ok) { window.location.assign("/student/dashboard"); return; }
        say("set-password-error", messageOf(r, "This link has expired or was already used. Ask for a new one from the log in page."));
      } catch (_) {
        say("set-password-error", NETWORK);
      }
    });
  }
})();
