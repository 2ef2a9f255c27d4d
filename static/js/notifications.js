/* Live notifications: opens the /ws/notifications/ socket named by #notifications-live[data-ws-url], keeps the
 * unread badge (#unread-count) current, shows a Bootstrap toast for each new notification and reconnects with
 * backoff. Does nothing on pages without #notifications-live (signed-out pages) or without WebSocket support.
 * Every message is also re-dispatched as a "skyport:live" DOM event (detail = the message) for page scripts. */
(function () {
  "use strict";

  var CLOSE_UNAUTHENTICATED = 4401;
  var CLOSE_FORBIDDEN = 4403;
  var MIN_DELAY = 1000;
  var MAX_DELAY = 30000;

  function start() {
    var live = document.getElementById("notifications-live");
    if (!live || !window.WebSocket || !window.JSON) {
      return;
    }
    var path = live.getAttribute("data-ws-url") || "/ws/notifications/";
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var url = /^wss?:\/\//.test(path) ? path : scheme + window.location.host + path;
    var delay = MIN_DELAY;
    var stopped = false;
    var timer = null;
    var socket = null;

    function setUnread(count) {
      var badge = document.getElementById("unread-count");
      if (!badge || typeof count !== "number") {
        return;
      }
      badge.textContent = String(count);
      badge.hidden = count === 0;
      var bell = document.getElementById("notifications-bell");
      if (bell) {
        bell.setAttribute("aria-label", "Notifications, " + count + " unread");
      }
    }

    function toastArea() {
      var area = live.querySelector(".toast-container");
      if (!area) {
        area = document.createElement("div");
        area.className = "toast-container position-fixed bottom-0 end-0 p-3";
        live.appendChild(area);
      }
      return area;
    }

    function safeLink(link) {
      // only same-site paths: a link is data, never a javascript: or off-site URL
      return typeof link === "string" && link.charAt(0) === "/" && link.charAt(1) !== "/" ? link : "";
    }

    function showToast(text, level, link, action) {
      var Toast = window.bootstrap && window.bootstrap.Toast;
      if (!Toast) {
        return;
      }
      var levels = { info: "primary", success: "success", warning: "warning", danger: "danger" };
      var dark = levels[level] !== "warning"; // light text on every background but the yellow one
      var toast = document.createElement("div");
      toast.className = "toast align-items-center border-0 text-bg-" + (levels[level] || "primary");
      toast.setAttribute("role", level === "danger" ? "alert" : "status");
      toast.setAttribute("aria-atomic", "true");
      var row = document.createElement("div");
      row.className = "d-flex";
      var body = document.createElement("div");
      body.className = "toast-body";
      var href = safeLink(link);
      if (href) {
        var a = document.createElement("a");
        a.href = href;
        a.className = dark ? "link-light" : "link-dark";
        a.textContent = text;
        body.appendChild(a);
      } else {
        body.textContent = text;
      }
      if (action) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "btn btn-light btn-sm ms-2";
        button.textContent = action.label;
        button.addEventListener("click", action.run);
        body.appendChild(button);
      }
      var close = document.createElement("button");
      close.type = "button";
      close.className = "btn-close me-2 m-auto" + (dark ? " btn-close-white" : "");
      close.setAttribute("data-bs-dismiss", "toast");
      close.setAttribute("aria-label", "Close");
      row.appendChild(body);
      row.appendChild(close);
      toast.appendChild(row);
      toastArea().appendChild(toast);
      toast.addEventListener("hidden.bs.toast", function () {
        toast.remove();
      });
      new Toast(toast, { autohide: !action, delay: 8000 }).show();
    }

    function signInAgain(message) {
      stopped = true;
      showToast(message, "warning", "", {
        label: "Sign in again",
        run: function () {
          window.location.reload();
        },
      });
    }

    function handle(message) {
      if (!message || typeof message.type !== "string") {
        return;
      }
      if (message.type === "hello") {
        live.setAttribute("data-state", "live"); // the server knows this page is listening
      }
      switch (message.type) {
        case "hello":
        case "notification.read":
          setUnread(message.unread);
          break;
        case "notification.new":
          setUnread(message.unread);
          showToast(String(message.text || ""), message.level, message.link);
          break;
        case "session.ended":
          signInAgain("Your session has ended (" + (message.reason || "signed out") + ").");
          break;
        case "token.revoked":
          stopped = true;
          break;
        default:
          break;
      }
      document.dispatchEvent(new CustomEvent("skyport:live", { detail: message }));
    }

    function schedule() {
      if (stopped || timer !== null) {
        return;
      }
      // full jitter: many tabs reconnecting after a server restart do not arrive at once
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
        handle(message);
      });
      socket.addEventListener("close", function (event) {
        socket = null;
        if (event.code === CLOSE_UNAUTHENTICATED) {
          signInAgain("You are signed out.");
          return;
        }
        if (event.code === CLOSE_FORBIDDEN) {
          stopped = true;
          return;
        }
        schedule();
      });
    }

    window.addEventListener("online", function () {
      if (!socket && !stopped) {
        if (timer !== null) {
          window.clearTimeout(timer);
          timer = null;
        }
        delay = MIN_DELAY;
        connect();
      }
    });
    window.addEventListener("pagehide", function () {
      stopped = true;
      if (socket) {
        socket.close(1000);
      }
    });
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) {
        // back/forward cache restored the page: its socket was closed on pagehide
        stopped = false;
        delay = MIN_DELAY;
        connect();
      }
    });
    connect();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
