/* Small behaviours for the server-rendered pages. Everything works without it; it only adds comfort. */
(function () {
  "use strict";

  // Copy buttons: <button data-copy-target="element-id">
  function flashLabel(button, text) {
    var original = button.textContent;
    button.textContent = text;
    window.setTimeout(function () { button.textContent = original; }, 2000);
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) return;
    var target = document.getElementById(button.dataset.copyTarget);
    if (!target) return;
    var text = "value" in target ? target.value : target.textContent;
    var fallback = function () {
      if (target.select) target.select();
      try { document.execCommand("copy"); flashLabel(button, button.dataset.copiedLabel || "Copied"); }
      catch (e) { flashLabel(button, "Press Ctrl+C"); }
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () {
        flashLabel(button, button.dataset.copiedLabel || "Copied");
      }, fallback);
    } else {
      fallback();
    }
  });

  // Plain forms that destroy something ask first: <form data-confirm="...">
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form && form.dataset ? form.dataset.confirm : null;
    if (question && !window.confirm(question)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  // htmx does not swap error responses: say what happened instead of doing nothing.
  var errorBox = document.getElementById("htmx-error");
  document.addEventListener("htmx:responseError", function (event) {
    if (!errorBox) return;
    var status = event.detail.xhr ? event.detail.xhr.status : 0;
    var text = status === 403 ? "You are not allowed to do this with your role."
      : status === 404 ? "This no longer exists, or it is not yours to see. Reload the page."
      : "Something went wrong (" + status + "). Reload the page and try again.";
    errorBox.textContent = text;
    errorBox.hidden = false;
  });
  document.addEventListener("htmx:sendError", function () {
    if (!errorBox) return;
    errorBox.textContent = "Skyport cannot be reached. Check your connection and try again.";
    errorBox.hidden = false;
  });
  document.addEventListener("htmx:beforeRequest", function () {
    if (errorBox) errorBox.hidden = true;
  });

  // The live notification stream calls this to update the bell.
  window.skyport = window.skyport || {};
  window.skyport.setUnreadCount = function (count) {
    var badge = document.getElementById("unread-count");
    var bell = document.getElementById("notifications-bell");
    var n = Math.max(0, parseInt(count, 10) || 0);
    if (badge) { badge.textContent = String(n); badge.hidden = n === 0; }
    if (bell) bell.setAttribute("aria-label", "Notifications, " + n + " unread");
  };
})();
