// Get started: step 1 (details) then step 2 (track), checkout created through the JSON API.
(function () {
  "use strict";
  var form = document.getElementById("checkout-form");
  if (!form) return;
  var email = form.elements.email;
  var name = form.elements.name;
  var details = document.getElementById("step-details");
  var trackStep = document.getElementById("step-track");
  var trackTitle = document.getElementById("step-track-title");
  var echo = document.getElementById("email-echo");
  var echoValue = document.getElementById("email-echo-value");
  var change = document.getElementById("change-details");
  var formError = document.getElementById("form-error");
  var formStatus = document.getElementById("form-status");
  var enrollButtons = Array.prototype.slice.call(
    form.querySelectorAll("button[data-track], button[data-waitlist]"));
  var offer = form.elements.offer ? form.elements.offer.value : "";
  var EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

  function setError(input, message) {
    var el = document.getElementById(input.id + "-error");
    el.textContent = message || "";
    el.hidden = !message;
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  function emailProblem() {
    var value = email.value.trim();
    if (!value) return "Enter your email address.";
    return EMAIL.test(value) ? "" : "Enter a valid email address, like name@example.com.";
  }

  function nameProblem() {
    var value = name.value.trim();
    if (!value) return "Enter your name.";
    return value.length > 100 ? "Use at most 100 characters." : "";
  }

  function detailsValid() {
    var e = emailProblem();
    var n = nameProblem();
    setError(email, e);
    setError(name, n);
    if (e) email.focus();
    else if (n) name.focus();
    return !e && !n;
  }

  function showStep(step, moveFocus) {
    var onTrack = step === "track";
    details.hidden = onTrack;
    trackStep.hidden = !onTrack;
    if (onTrack) {
      echoValue.textContent = email.value.trim();
      echo.hidden = false;
      change.hidden = false;
      if (moveFocus) trackTitle.focus();
    } else if (moveFocus) {
      email.focus();
    }
  }

  function busy(button, on) {
    enrollButtons.forEach(function (b) {
      b.disabled = on;
      if (b.dataset.label) b.textContent = b.dataset.label;
    });
    if (on && button) {
      button.dataset.label = button.textContent;
      button.textContent = "Opening secure checkout…";
    }
  }

  // A field's mistake shows when the visitor leaves it, and clears as soon as it is
  // fixed while typing: clearing on blur would move the buttons under a pending click.
  [email, name].forEach(function (input) {
    function problem() { return input === email ? emailProblem() : nameProblem(); }
    input.addEventListener("blur", function () {
      if (input.value && problem()) setError(input, problem());
    });
    input.addEventListener("input", function () {
      if (input.hasAttribute("aria-invalid") && !problem()) setError(input, "");
    });
  });

  change.addEventListener("click", function () { showStep("details", true); });

  // A sold-out cohort (on the card, or found out at checkout): the card's button joins
  // its waitlist instead.
  function toWaitlist(button, cohort) {
    var track = button.dataset.track;
    delete button.dataset.track;
    button.dataset.waitlist = track;
    if (cohort) button.dataset.cohort = cohort;
    button.dataset.label = "Join the waitlist";
    button.textContent = "Join the waitlist";
    button.classList.add("btn-secondary");
  }

  async function joinWaitlist(button) {
    busy(button, true);
    button.textContent = "Joining the waitlist…";
    try {
      var r = await window.onramp.postJSON("/api/payments/waitlist/", {
        email: email.value.trim(), name: name.value.trim(),
        track: button.dataset.waitlist, cohort: button.dataset.cohort || undefined,
      });
      if (r.ok && r.data) {
        formStatus.textContent = r.data.created
          ? "You're on the waitlist for cohort " + r.data.cohort + ", place " + r.data.position +
            ". We've emailed you a confirmation; when a seat frees up we'll email you a link to take it."
          : "You're already on the waitlist for cohort " + r.data.cohort + " (place " + r.data.position + ").";
      } else {
        formError.textContent = (r.data && r.data.message) || "Something went wrong. Please try again.";
      }
    } catch (_) {
      formError.textContent = "We couldn't reach Onramp. Check your connection and try again.";
    }
    busy(null, false);
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    var button = event.submitter;
    var track = button && button.dataset.track;
    formError.textContent = "";
    formStatus.textContent = "";
    if (!detailsValid()) { showStep("details", false); return; }
    if (button && button.dataset.waitlist) { await joinWaitlist(button); return; }
    if (!track) { showStep("track", true); return; }
    busy(button, true);
    try {
      var body = { email: email.value.trim(), name: name.value.trim(), track: track };
      if (offer) body.offer = offer;
      else if (button.dataset.cohort) body.cohort = button.dataset.cohort;
      var r = await window.onramp.postJSON("/api/payments/create-anonymous-checkout/", body);
      if (r.ok && r.data && r.data.url) { window.location.assign(r.data.url); return; }
      if (r.status === 409 && r.data && r.data.waitlist) {
        busy(null, false);
        toWaitlist(button, r.data.cohort);
        formError.textContent = r.data.message;
        return;
      }
      var fields = (r.data && r.data.fields) || [];
      var shown = false;
      fields.forEach(function (f) {
        var input = f.field === "email" ? email : f.field === "name" ? name : null;
        if (!input) return;
        setError(input, String(f.message || "").replace(/^Value error, /, ""));
        if (!shown) { showStep("details", false); input.focus(); shown = true; }
      });
      if (!shown) {
        formError.textContent = (r.data && r.data.message) || "Something went wrong. Please try again.";
      }
    } catch (_) {
      formError.textContent = "We couldn't reach Onramp. Check your connection and try again.";
    }
    busy(null, false);
  });

  // Coming back from the checkout page with the Back button: make the buttons usable again.
  window.addEventListener("pageshow", function () { busy(null, false); });

  trackTitle.setAttribute("tabindex", "-1");
  showStep(!echo.hidden && !emailProblem() && !nameProblem() ? "track" : "details", false);
})();
