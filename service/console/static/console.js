// counterfeit-scan console: drag-and-drop onto file inputs. Everything else is plain HTML and htmx.
"use strict";
(function () {
  function describe(input) {
    var names = Array.prototype.map.call(input.files || [], function (f) { return f.name; });
    if (names.length === 0) { return ""; }
    if (names.length > 3) { return names.length + " files: " + names.slice(0, 3).join(", ") + ", …"; }
    return names.join(", ");
  }

  function setUp(zone) {
    if (zone.dataset.ready) { return; }
    zone.dataset.ready = "true";
    var input = zone.querySelector("input[type=file]");
    var chosen = zone.querySelector("[data-chosen]");
    var form = zone.closest("form");
    if (!input || !form) { return; }
    function show() { if (chosen) { chosen.textContent = describe(input); } }
    input.addEventListener("change", show);
    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (event) {
        event.preventDefault();
        zone.classList.add("over");
      });
    });
    ["dragleave", "dragend"].forEach(function (type) {
      zone.addEventListener(type, function () { zone.classList.remove("over"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("over");
      if (!event.dataTransfer || event.dataTransfer.files.length === 0) { return; }
      input.files = event.dataTransfer.files;
      show();
      // Dropping is choosing and sending: the form's own validation still applies (brand, product, ...).
      if (form.reportValidity()) { form.requestSubmit(); }
    });
  }

  function init(root) {
    (root || document).querySelectorAll("[data-dropzone]").forEach(setUp);
  }

  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:load", function (event) { init(event.target); });
  // A finished upload clears the chosen files, so the next drop starts afresh.
  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.target.closest && event.target.closest("form");
    if (form && event.detail.successful && form.querySelector("[data-dropzone]")) {
      form.querySelectorAll("input[type=file]").forEach(function (input) { input.value = ""; });
      form.querySelectorAll("[data-chosen]").forEach(function (p) { p.textContent = ""; });
    }
  });
})();
