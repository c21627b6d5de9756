// abha-bulk console: the one script. On a batch page it polls the batch's progress every
// 2 s and updates the bar, counts, rate and ETA; it stops once nothing is left to run.
// Served from /console/app.js so the Content-Security-Policy can forbid inline script.
"use strict";
(function () {
  var bar = document.getElementById("progress");
  if (!bar) {
    return;
  }
  var src = bar.getAttribute("data-src");
  function set(id, text) {
    var el = document.getElementById(id);
    if (el) {
      el.textContent = text;
    }
  }
  function show(p) {
    bar.max = Math.max(p.total, 1);
    bar.value = p.done;
    set("progress-text", p.text);
    set("rate", p.rate_text);
    set("eta", p.eta_text);
    set("share", p.share_text);
    set("state", p.state);
    // A state with no rows is absent from the counts: show it as 0.
    var counts = p.counts || {};
    document.querySelectorAll("[id^='count-']").forEach(function (el) {
      el.textContent = String(counts[el.id.slice(6)] || 0);
    });
    bar.setAttribute("data-done", p.open === 0 && p.state !== "submitting" ? "true" : "false");
  }
  function poll() {
    fetch(src, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) {
          throw new Error("HTTP " + r.status);
        }
        return r.json();
      })
      .then(function (p) {
        show(p);
        if (p.open > 0 || p.state === "submitting" || p.state === "active") {
          window.setTimeout(poll, 2000);
        }
      })
      .catch(function () {
        window.setTimeout(poll, 2000);
      });
  }
  poll();
})();
