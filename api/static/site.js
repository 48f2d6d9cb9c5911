// Shared by every Onramp page: JSON posts with the CSRF header, and logging out.
(function () {
  "use strict";

  function cookie(name) {
    var prefix = name + "=";
    var found = document.cookie.split("; ").find(function (c) { return c.indexOf(prefix) === 0; });
    return found ? decodeURIComponent(found.slice(prefix.length)) : "";
  }

  // Resolves to {status, ok, data, headers}; rejects only when the network fails.
  async function request(method, url, body) {
    var headers = { Accept: "application/json" };
    var csrf = cookie("onramp_csrf");
    if (csrf) headers["X-CSRF-Token"] = csrf;
    var options = { method: method, headers: headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    var response = await fetch(url, options);
    var data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    return { status: response.status, ok: response.ok, data: data, headers: response.headers };
  }

  window.onramp = {
    cookie: cookie,
    getJSON: function (url) { return request("GET", url); },
    postJSON: function (url, body) { return request("POST", url, body || {}); },
  };

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.matches("form[data-logout]")) return;
    event.preventDefault();
    request("POST", "/api/auth/logout", {}).catch(function () { return null; }).then(function () {
      window.location.assign("/");
    });
  });
})();
