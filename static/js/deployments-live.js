/* Live deployments: keeps deployment and instance states on the page current through the /ws/deployments/ socket.
 *
 * Load with <script src=".../deployments-live.js" defer data-ws-url="/ws/deployments/" data-labels='{...}'>.
 * data-labels (optional) maps state values to the words shown: {"deployment": {"active": "Active"}, "instance":
 * {"running": "Running"}} or one flat {"active": "Active", ...}; without a label the raw value is shown.
 *
 * DOM contract:
 *   [data-live-deployment="<id>"][data-sequence="<n>"]  watched. An event numbered n+1 moves data-sequence on; a
 *       jump (a missed event), a server that is ahead when the watch starts (the page went stale, or the socket was
 *       away) or a deployment the socket may no longer see fetches the element's data-refresh-url (an HTML fragment
 *       holding the same element) and replaces the element with it, taking the sequence from the fetched element.
 *   [data-deployment-state="<id>"] / [data-instance-state="<id>"]  textContent = label, class state-<value>.
 *   [data-live-list="<url>"]  a list: re-fetched (innerHTML replaced, debounced) when an event arrives for a
 *       deployment it does not show, after a reconnect and when the user's roles change. data-live-project="1,2"
 *       (optional) limits that to events of those projects.
 *   <body data-live-status="connecting|live|offline">  for a badge.
 * Page scripts: window.SkyportLive.onEvent(fn) calls fn(message) for every deployment.event and returns a function
 * that stops it.
 */
