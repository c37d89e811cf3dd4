// ward dashboard: renders /api/events (Server-Sent Events of the
// authority's state) into the page named by <body data-page>. Every value
// goes through textContent: names from the store are never parsed as HTML.
"use strict";

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function ts(s) {
  if (!s || s.startsWith("0001-")) return "-";
  return s.replace("T", " ").replace(/\.\d+/, "").replace("Z", "Z");
}

function ago(s) {
  if (!s || s.startsWith("0001-")) return "-";
  let d = (Date.now() - Date.parse(s)) / 1000;
  const future = d < 0;
  d = Math.abs(d);
  let t;
  if (d < 90) t = Math.round(d) + "s";
  else if (d < 5400) t = Math.round(d / 60) + "m";
  else if (d < 172800) t = Math.round(d / 3600) + "h";
  else t = Math.round(d / 86400) + "d";
  return future ? "in " + t : t + " ago";
}

function card(label, value, sub, cls) {
  return el("div", { class: "card " + (cls || "") }, el("div", { class: "l" }, label), el("div", { class: "v" }, value), el("div", { class: "s" }, sub || ""));
}

function badge(text, cls) { return el("span", { class: "badge " + (cls || "") }, text); }

// table(headers, rows, key): rows are arrays of cells; key(row index)
// names a row so that new rows flash once.
const seen = new Map();
function table(id, headers, rows, keys) {
  const known = seen.get(id);
  const now = new Set();
  const t = el("table", { id: id }, el("tr", {}, headers.map(h => el("th", {}, h))));
  rows.forEach((r, i) => {
    const k = keys ? keys[i] : null;
    const tr = el("tr", k !== null ? { "data-key": k } : {}, r.map(c => el("td", {}, c)));
    if (k !== null) {
      now.add(k);
      if (known && !known.has(k)) tr.className = "flash";
    }
    t.append(tr);
  });
  seen.set(id, now);
  if (rows.length === 0) t.append(el("tr", {}, el("td", { colspan: String(headers.length), class: "muted" }, "none")));
  return t;
}

function section(title, ...kids) { return el("section", {}, el("h2", {}, title), ...kids); }

function sealedNotice(s) {
  return el("p", { class: "muted" }, s.health.sealed ? "The authority is sealed: unseal it with `ward operator unseal` to see more." : "");
}

