/* Live catalog: opens the /ws/catalog/ socket named by #catalog-live[data-ws-url] and keeps image and copy states
 * current without polling. Elements carrying data-image-id / data-copy-id get their state chip
 * ([data-role=state]), progress bar ([data-role=progress]) and error text ([data-role=error]) updated in place;
 * when a state is final, the closest element with data-refresh-url is fetched again through htmx (its row partial),
 * so buttons such as "Retry" appear. Also: issues of the blueprint editor jump to their line when clicked, and a
 * dialog marked data-open-on-load opens (a form inside it came back with errors). */
(function () {
  "use strict";

  var CLOSE_UNAUTHENTICATED = 4401;
  var CLOSE_FORBIDDEN = 4403;
  var MIN_DELAY = 1000;
  var MAX_DELAY = 30000;
  var LABELS = {
    image: { importing: "Importing", ready: "Ready", failed: "Failed" },
    image_copy: {
      pending: "Queued", converting: "Converting", uploading: "Uploading", available: "Available", failed: "Failed",
    },
  };
  var ACTIVE = { importing: true, pending: true, converting: true, uploading: true };
  var TERMINAL = { ready: true, available: true, failed: true };

  function setProgress(el, state, progress) {
    var bar = el.querySelector("[data-role=progress]");
    if (!bar) {
      return;
    }
    var value = Math.max(0, Math.min(100, parseInt(progress, 10) || 0));
    bar.setAttribute("aria-valuenow", String(value));
    var inner = bar.querySelector(".progress-bar");
    if (inner) {
      inner.style.width = value + "%";
    }
    bar.classList.toggle("d-none", !ACTIVE[state]);
  }

  function setState(el, kind, state) {
    var chip = el.querySelector("[data-role=state]");
    if (!chip || !LABELS[kind][state]) {
      return;
    }
    chip.textContent = LABELS[kind][state];
    chip.className = chip.className.replace(/\bsky-state-\S+/g, "").trim() + " sky-state-" + state;
    el.setAttribute("data-state", state);
  }

  function setError(el, error) {
    var box = el.querySelector("[data-role=error]");
    if (!box) {
      return;
    }
    box.textContent = error || "";
    box.hidden = !error;
  }

  function refresh(el) {
    var url = el.getAttribute("data-refresh-url");
    if (!url || !window.htmx || el.getAttribute("data-refreshing")) {
      return;
    }
    el.setAttribute("data-refreshing", "1");
    window.htmx.ajax("GET", url, { target: el, swap: "outerHTML" });
  }

  function apply(message) {
    var kind = message.event;
    if (kind !== "image" && kind !== "image_copy") {
      return;
    }
    var attr = kind === "image" ? "data-image-id" : "data-copy-id";
    var id = String(message.id);
    var found = document.querySelectorAll("[" + attr + '="' + id.replace(/[^0-9]/g, "") + '"]');
    var toRefresh = [];
    Array.prototype.forEach.call(found, function (el) {
      setState(el, kind, message.state);
      setProgress(el, message.state, message.progress);
      setError(el, message.error);
      if (TERMINAL[message.state]) {
        var row = el.closest("[data-refresh-url]");
        if (row && toRefresh.indexOf(row) < 0) {
          toRefresh.push(row);
        }
      }
    });
    if (!found.length && kind === "image_copy" && message.image) {
      // a copy this page does not show yet (pushed from elsewhere): refresh its image's row
      var image = document.querySelector('[data-image-id="' + String(message.image).replace(/[^0-9]/g, "") +
        '"][data-refresh-url]');
      if (image) {
        toRefresh.push(image);
      }
    }
    toRefresh.forEach(refresh);
  }

  function start() {
    var live = document.getElementById("catalog-live");
    if (!live || !window.WebSocket || !window.JSON) {
      return;
    }
    var path = live.getAttribute("data-ws-url") || "/ws/catalog/";
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var url = scheme + window.location.host + path;
    var delay = MIN_DELAY;
    var stopped = false;
    var timer = null;
    var socket = null;

    function schedule() {
      if (stopped || timer !== null) {
        return;
      }
      var wait = Math.round(delay / 2 + Math.random() * (delay / 2));
      delay = Math.min(delay * 2, MAX_DELAY);
      timer = window.setTimeout(function () {
        timer = null;
        connect();
      }, wait);
    }

    function connect() {
      if (stopped) {
        return;
      }
      try {
        socket = new WebSocket(url);
      } catch (err) {
        schedule();
        return;
      }
      socket.addEventListener("open", function () {
        delay = MIN_DELAY;
      });
      socket.addEventListener("message", function (event) {
        var message;
        try {
          message = JSON.parse(event.data);
        } catch (err) {
          return;
        }
        if (!message || typeof message.type !== "string") {
          return;
        }
        if (message.type === "hello") {
          live.setAttribute("data-state", "live");
        } else if (message.type === "catalog.event") {
          apply(message);
        }
      });
      socket.addEventListener("close", function (event) {
        socket = null;
        live.removeAttribute("data-state");
        if (event.code === CLOSE_UNAUTHENTICATED || event.code === CLOSE_FORBIDDEN) {
          stopped = true; // the notification socket tells the person to sign in again
          return;
        }
        schedule();
      });
    }

    window.addEventListener("pagehide", function () {
      stopped = true;
      if (socket) {
        socket.close(1000);
      }
    });
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) {
        stopped = false;
        delay = MIN_DELAY;
        connect();
      }
    });
    connect();
  }

  function gotoLine(textarea, line) {
    var lines = textarea.value.split("\n");
    var n = Math.max(1, Math.min(lines.length, line));
    var startAt = 0;
    for (var i = 0; i < n - 1; i++) {
      startAt += lines[i].length + 1;
    }
    textarea.focus();
    textarea.setSelectionRange(startAt, startAt + lines[n - 1].length);
    var lineHeight = parseFloat(window.getComputedStyle(textarea).lineHeight) || 18;
    textarea.scrollTop = Math.max(0, (n - 3) * lineHeight);
  }

  document.addEventListener("click", function (event) {
    var issue = event.target.closest("[data-goto-line]");
    var textarea = document.querySelector("textarea.sky-source");
    if (issue && textarea) {
      gotoLine(textarea, parseInt(issue.getAttribute("data-goto-line"), 10) || 1);
    }
  });

  function init() {
    var dialog = document.querySelector(".modal[data-open-on-load]");
    if (dialog && window.bootstrap && window.bootstrap.Modal) {
      window.bootstrap.Modal.getOrCreateInstance(dialog).show();
    }
    start();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