(() => {
  "use strict";

  const CLOSE_UNAUTHENTICATED = 4401;
  const CLOSE_FORBIDDEN = 4403;
  const MIN_DELAY = 1000;
  const MAX_DELAY = 30000;
  const PING_EVERY = 20000;
  const LIST_DEBOUNCE = 1000;
  const RESCAN_DEBOUNCE = 50;

  const script = document.currentScript || document.querySelector("script[src*='deployments-live']");
  const wsPath = (script && script.getAttribute("data-ws-url")) || "/ws/deployments/";
  const labels = readLabels();

  const listeners = new Set();
  const watched = new Set(); // ids a watch was sent for on this socket
  const refused = new Set(); // ids this socket may not watch: asking again would loop through refresh
  const known = new Map(); // id → highest sequence applied to the state elements
  const refreshing = new Map(); // element → events that arrived while it was being fetched
  const retryDelay = new WeakMap(); // element → next retry delay after a failed fetch
  const lists = new Map(); // list container → {timer, busy, again}

  let socket = null;
  let live = false;
  let stopped = false;
  let delay = MIN_DELAY;
  let reconnectTimer = null;
  let pingTimer = null;
  let connectedBefore = false;
  let rescanTimer = null;

  function readLabels() {
    const raw = script && script.getAttribute("data-labels");
    if (!raw) {
      return {};
    }
    try {
      const parsed = JSON.parse(raw);
      return parsed && typeof parsed === "object" ? parsed : {};
    } catch (err) {
      return {};
    }
  }

  function label(kind, value) {
    const scoped = labels[kind];
    if (scoped && typeof scoped === "object" && typeof scoped[value] === "string") {
      return scoped[value];
    }
    return typeof labels[value] === "string" ? labels[value] : String(value);
  }

  const digits = (value) => String(value == null ? "" : value).replace(/[^0-9]/g, "");
  const byAttr = (root, attr, id) => Array.from(root.querySelectorAll(`[${attr}="${id}"]`));

  function setStatus(status) {
    if (document.body) {
      document.body.setAttribute("data-live-status", status);
    }
  }

  // --- state elements ---------------------------------------------------------------------------------------------
  function showState(attr, kind, id, value) {
    if (!id || typeof value !== "string" || !value) {
      return;
    }
    const safe = value.toLowerCase().replace(/[^a-z0-9_-]/g, "");
    for (const el of byAttr(document, attr, id)) {
      el.textContent = label(kind, value);
      for (const name of Array.from(el.classList)) {
        if (name.startsWith("state-")) {
          el.classList.remove(name);
        }
      }
      el.classList.add(`state-${safe}`);
    }
  }

  // --- watched elements -------------------------------------------------------------------------------------------
  function sequenceOf(el) {
    const n = parseInt(el.getAttribute("data-sequence"), 10);
    return Number.isNaN(n) ? null : n;
  }

  function advance(el, message) {
    if (refreshing.has(el)) {
      refreshing.get(el).push(message);
      return;
    }
    const last = sequenceOf(el);
    if (last !== null && message.sequence <= last) {
      return; // already shown
    }
    if (last !== null && message.sequence === last + 1) {
      el.setAttribute("data-sequence", String(message.sequence));
      return;
    }
    refresh(el, [message]); // a jump: something was missed
  }

  async function refresh(el, queued = []) {
    if (refreshing.has(el)) {
      refreshing.get(el).push(...queued);
      return;
    }
    const url = el.getAttribute("data-refresh-url");
    const id = digits(el.getAttribute("data-live-deployment"));
    if (!url) {
      // nothing to fetch: follow the newest number so later events apply again
      const newest = Math.max(sequenceOf(el) || 0, ...queued.map((m) => m.sequence));
      el.setAttribute("data-sequence", String(newest));
      return;
    }
    refreshing.set(el, [...queued]);
    let fresh = null;
    let gone = false;
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "text/html", "X-Requested-With": "XMLHttpRequest" },
      });
      if (response.redirected) {
        gone = true; // sent to the sign-in page: the socket tells the person
      } else if (response.status === 403 || response.status === 404 || response.status === 410) {
        gone = true;
      } else if (response.ok) {
        const template = document.createElement("template");
        template.innerHTML = await response.text();
        fresh = template.content.querySelector(`[data-live-deployment="${id}"]`) ||
          template.content.firstElementChild;
      }
    } catch (err) {
      fresh = null;
    }
    const pending = refreshing.get(el) || [];
    refreshing.delete(el);
    if (gone) {
      el.removeAttribute("data-live-deployment");
      el.setAttribute("data-live-gone", "");
      scheduleRescan();
      return;
    }
    if (!fresh || !el.isConnected) {
      if (el.isConnected) {
        retryLater(el, pending);
      }
      return;
    }
    retryDelay.delete(el);
    el.replaceWith(fresh);
    const target = fresh.matches(`[data-live-deployment="${id}"]`) ? fresh : null;
    if (target) {
      pending.sort((a, b) => a.sequence - b.sequence).forEach((m) => advance(target, m));
    }
    scheduleRescan();
  }

  function retryLater(el, pending) {
    const wait = retryDelay.get(el) || 2000;
    retryDelay.set(el, Math.min(wait * 2, MAX_DELAY));
    window.setTimeout(() => {
      if (el.isConnected && el.hasAttribute("data-live-deployment")) {
        refresh(el, pending);
      }
    }, wait);
  }

  // --- lists ------------------------------------------------------------------------------------------------------
  function listWants(container, message) {
    const projects = container.getAttribute("data-live-project");
    if (projects && !projects.split(",").map(digits).includes(digits(message.project))) {
      return false;
    }
    const id = digits(message.deployment);
    return !container.querySelector(`[data-live-deployment="${id}"], [data-deployment-state="${id}"]`);
  }

  function reloadList(container) {
    let entry = lists.get(container);
    if (!entry) {
      entry = { timer: null, busy: false, again: false };
      lists.set(container, entry);
    }
    if (entry.busy) {
      entry.again = true;
      return;
    }
    if (entry.timer !== null) {
      return;
    }
    entry.timer = window.setTimeout(async () => {
      entry.timer = null;
      entry.busy = true;
      try {
        const response = await fetch(container.getAttribute("data-live-list"), {
          credentials: "same-origin",
          cache: "no-store",
          headers: { Accept: "text/html", "X-Requested-With": "XMLHttpRequest" },
        });
        if (response.ok && !response.redirected && container.isConnected) {
          container.innerHTML = await response.text();
          scheduleRescan();
        }
      } catch (err) {
        // offline: the next event or reconnect tries again
      }
      entry.busy = false;
      if (entry.again) {
        entry.again = false;
        reloadList(container);
      }
    }, LIST_DEBOUNCE);
  }

  function reloadAllLists() {
    document.querySelectorAll("[data-live-list]").forEach(reloadList);
  }

  // --- messages ---------------------------------------------------------------------------------------------------
  function onDeploymentEvent(message) {
    const id = digits(message.deployment);
    if (!id || typeof message.sequence !== "number") {
      return;
    }
    if (message.sequence > (known.get(id) || 0)) {
      known.set(id, message.sequence);
      showState("data-deployment-state", "deployment", id, message.state);
      if (message.instance != null) {
        showState("data-instance-state", "instance", digits(message.instance), message.instance_state);
      }
    }
    byAttr(document, "data-live-deployment", id).forEach((el) => advance(el, message));
    document.querySelectorAll("[data-live-list]").forEach((container) => {
      if (listWants(container, message)) {
        reloadList(container);
      }
    });
    for (const fn of listeners) {
      try {
        fn(message);
      } catch (err) {
        window.setTimeout(() => {
          throw err; // reported, without stopping the other listeners
        });
      }
    }
  }

  function onWatching(message) {
    const id = digits(message.deployment);
    for (const el of byAttr(document, "data-live-deployment", id)) {
      const last = sequenceOf(el);
      if (last === null || message.sequence > last) {
        refresh(el); // changed since the page (or this element) was made, or while the socket was away
      }
    }
  }

  function handle(message) {
    switch (message.type) {
      case "hello":
        live = true;
        delay = MIN_DELAY;
        setStatus("live");
        watched.clear();
        refused.clear();
        rescan();
        if (connectedBefore) {
          reloadAllLists(); // deployments may have appeared while the socket was away
        }
        connectedBefore = true;
        break;
      case "deployment.event":
        onDeploymentEvent(message);
        break;
      case "watching":
        onWatching(message);
        break;
      case "error":
        if (message.deployment != null && message.error === "not found") {
          const id = digits(message.deployment);
          watched.delete(id);
          refused.add(id);
          byAttr(document, "data-live-deployment", id).forEach((el) => refresh(el));
        }
        break;
      case "access.changed":
        reloadAllLists();
        break;
      case "session.ended":
        stopped = true; // the notification socket offers to sign in again
        break;
      default:
        break;
    }
  }

  // --- watching what the page shows -------------------------------------------------------------------------------
  function send(message) {
    if (socket && live && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  function rescan() {
    rescanTimer = null;
    const present = new Set();
    document.querySelectorAll("[data-live-deployment]").forEach((el) => {
      const id = digits(el.getAttribute("data-live-deployment"));
      if (!id) {
        return;
      }
      present.add(id);
      const seq = sequenceOf(el);
      if (seq !== null && !known.has(id)) {
        known.set(id, seq);
      }
    });
    if (!live) {
      return;
    }
    for (const id of present) {
      if (!watched.has(id) && !refused.has(id) && send({ type: "watch", deployment: Number(id) })) {
        watched.add(id);
      }
    }
    for (const id of Array.from(watched)) {
      if (!present.has(id) && send({ type: "unwatch", deployment: Number(id) })) {
        watched.delete(id);
      }
    }
  }

  function scheduleRescan() {
    if (rescanTimer === null) {
      rescanTimer = window.setTimeout(rescan, RESCAN_DEBOUNCE);
    }
  }

  // --- the socket -------------------------------------------------------------------------------------------------
  function socketUrl() {
    if (/^wss?:\/\//.test(wsPath)) {
      return wsPath;
    }
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + window.location.host + wsPath;
  }

  function scheduleReconnect() {
    if (stopped || reconnectTimer !== null) {
      return;
    }
    // jitter: many tabs reconnecting after a server restart do not arrive at once
    const wait = Math.round(delay / 2 + Math.random() * (delay / 2));
    delay = Math.min(delay * 2, MAX_DELAY);
    reconnectTimer = window.setTimeout(() => {
      reconnectTimer = null;
      connect();
    }, wait);
  }

  function connect() {
    if (stopped || socket) {
      return;
    }
    setStatus("connecting");
    let ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (err) {
      setStatus("offline");
      scheduleReconnect();
      return;
    }
    socket = ws;
    ws.addEventListener("open", () => {
      pingTimer = window.setInterval(() => send({ type: "ping" }), PING_EVERY);
    });
    ws.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (message && typeof message.type === "string") {
        handle(message);
      }
    });
    ws.addEventListener("close", (event) => {
      if (socket === ws) {
        socket = null;
      }
      live = false;
      watched.clear();
      if (pingTimer !== null) {
        window.clearInterval(pingTimer);
        pingTimer = null;
      }
      setStatus("offline");
      if (event.code === CLOSE_UNAUTHENTICATED || event.code === CLOSE_FORBIDDEN) {
        stopped = true; // signed out, or nothing to see: reconnecting cannot help
        return;
      }
      scheduleReconnect();
    });
  }

  function reconnectNow() {
    if (reconnectTimer !== null) {
      window.clearTimeout(reconnectTimer);
      reconnectTimer = null;
    }
    delay = MIN_DELAY;
    connect();
  }

  window.SkyportLive = {
    onEvent(fn) {
      if (typeof fn !== "function") {
        throw new TypeError("SkyportLive.onEvent needs a function");
      }
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
  };

  function start() {
    if (!window.WebSocket || !window.fetch) {
      setStatus("offline");
      return;
    }
    new MutationObserver((records) => {
      const elementsMoved = records.some((r) => r.type === "attributes" ||
        Array.from(r.addedNodes).some((n) => n.nodeType === 1) ||
        Array.from(r.removedNodes).some((n) => n.nodeType === 1));
      if (elementsMoved) {
        scheduleRescan();
      }
    }).observe(document.body, {
      childList: true, subtree: true, attributes: true, attributeFilter: ["data-live-deployment"],
    });
    window.addEventListener("online", () => {
      if (!socket && !stopped) {
        reconnectNow();
      }
    });
    window.addEventListener("pagehide", () => {
      stopped = true;
      if (socket) {
        socket.close(1000);
      }
    });
    window.addEventListener("pageshow", (event) => {
      if (event.persisted) {
        stopped = false; // restored from the back/forward cache: its socket was closed on pagehide
        reconnectNow();
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
