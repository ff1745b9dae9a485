// hubrelay console: plain JavaScript, no build step. Every value from the API is put on the
// page as text (textContent), never as HTML.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const page = document.body.dataset.page;
  const controls = document.body.dataset.controls === "true";
  const api = "/console/api/";

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) {
      if (k === "class") e.className = attrs[k];
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    }
    for (const c of kids) if (c != null) e.append(c instanceof Node ? c : String(c));
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function showError(msg) {
    const p = document.getElementById("error");
    p.textContent = msg || "";
    p.hidden = !msg;
  }
  async function call(path, opts) {
    opts = opts || {};
    const init = { method: opts.method || "GET", headers: {}, credentials: "same-origin" };
    if (opts.body !== undefined) {
      init.body = JSON.stringify(opts.body);
      init.headers["Content-Type"] = "application/json";
    }
    if (init.method !== "GET") init.headers["X-Console-CSRF"] = csrf;
    const r = await fetch(api + path, init);
    let data = null;
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok && !(opts.accept || []).includes(r.status)) {
      throw new Error((data && data.error) || r.status + " " + r.statusText);
    }
    return { status: r.status, data: data };
  }
  function time(s) {
    if (!s) return "—";
    const d = new Date(s);
    return d.toLocaleTimeString([], { hour12: false }) + (Date.now() - d > 864e5 ? " " + d.toLocaleDateString() : "");
  }
  function ago(s) {
    if (!s) return "—";
    const sec = Math.max(0, (Date.now() - new Date(s)) / 1000);
    if (sec < 90) return Math.round(sec) + "s ago";
    if (sec < 5400) return Math.round(sec / 60) + "m ago";
    return Math.round(sec / 3600) + "h ago";
  }
  function storyLink(id) {
    return el("a", { href: "/console/change?id=" + encodeURIComponent(id), class: "id" }, id);
  }
  function list(xs) { return xs && xs.length ? xs.join(", ") : "—"; }
  function every(ms, f) {
    let busy = false;
    const tick = async () => {
      if (busy || document.hidden) return;
      busy = true;
      try { await f(); showError(""); } catch (e) { showError(e.message); }
      busy = false;
    };
    tick();
    return setInterval(tick, ms);
  }

  // Overview
  const colors = { accepted: "#2f7d32", duplicate: "#7aa6c2", empty: "#b0b0b0", verified: "#5c6bc0" };
  function chart(points) {
    const w = 300, h = 60, bw = w / points.length;
    let max = 1;
    for (const p of points) max = Math.max(max, Object.values(p.outcomes).reduce((a, b) => a + b, 0));
    const s = svg("svg", { viewBox: "0 0 " + w + " " + (h + 2), class: "chart", role: "img", "aria-label": "requests per 10 seconds" });
    points.forEach((p, i) => {
      let y = h;
      for (const o of Object.keys(p.outcomes).sort()) {
        const bh = (p.outcomes[o] / max) * h;
        y -= bh;
        const r = svg("rect", { x: i * bw + 0.5, y: y, width: Math.max(bw - 1, 1), height: bh, fill: colors[o] || "#c62828" });
        r.append(svg("title", {}));
        r.firstChild.textContent = time(p.at) + " " + o + ": " + p.outcomes[o];
        s.append(r);
      }
    });
    s.append(svg("line", { x1: 0, y1: h + 1, x2: w, y2: h + 1, stroke: "#999" }));
    return s;
  }
  async function overview() {
    const { data } = await call("overview");
    const apps = document.getElementById("apps");
    apps.replaceChildren(...data.apps.map((a) => {
      const totals = Object.entries(a.totals).sort().map(([o, n]) => el("span", { class: "tag o-" + o }, o + " " + n));
      return el("div", { class: "app" },
        el("h3", {}, a.app || "(no app: refused before one was known)", " ", el("small", {}, a.path || "")),
        chart(a.points),
        el("p", {}, ...(totals.length ? totals : [el("span", { class: "muted" }, "no requests in the last 10 minutes")])),
        el("p", { class: "muted" }, a.ack_samples ? "ack latency p50 " + a.ack_p50_ms.toFixed(1) + " ms · p99 " + a.ack_p99_ms.toFixed(1) + " ms (last " + a.ack_samples + " acknowledged requests)" : "ack latency: no acknowledged request yet"));
    }));
    const tb = document.querySelector("#sinks tbody");
    tb.replaceChildren(...data.sinks.map((s) => {
      const row = el("tr", {},
        el("td", { "data-label": "sink" }, s.name),
        el("td", { "data-label": "ready" }, s.ready),
        el("td", { "data-label": "scheduled" }, s.scheduled),
        el("td", { "data-label": "paused" }, s.paused == null ? "—" : s.paused ? "paused" : "no"),
        el("td", { "data-label": "dead letters" }, s.dead_letters ? el("a", { href: "/console/deadletters?sink=" + encodeURIComponent(s.name) }, s.dead_letters) : "0"),
        el("td", { "data-label": "delivered/s" }, s.delivered_per_second.toFixed(2)),
        el("td", { "data-label": "oldest waiting" }, ago(s.oldest_waiting)),
        el("td", { "data-label": "last error", class: "err" }, s.last_error ? s.last_error + " (" + ago(s.last_error_at) + ")" : "—"));
      if (controls && s.paused != null) {
        const act = s.paused ? "resume" : "pause";
        row.append(el("td", {}, el("button", { onclick: async () => {
          try { await call("sinks/" + encodeURIComponent(s.name) + "/" + act, { method: "POST", body: {} }); overview(); } catch (e) { showError(e.message); }
        } }, act)));
      }
      return row;
    }));
    const re = Object.entries(data.rule_errors || {});
    document.getElementById("rules").textContent = re.length ? "rule evaluation errors since start: " + re.map(([r, n]) => r + " " + n).join(", ") : "";
    if (data.problems && data.problems.length) showError(data.problems.join("; "));
  }

  // Live tail
  function tail() {
    const form = document.getElementById("filter");
    const tb = document.querySelector("#tail tbody");
    const payloads = document.body.dataset.payloads === "true";
    let last = 0;
    const rows = [];
    const key = () => new URLSearchParams([...new FormData(form)].filter(([k, v]) => v && k !== "pause")).toString();
    let filter = key();
    form.addEventListener("input", () => { if (key() !== filter) { filter = key(); last = 0; rows.length = 0; tb.replaceChildren(); } });
    form.addEventListener("submit", (e) => e.preventDefault());
    every(1000, async () => {
      if (form.elements.pause.checked) return;
      const { data } = await call("tail?" + filter + "&after=" + last);
      last = data.last_seq;
      for (const n of data.items.reverse()) {
        const tr = el("tr", { class: n.duplicate ? "dup" : "new" },
          el("td", { "data-label": "time" }, time(n.at)),
          el("td", { "data-label": "app" }, n.app),
          el("td", { "data-label": "object" }, n.object),
          el("td", { "data-label": "field" }, n.field),
          el("td", { "data-label": "verb" }, n.verb || "—"),
          el("td", { "data-label": "entry" }, n.entry_id),
          el("td", { "data-label": "change id" }, storyLink(n.change_id)),
          el("td", { "data-label": "rules" }, list(n.rules)),
          el("td", { "data-label": "sinks" }, list(n.sinks)),
          el("td", {}, el("span", { class: "tag " + (n.duplicate ? "o-duplicate" : "o-accepted") }, n.duplicate ? "duplicate" : "new")));
        tb.prepend(tr);
        if (payloads && n.value) {
          const v = el("tr", { class: "value" }, el("td", { colspan: 10 }, el("pre", {}, n.value + (n.value_truncated ? " …" : ""))));
          tb.insertBefore(v, tr.nextSibling);
        }
        rows.unshift(tr);
      }
      while (tb.rows.length > 400) tb.deleteRow(-1);
    });
  }

  // A change's story
  function story() {
    const form = document.getElementById("lookup");
    const out = document.getElementById("story");
    async function show(id) {
      out.replaceChildren(el("p", { class: "muted" }, "Loading…"));
      const { data } = await call("changes/" + encodeURIComponent(id), { accept: [404] });
      const parts = [el("h2", {}, "Change ", el("code", {}, data.change_id))];
      if (data.note) parts.push(el("p", { class: "note" }, data.note));
      if (data.sinks.length) {
        parts.push(el("h3", {}, "Where it is now"), el("ul", { class: "now" }, ...data.sinks.map((s) =>
          el("li", { class: "state-" + s.state }, el("strong", {}, s.sink), ": ", s.state.replace("_", " "), s.at ? " — " + time(s.at) : "", s.note ? " · " + s.note : ""))));
      }
      if (data.accepted.length) {
        parts.push(el("h3", {}, "Accepted"), el("ul", {}, ...data.accepted.map((n) =>
          el("li", {}, time(n.at), " · ", n.app, " · ", n.object + "/" + n.field, n.verb ? " " + n.verb : "", " · entry ", n.entry_id,
            n.duplicate ? " · duplicate (acknowledged, not delivered again)" : " · rules " + list(n.rules) + " → sinks " + list(n.sinks)))));
        const v = data.accepted.find((n) => n.value);
        if (v) parts.push(el("pre", {}, v.value));
      }
      parts.push(el("h3", {}, "Delivery attempts"));
      parts.push(data.attempts.length ? el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, el("th", {}, "time"), el("th", {}, "sink"), el("th", {}, "attempt"), el("th", {}, "status"), el("th", {}, "outcome"), el("th", {}, "error"))),
        el("tbody", {}, ...data.attempts.map((a) => el("tr", {},
          el("td", { "data-label": "time" }, time(a.at)), el("td", { "data-label": "sink" }, a.sink), el("td", { "data-label": "attempt" }, a.attempt),
          el("td", { "data-label": "status" }, a.status || "—"),
          el("td", { "data-label": "outcome" }, a.outcome === "retrying" ? "retrying at " + time(a.retry_at) : a.outcome.replace("_", " ")),
          el("td", { "data-label": "error", class: "err" }, a.error || "—")))))) : el("p", { class: "muted" }, "none remembered"));
      if (data.dead_letters.length) {
        parts.push(el("h3", {}, "Dead letters"), el("ul", {}, ...data.dead_letters.map((l) =>
          el("li", {}, el("a", { href: "/console/deadletters?id=" + encodeURIComponent(l.id) }, l.id), " · ", l.sink, " · ", time(l.dead_at), " · ", l.reason))));
      }
      out.replaceChildren(...parts);
    }
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const id = form.elements.id.value.trim();
      history.replaceState(null, "", "?id=" + encodeURIComponent(id));
      show(id).catch((err) => showError(err.message));
    });
    const id = new URLSearchParams(location.search).get("id");
    if (id) { form.elements.id.value = id; show(id).catch((err) => showError(err.message)); }
  }

  // Dead letters
  function deadletters() {
    const form = document.getElementById("filter");
    const tb = document.querySelector("#letters tbody");
    const btn = document.getElementById("replay-selected");
    const all = document.getElementById("all");
    const detail = document.getElementById("detail");
    const params = new URLSearchParams(location.search);
    if (params.get("sink")) form.elements.sink.value = params.get("sink");
    const selected = () => [...tb.querySelectorAll("input:checked")].map((c) => c.value);
    const update = () => { btn.disabled = selected().length === 0; btn.textContent = "Replay selected (" + selected().length + ")"; };
    async function replay(ids) {
      const { data } = await call("deadletters/replay", { method: "POST", body: { ids: ids } });
      document.getElementById("summary").textContent = "replayed " + data.replayed + " of " + data.queued + (data.error ? ": " + data.error : "");
      detail.hidden = true;
      await load(true);
    }
    async function open(id) {
      const { data } = await call("deadletters/" + encodeURIComponent(id));
      detail.hidden = false;
      detail.replaceChildren(el("h2", {}, "Dead letter ", el("code", {}, data.id)),
        el("dl", {}, el("dt", {}, "sink"), el("dd", {}, data.sink), el("dt", {}, "change"), el("dd", {}, storyLink(data.change_id)),
          el("dt", {}, "rules"), el("dd", {}, list(data.rules)), el("dt", {}, "first accepted"), el("dd", {}, time(data.first_at)),
          el("dt", {}, "dead at"), el("dd", {}, time(data.dead_at)), el("dt", {}, "reason"), el("dd", { class: "err" }, data.reason)),
        el("h3", {}, "Attempts"),
        el("ol", {}, ...data.attempt_log.map((a) => el("li", {}, time(a.at), a.status ? " · " + a.status : "", " · ", a.error))),
        el("h3", {}, "Change"), data.value_hidden ? el("p", { class: "note" }, "The value is hidden: log.payloads is off.") : null,
        el("pre", {}, JSON.stringify(data.change, null, 2)),
        el("button", { onclick: () => replay([data.id]).catch((e) => showError(e.message)) }, "Replay this letter"));
      detail.scrollIntoView({ block: "nearest" });
    }
    async function load(keep) {
      const q = new URLSearchParams([...new FormData(form)].filter(([, v]) => v));
      const { data } = await call("deadletters?" + q);
      const was = keep ? new Set(selected()) : new Set();
      document.getElementById("summary").textContent += "";
      tb.replaceChildren(...data.letters.map((l) => el("tr", {},
        el("td", {}, el("input", { type: "checkbox", value: l.id, "aria-label": "select " + l.id, ...(was.has(l.id) ? { checked: "" } : {}), onchange: update })),
        el("td", { "data-label": "dead at" }, time(l.dead_at)),
        el("td", { "data-label": "sink" }, l.sink),
        el("td", { "data-label": "change id" }, storyLink(l.change_id)),
        el("td", { "data-label": "attempts" }, l.attempts),
        el("td", { "data-label": "reason", class: "err" }, l.reason),
        el("td", {}, el("button", { class: "link", onclick: () => open(l.id).catch((e) => showError(e.message)) }, "detail")))));
      if (!data.letters.length) tb.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no dead letters" + (q.toString() ? " match" : "") + " (directory " + data.dir + ")")));
      const s = document.getElementById("summary");
      if (!keep) s.textContent = data.total + " dead letter(s)" + (data.total > data.letters.length ? ", newest " + data.letters.length + " shown" : "");
      update();
    }
    form.addEventListener("change", () => load(false).catch((e) => showError(e.message)));
    form.addEventListener("submit", (e) => e.preventDefault());
    all.addEventListener("change", () => { tb.querySelectorAll("input[type=checkbox]").forEach((c) => { c.checked = all.checked; }); update(); });
    btn.addEventListener("click", () => replay(selected()).catch((e) => showError(e.message)));
    load(false).then(() => { if (params.get("id")) return open(params.get("id")); }).catch((e) => showError(e.message));
  }

  // Route tester
  function route() {
    const form = document.getElementById("route");
    const out = document.getElementById("result");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      showError("");
      let payload;
      try { payload = JSON.parse(form.elements.payload.value); } catch (err) { showError("the payload is not JSON: " + err.message); return; }
      try {
        const { data } = await call("route", { method: "POST", body: { app: form.elements.app.value, payload: payload }, accept: [422] });
        if (data.error) { out.replaceChildren(el("p", { class: "error" }, data.error)); return; }
        out.replaceChildren(el("p", {}, data.changes.length + " change(s) for app " + data.app),
          ...data.changes.map((c) => el("div", { class: "change" + (c.rules.length ? "" : " unmatched") },
            el("h3", {}, c.object + "/" + c.field, c.verb ? " " + c.verb : "", " · entry " + c.entry_id),
            el("p", {}, el("code", { class: "id" }, c.id)),
            el("p", {}, c.rules.length ? "rules " + list(c.rules) + " → sinks " + list(c.sinks) : "no rule matches: the change would be counted and logged as unmatched, and delivered nowhere"),
            ...c.rule_errors.map((r) => el("p", { class: "error" }, "rule " + r.rule + " failed: " + r.error + " — " + r.hint)))));
      } catch (err) { showError(err.message); }
    });
  }

  ({ overview: () => every(2000, overview), tail: tail, change: story, deadletters: deadletters, route: route })[page]();
})();
