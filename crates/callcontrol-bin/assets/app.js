// The sessions page. Every value from the server (Call-IDs, URIs, account
// fields) comes from SIP headers or the rating engine and is attacker
// controlled: it is only ever put in the page with textContent or as an
// attribute value through the DOM API, never parsed as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "callcontrol.token";
  const REFRESH_MS = 3000;
  const CONFIRM_MS = 5000;

  const $ = (id) => document.getElementById(id);
  const state = {
    offset: 0,
    limit: 100,
    q: "",
    stateFilter: "",
    kind: "",
    page: null,        // last /api/sessions answer
    fetchedAt: 0,      // performance.now() when it arrived
    confirming: null,  // Call-ID awaiting confirmation
    confirmTimer: null,
    gone: new Set(),   // Call-IDs terminated from this page, until the next refresh drops them
    loads: 0,
    account: null,
  };

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function say(text, info) {
    const m = $("message");
    if (!text) { m.hidden = true; m.textContent = ""; return; }
    m.textContent = text;
    m.className = info ? "message info" : "message";
    m.hidden = false;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    const t = token();
    if (t) headers["Authorization"] = "Bearer " + t;
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (!r.ok && !(r.status === 503 && path === "api/health")) {
      const msg = data && data.error && data.error.message ? data.error.message : r.status + " " + r.statusText;
      throw new ApiError(r.status, msg);
    }
    return data;
  }

  function handleError(e) {
    if (e instanceof ApiError && e.status === 401) {
      say("The server wants a token: enter the [Web] token from config.ini above.");
      $("token").focus();
    } else {
      say(String(e && e.message ? e.message : e));
    }
  }

  function hms(secs) {
    if (secs === null || secs === undefined) return "—";
    secs = Math.max(0, Math.floor(secs));
    const h = Math.floor(secs / 3600), m = Math.floor(secs / 60) % 60, s = secs % 60;
    const two = (n) => (n < 10 ? "0" : "") + n;
    return (h > 0 ? h + ":" + two(m) : String(m)) + ":" + two(s);
  }

  // ---- health -------------------------------------------------------------

  function pill(label, ok) {
    return el("span", label + (ok === null ? ": ?" : ok ? ": up" : ": DOWN"),
      "pill " + (ok === null ? "unknown" : ok ? "ok" : "bad"));
  }

  async function loadHealth() {
    try {
      const h = await api("GET", "api/health");
      const parts = [
        pill("engine", h.engine.running),
        pill("control socket", h.control_socket.up),
      ];
      for (const r of h.rating || []) parts.push(pill("rating " + r.address, r.connected));
      if (h.signalling) parts.push(pill("MI " + h.signalling.address, h.signalling.reachable));
      if (h.debits_pending) parts.push(el("span", "debits pending: " + h.debits_pending, "pill bad"));
      $("health").replaceChildren(...parts);
      $("health").dataset.ok = String(h.ok);
    } catch (e) {
      $("health").replaceChildren(el("span", "health: " + (e.status === 401 ? "token needed" : "unavailable"), "pill unknown"));
    }
  }

  // ---- sessions -----------------------------------------------------------

  function query() {
    const p = new URLSearchParams();
    p.set("offset", String(state.offset));
    p.set("limit", String(state.limit));
    if (state.q) p.set("q", state.q);
    if (state.stateFilter) p.set("state", state.stateFilter);
    if (state.kind) p.set("kind", state.kind);
    return p.toString();
  }

  async function loadSessions() {
    try {
      const page = await api("GET", "api/sessions?" + query());
      if (page.offset > 0 && page.sessions.length === 0 && page.matched > 0) {
        state.offset = Math.max(0, page.matched - state.limit);
        return loadSessions();
      }
      state.page = page;
      state.fetchedAt = performance.now();
      state.gone.clear();
      render();
      // Clear only a message left by a failed refresh, not the answer to
      // something the operator did (a refused amount, a terminate error).
      if (state.loadFailed) { state.loadFailed = false; say(""); }
    } catch (e) {
      handleError(e);
      state.loadFailed = true;
    } finally {
      state.loads += 1;
      document.body.dataset.loads = String(state.loads);
    }
  }

  function terminateButton(s) {
    const cell = el("td", null, "actions");
    const id = s.call_id;
    if (state.gone.has(id)) return cell;
    if (state.confirming === id) {
      const yes = el("button", "Confirm end", "danger confirm");
      yes.type = "button";
      yes.addEventListener("click", () => terminate(id));
      const no = el("button", "Cancel");
      no.type = "button";
      no.addEventListener("click", () => { state.confirming = null; render(); });
      cell.append(yes, " ", no);
    } else {
      const b = el("button", "Terminate", "danger");
      b.type = "button";
      b.title = "End this call with BYE";
      b.addEventListener("click", () => {
        state.confirming = id;
        clearTimeout(state.confirmTimer);
        state.confirmTimer = setTimeout(() => { state.confirming = null; render(); }, CONFIRM_MS);
        render();
      });
      cell.append(b);
    }
    return cell;
  }

  function row(s, dt) {
    const tr = document.createElement("tr");
    tr.dataset.callid = s.call_id;
    if (state.gone.has(s.call_id)) tr.className = "gone";
    const elapsed = s.elapsed === null || s.elapsed === undefined ? null : s.elapsed + dt;
    const remaining = s.remaining === null || s.remaining === undefined ? null : Math.max(0, s.remaining - dt);
    const rem = el("td", hms(remaining), "num remaining");
    if (remaining !== null && remaining < 60) rem.classList.add("low");
    tr.append(
      el("td", s.call_id, "callid"),
      el("td", s.from, "uri caller"),
      el("td", s.ruri, "uri callee"),
      el("td", s.user, "party"),
      el("td", s.prepaid ? "prepaid" : "postpaid", "kind kind-" + (s.prepaid ? "prepaid" : "postpaid")),
      el("td", s.limit === null || s.limit === undefined ? "none" : hms(s.limit), "num limit"),
      el("td", hms(elapsed), "num elapsed"),
      rem,
      el("td", s.state, "state state-" + s.state),
      terminateButton(s),
    );
    return tr;
  }

  function sinceFetch() {
    return Math.floor((performance.now() - state.fetchedAt) / 1000);
  }

  function render() {
    const page = state.page;
    if (!page) return;
    const dt = sinceFetch();
    const frag = document.createDocumentFragment();
    for (const s of page.sessions) frag.append(row(s, dt));
    $("rows").replaceChildren(frag);
    $("empty").hidden = page.sessions.length > 0;
    const first = page.matched === 0 ? 0 : page.offset + 1;
    const last = page.offset + page.sessions.length;
    $("page-info").textContent = first + "–" + last + " of " + page.matched;
    $("counts").textContent = page.matched === page.total
      ? "(" + page.total + ")"
      : "(" + page.matched + " matching of " + page.total + ")";
    $("prev").disabled = page.offset === 0;
    $("next").disabled = last >= page.matched;
  }

  // Once a second: count the visible rows' timers down without a request.
  function tick() {
    const page = state.page;
    if (!page) return;
    const dt = sinceFetch();
    const rows = $("rows").children;
    for (let i = 0; i < rows.length && i < page.sessions.length; i++) {
      const s = page.sessions[i];
      const cells = rows[i].children;
      if (s.elapsed !== null && s.elapsed !== undefined) cells[6].textContent = hms(s.elapsed + dt);
      if (s.remaining !== null && s.remaining !== undefined) {
        const r = Math.max(0, s.remaining - dt);
        cells[7].textContent = hms(r);
        cells[7].classList.toggle("low", r < 60);
      }
    }
  }

  async function terminate(id) {
    clearTimeout(state.confirmTimer);
    state.confirming = null;
    try {
      await api("POST", "api/sessions/" + encodeURIComponent(id) + "/terminate");
      state.gone.add(id);
      say("Session " + id + " is being ended (BYE sent to both sides).", true);
    } catch (e) {
      handleError(e);
    }
    render();
    setTimeout(loadSessions, 300);
  }

  // ---- accounts -----------------------------------------------------------

  const AMOUNT = /^\d{1,12}(\.\d{1,6})?$/;

  async function showAccount(acct) {
    const seg = encodeURIComponent(acct);
    const b = await api("GET", "api/accounts/" + seg + "/balance");
    state.account = b.account || acct;
    $("account-name").textContent = state.account;
    $("account-balance").textContent = b.balance;
    $("account-view").hidden = false;
    let entries = [];
    try {
      entries = (await api("GET", "api/accounts/" + seg + "/history")).entries || [];
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 501)) throw e;
    }
    const keys = [];
    for (const e of entries) for (const f of e.fields) if (!keys.includes(f[0])) keys.push(f[0]);
    $("history-head").replaceChildren(...keys.map((k) => el("th", k)));
    const body = document.createDocumentFragment();
    for (const e of entries) {
      const tr = document.createElement("tr");
      const m = new Map(e.fields);
      for (const k of keys) tr.append(el("td", m.has(k) ? m.get(k) : ""));
      body.append(tr);
    }
    $("history-rows").replaceChildren(body);
  }

  // ---- wiring -------------------------------------------------------------

  function debounce(f, ms) {
    let t = null;
    return (...a) => { clearTimeout(t); t = setTimeout(() => f(...a), ms); };
  }

  function init() {
    $("token").value = token();
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      say("");
      loadHealth();
      loadSessions();
    });
    $("token-clear").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("token").value = "";
    });
    $("filter").addEventListener("input", debounce(() => {
      state.q = $("filter").value.trim();
      state.offset = 0;
      loadSessions();
    }, 250));
    $("state-filter").addEventListener("change", () => { state.stateFilter = $("state-filter").value; state.offset = 0; loadSessions(); });
    $("kind-filter").addEventListener("change", () => { state.kind = $("kind-filter").value; state.offset = 0; loadSessions(); });
    $("page-size").addEventListener("change", () => { state.limit = Number($("page-size").value) || 100; state.offset = 0; loadSessions(); });
    $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadSessions(); });
    $("next").addEventListener("click", () => { state.offset += state.limit; loadSessions(); });
    $("account-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const acct = $("account").value.trim();
      if (!acct) return;
      try { await showAccount(acct); say(""); } catch (e) { $("account-view").hidden = true; handleError(e); }
    });
    $("credit-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const amount = $("credit-amount").value.trim();
      if (!AMOUNT.test(amount) || !/[1-9]/.test(amount)) {
        say("Amount must be a positive decimal number like 10 or 12.50.");
        return;
      }
      try {
        const r = await api("POST", "api/accounts/" + encodeURIComponent(state.account) + "/credit", { amount });
        say("Added " + r.added + " to " + r.account + ": balance is now " + r.balance + ".", true);
        $("credit-amount").value = "";
        await showAccount(state.account);
      } catch (e) { handleError(e); }
    });
    loadHealth();
    loadSessions();
    setInterval(tick, 1000);
    setInterval(() => {
      if (!$("auto").checked || document.hidden) return;
      // Keep a row's confirmation prompt still while the operator decides.
      if (state.confirming === null) loadSessions();
      loadHealth();
    }, REFRESH_MS);
  }

  window.callcontrol = { state, refresh: loadSessions };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