const pages = {
  overview(s) {
    const h = s.health;
    const out = [];
    out.push(el("div", { class: "cards" },
      card("Seal", h.sealed ? "sealed" : "unsealed", h.seal_type + (h.initialized ? "" : ", not initialised"), h.sealed ? "fail" : "ok"),
      card("Audit log", String(h.audit_size), "events", "ok"),
      card("Keys", String(s.key_count), s.keys_overdue + " overdue for rotation", s.keys_overdue ? "fail" : "ok"),
      card("Agents", String(s.agent_count), s.entries + " registration entries", "ok"),
      card("Policy", s.policy.current ? "v" + s.policy.current : "none", s.policy.deny_list.length + " on the deny-list", s.policy.current ? "ok" : "warn"),
      card("Drift", s.drift.configured ? String(s.drift.total) : "not configured", s.drift.configured ? "findings, posture v" + s.drift.posture_version : "no posture declared", s.drift.configured ? (s.drift.total ? "warn" : "ok") : ""),
      card("Anomalies", String(s.anomalies.length), "recent alerts", s.anomalies.length ? "warn" : "ok"),
      card("Storage", h.storage, "identity " + (h.identity_active ? "running" : "off"), "")));
    if (h.warnings && h.warnings.length) out.push(section("Warnings", el("ul", {}, h.warnings.map(w => el("li", {}, w)))));
    out.push(section("Federation", table("federation", ["Trust domain", "Profile", "Bundle seq", "Last refresh", "Next refresh", "State", "Revoked", "Witnessed"],
      s.federation.map(f => [f.trust_domain, f.profile, String(f.sequence), ago(f.last_refresh), ago(f.next_refresh),
        f.witness_alert ? badge("witness alert", "fail") : f.stale ? badge("stale", "warn") : f.last_error ? badge("error", "warn") : badge("ok", "ok"),
        String(f.revoked_entries), String(f.witnessed_size)]))));
    out.push(section("Recent audit events", table("recent", ["Seq", "Time", "Operation", "Actor", "Key", "Result"],
      s.recent_events.map(e => [String(e.seq), ts(e.time), e.operation, e.actor, e.key || "", badge(e.result, e.result === "ok" ? "ok" : e.result === "started" ? "" : "fail")]),
      s.recent_events.map(e => "seq" + e.seq))));
    out.push(sealedNotice(s));
    return out;
  },
  identity(s) {
    return [
      section("CA keys (bundle sequence " + s.ca.bundle_sequence + ")", table("ca", ["Key", "Kind", "State", "In bundle", "Not after", "Expires"],
        s.ca.keys.map(k => [k.id, k.kind, badge(k.state, k.state === "active" ? "ok" : k.state === "tainted" ? "fail" : ""), k.in_bundle ? "yes" : "no", ts(k.not_after), ago(k.not_after)]),
        s.ca.keys.map(k => k.id + k.state))),
      section("Agents (" + s.agent_count + ")", table("agents", ["SPIFFE ID", "Attestation", "SVID expires", "Last seen", "State"],
        s.agents.map(a => [a.spiffe_id, a.attestation, ago(a.expires), ago(a.last_seen), a.evicted ? badge("evicted", "fail") : badge("active", "ok")]),
        s.agents.map(a => a.spiffe_id + (a.evicted ? "-e" : "")))),
      el("p", { class: "muted" }, s.entries + " registration entries."),
      sealedNotice(s),
    ];
  },
  keys(s) {
    const rows = s.keys.map(k => [k.name, k.classification, "v" + k.version, ts(k.last_rotated), k.next_rotation && !k.next_rotation.startsWith("0001-") ? ago(k.next_rotation) : "manual",
      k.overdue ? badge("overdue", "fail") : badge("ok", "ok")]);
    return [
      el("div", { class: "cards" }, card("Keys", String(s.key_count), "", "ok"), card("Overdue", String(s.keys_overdue), "for rotation", s.keys_overdue ? "fail" : "ok")),
      section("Keys and rotation" + (s.keys.length < s.key_count ? " (the " + s.keys.length + " most urgent)" : ""),
        table("keys", ["Key", "Classification", "Version", "Last rotated", "Next rotation", "State"], rows, s.keys.map(k => k.name + "@" + k.version))),
      sealedNotice(s),
    ];
  },
  policy(s) {
    const p = s.policy;
    const max = Math.max(1, ...p.decisions.map(d => d.count));
    return [
      section("Decisions since the authority started", table("decisions", ["Where", "Action", "Result", "Count", ""],
        p.decisions.map(d => [d.source, d.action, badge(d.result, d.result === "allow" ? "ok" : d.result === "deny" ? "fail" : "warn"), String(d.count),
          bar(d.count, max, d.result === "allow" ? "ok" : d.result === "deny" ? "fail" : "warn")]))),
      section("Deny-list of version " + p.current, table("denylist", ["Revoked"], p.deny_list.map(d => [d]), p.deny_list)),
      section("Versions", table("versions", ["Version", "Created", "Actor", "Policies", "Deny-list", "Comment"],
        p.versions.map(v => [v.version === p.current ? el("b", {}, "v" + v.version + " (current)") : "v" + v.version, ts(v.created), v.actor, String(v.policies), String(v.deny_list), v.comment || ""]),
        p.versions.map(v => "v" + v.version))),
      sealedNotice(s),
    ];
  },
  governance(s) {
    const d = s.drift;
    const sev = v => (v === "critical" || v === "high") ? "fail" : v === "medium" ? "warn" : "";
    return [
      section("Drift", d.configured
        ? [el("p", { class: "muted" }, "Posture version " + d.posture_version + ", evaluated " + ts(d.evaluated) + ": " + d.total + " finding(s)" + (d.findings.length < d.total ? " (the " + d.findings.length + " worst shown)" : "") + "."),
           table("drift", ["Severity", "Object", "Rule", "Evidence", "Fix"], d.findings.map(f => [badge(f.severity, sev(f.severity)), f.object, f.rule, f.evidence, f.fix]),
             d.findings.map(f => f.object + "|" + f.rule))]
        : el("p", { class: "muted", id: "drift-off" }, "drift: not configured (no posture declared: see docs/governance.md)")),
      section("Anomaly alerts", table("anomalies", ["Time", "Kind", "Caller", "Key", "Detail"],
        s.anomalies.map(a => [ts(a.time), badge(a.kind, "warn"), a.caller, a.key || "", a.detail]), s.anomalies.map(a => a.time + a.kind + a.caller))),
      sealedNotice(s),
    ];
  },
};

// bar is a proportional bar; its width is set through the CSSOM, which
// the style-src CSP allows (a style attribute in markup it would refuse).
function bar(n, max, cls) {
  const b = el("div", { class: "bar " + cls });
  b.style.width = Math.max(2, Math.round(200 * n / max)) + "px";
  return b;
}

let lastState = null;
function render(s) {
  lastState = s;
  document.getElementById("td").textContent = s.trust_domain + " · " + s.version;
  const page = document.body.dataset.page;
  const main = document.getElementById("main");
  const kids = (pages[page] || pages.overview)(s);
  if (s.errors && s.errors.length) kids.push(section("Errors", el("ul", {}, s.errors.map(e => el("li", {}, e)))));
  main.replaceChildren(...kids);
  main.dataset.generated = s.generated;
}

function setLive(on, text) {
  document.getElementById("live-dot").className = "dot " + (on ? "on" : "off");
  document.getElementById("live").textContent = text;
}

function connect() {
  const es = new EventSource("/api/events");
  es.addEventListener("state", ev => {
    try {
      const s = JSON.parse(ev.data);
      render(s);
      setLive(true, "live · " + ts(s.generated));
    } catch (e) {
      setLive(false, "bad update");
    }
  });
  es.onerror = () => {
    setLive(false, "reconnecting…");
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
  };
}

document.addEventListener("DOMContentLoaded", connect);
