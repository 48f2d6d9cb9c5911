// Dashboard: show a tool's login details on demand, fetched when asked and never stored.
(function () {
  "use strict";

  function row(list, term, value) {
    var dt = document.createElement("dt");
    dt.textContent = term;
    var dd = document.createElement("dd");
    dd.textContent = value;
    list.appendChild(dt);
    list.appendChild(dd);
  }

  function humanise(key) {
    var text = key.replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  document.querySelectorAll("form.reveal").forEach(function (form) {
    var tool = form.dataset.tool;
    var button = form.querySelector("button");
    var label = button.querySelector(".label");
    var panel = document.getElementById("credentials-" + tool);

    function setOpen(open) {
      button.setAttribute("aria-expanded", open ? "true" : "false");
      label.textContent = open ? "Hide" : "Show";
      panel.hidden = !open;
      if (!open) panel.replaceChildren();
    }

    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      if (button.getAttribute("aria-expanded") === "true") { setOpen(false); return; }
      button.disabled = true;
      try {
        var r = await window.onramp.getJSON("/api/student/tools/" + encodeURIComponent(tool) + "/credentials");
        if (r.status === 401) {
          window.location.assign("/login?next=/student/dashboard");
          return;
        }
        panel.replaceChildren();
        if (r.ok && r.data) {
          var list = document.createElement("dl");
          row(list, "Username", r.data.username);
          row(list, "Password", r.data.password);
          Object.keys(r.data.details || {}).forEach(function (key) {
            row(list, humanise(key), r.data.details[key]);
          });
          panel.appendChild(list);
        } else {
          var p = document.createElement("p");
          p.className = "error-text";
          p.textContent = (r.data && r.data.message) || "We couldn't load these details. Try again.";
          panel.appendChild(p);
        }
        button.setAttribute("aria-expanded", "true");
        label.textContent = "Hide";
        panel.hidden = false;
      } catch (_) {
        setOpen(false);
      } finally {
        button.disabled = false;
      }
    });
  });
})();
