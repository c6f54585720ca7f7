/* imagectl catalogue site: filters, freshness and copy buttons. Reads data only from the page's own DOM and
   writes it only with textContent and attributes (never innerHTML): every string here came from metadata. */
"use strict";
(function () {
  var KEYS = ["q", "os", "release", "arch", "hypervisor", "format", "channel", "status"];

  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  function span(ms) {
    var minutes = Math.round(Math.abs(ms) / 60000);
    if (minutes < 120) { return plural(minutes, "minute"); }
    var hours = Math.round(minutes / 60);
    if (hours < 48) { return plural(hours, "hour"); }
    return plural(Math.round(hours / 24), "day");
  }

  /* "signed, expires in 5 days", computed when the page is viewed: red once the expiry has passed. */
  function freshness() {
    var el = document.getElementById("expiry");
    if (!el) { return; }
    var expires = Date.parse(el.getAttribute("data-expires") || "");
    if (isNaN(expires)) { return; }
    var left = expires - Date.now();
    var expired = left <= 0;
    el.classList.toggle("expired", expired);
    el.classList.toggle("ok", !expired);
    el.setAttribute("data-state", expired ? "expired" : "ok");
    var text = el.querySelector(".expiry-text");
    if (text) {
      text.textContent = expired
        ? "EXPIRED " + span(left) + " ago: clients refuse this catalogue until it is re-signed"
        : "signed, expires in " + span(left);
    }
  }

  function readState() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    var state = {};
    KEYS.forEach(function (k) { state[k] = params.get(k) || ""; });
    return state;
  }

  function writeState(state) {
    var params = new URLSearchParams();
    KEYS.forEach(function (k) { if (state[k]) { params.set(k, state[k]); } });
    var hash = params.toString();
    if (hash !== location.hash.replace(/^#/, "")) {
      history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
    }
  }

  function filters() {
    var form = document.getElementById("filters");
    var table = document.getElementById("images");
    if (!form || !table) { return; }
    var rows = Array.prototype.map.call(table.tBodies[0].rows, function (tr) {
      var d = tr.dataset;
      var release = d.release || "";
      var channels = d.channels || "";
      var q = [d.q, release, d.arch, d.hypervisor, d.format, d.status, channels].join(" ").toLowerCase();
      return { el: tr, q: q, os: release.split(" ")[0], release: release, arch: d.arch, hypervisor: d.hypervisor,
               format: d.format, channels: channels, status: d.status };
    });
    var count = document.getElementById("count");
    var none = document.getElementById("none");

    function apply(state) {
      var t0 = performance.now();
      var words = state.q.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      rows.forEach(function (r) {
        var ok = words.every(function (w) { return r.q.indexOf(w) !== -1; }) &&
          ["os", "release", "arch", "hypervisor", "format", "status"].every(function (k) {
            return !state[k] || r[k] === state[k];
          }) &&
          (!state.channel || r.channels.indexOf(" " + state.channel + " ") !== -1);
        if (r.el.hidden === ok) { r.el.hidden = !ok; }
        if (ok) { shown += 1; }
      });
      count.textContent = "Showing " + shown + " of " + rows.length + " rows";
      none.hidden = shown !== 0;
      document.documentElement.setAttribute("data-shown", String(shown));
      document.documentElement.setAttribute("data-filter-ms", (performance.now() - t0).toFixed(1));
    }

    function fromForm() {
      var state = {};
      KEYS.forEach(function (k) { state[k] = form.elements[k].value; });
      return state;
    }

    function toForm(state) {
      KEYS.forEach(function (k) { form.elements[k].value = state[k]; });
    }

    form.hidden = false;
    form.addEventListener("submit", function (ev) { ev.preventDefault(); });
    form.addEventListener("input", function () { var s = fromForm(); writeState(s); apply(s); });
    form.addEventListener("change", function () { var s = fromForm(); writeState(s); apply(s); });
    form.addEventListener("reset", function () {
      setTimeout(function () { var s = fromForm(); writeState(s); apply(s); }, 0);
    });
    window.addEventListener("hashchange", function () { var s = readState(); toForm(s); apply(s); });
    var initial = readState();
    toForm(initial);
    apply(initial); /* from the URL, even where a select has no such option: then nothing matches, as asked */
  }

  function copyButtons() {
    Array.prototype.forEach.call(document.querySelectorAll("button.copy"), function (button) {
      var label = button.textContent;
      button.hidden = false;
      button.addEventListener("click", function () {
        var code = document.getElementById(button.getAttribute("data-copy"));
        if (!code) { return; }
        function done(ok) {
          button.textContent = ok ? "Copied" : "Select and copy the text";
          setTimeout(function () { button.textContent = label; }, 2000);
        }
        function fallback() {
          var range = document.createRange();
          range.selectNodeContents(code);
          var sel = window.getSelection();
          sel.removeAllRanges();
          sel.addRange(range);
          var ok = false;
          try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
          done(ok);
        }
        if (navigator.clipboard && navigator.clipboard.writeText) {
          navigator.clipboard.writeText(code.textContent).then(function () { done(true); }, fallback);
        } else {
          fallback();
        }
      });
    });
  }

  function start() {
    freshness();
    filters();
    copyButtons();
    setInterval(freshness, 60000);
    document.documentElement.setAttribute("data-ready-ms", performance.now().toFixed(1));
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
