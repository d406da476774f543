// vpsd panel: small enhancements on top of plain HTML forms (no inline script: the page's
// Content-Security-Policy forbids it). htmx does the live refreshes.
(function () {
  "use strict";
  var NAME_RULE = /^[A-Za-z0-9_-]*$/;

  // htmx requests carry the session's CSRF token, like the forms' hidden field.
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = document.body.dataset.csrfToken || "";
  });

  // The page's name rule, checked as you type: letters, digits, '-' and '_'.
  function checkName(input) {
    var hint = document.getElementById(input.dataset.nameRule);
    var bad = !NAME_RULE.test(input.value);
    var message = "";
    if (bad) {
      var wrong = Array.from(new Set(input.value.replace(/[A-Za-z0-9_-]/g, "").split("")));
      var shown = wrong.map(function (c) { return c === " " ? "space" : "'" + c + "'"; });
      message = "Not allowed: " + shown.join(", ") + ". Use letters, digits, - and _ only.";
    }
    input.setCustomValidity(message);
    input.setAttribute("aria-invalid", bad ? "true" : "false");
    if (hint) {
      hint.textContent = bad ? message : "Letters, digits, - and _ only; up to 64 characters.";
      hint.classList.toggle("field-error", bad);
    }
  }
  document.addEventListener("input", function (event) {
    if (event.target.matches && event.target.matches("input[data-name-rule]")) {
      checkName(event.target);
    }
  });

  // Copy buttons: copy the text of the element named by data-copy.
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button[data-copy]");
    if (!button) return;
    var id = button.dataset.copy;
    var text = document.getElementById(id).textContent.trim();
    var status = document.querySelector('[data-copied-for="' + id + '"]');
    function said(message) { if (status) status.textContent = message; }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { said("Copied."); },
        function () { said("Select the text and copy it."); }
      );
    } else {
      var range = document.createRange();
      range.selectNodeContents(document.getElementById(id));
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      said("Selected: press Ctrl+C to copy.");
    }
  });

  // The console shows its latest lines, unless the reader scrolled up.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (target && target.id === "console") {
      target.dataset.atBottom = String(target.scrollHeight - target.scrollTop - target.clientHeight < 40);
    }
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail.target;
    if (target && target.id === "console" && target.dataset.atBottom !== "false") {
      target.scrollTop = target.scrollHeight;
    }
  });
})();
