"use strict";
// The operators' actions on the status page (agent/src/web/actions.rs): acknowledging a
// warning or critical event of the Events list, and trusting an OPC-UA server certificate
// the agent rejected (under its device). The buttons are shown to operators only; the agent
// refuses anyone else (403) whatever the page shows. Every string from the agent goes into
// the page as a text node, never parsed as markup.

var Actions = (function () {
  var CERTS_MS = 5000;
  var FLASH_MS = 30000;
  var me = { role: null, csrf: null };
  var certs = []; // api/opcua/certificates: the rejected certificates
  var certsTimer = null;
  var notes = {}; // why the last action on an event id or thumbprint failed
  var flash = {}; // per device: { text, until } after a trust

  function node(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined && text !== null) n.textContent = String(text);
    return n;
  }

  function canAct() { return me.role === "operator" && !!me.csrf; }

  function post(path) {
    return fetch(path, { method: "POST", cache: "no-store", headers: { "X-CSRF-Token": me.csrf || "" } })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (body) { return { ok: r.ok, status: r.status, body: body }; });
      });
  }

  function failure(r) { return (r.body && r.body.error) || ("HTTP " + r.status); }

  // HH:MM:SS as the Events list shows times, with the date when it is not today.
  function when(ts) {
    var d = new Date(ts);
    if (!ts || isNaN(d.getTime())) return ts || "—";
    var p = function (n) { return (n < 10 ? "0" : "") + n; };
    var time = p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
    return d.toDateString() === new Date().toDateString() ? time : d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " + time;
  }

  function day(ts) {
    var d = new Date(ts);
    return !ts || isNaN(d.getTime()) ? "?" : d.toISOString().slice(0, 10);
  }

  function button(text, title, onClick) {
    var b = node("button", "big action", text);
    b.type = "button";
    b.title = title;
    b.addEventListener("click", function () {
      b.disabled = true;
      onClick(b);
    });
    return b;
  }

  // ---------- events ----------

  // The last cell of an event's row: who acknowledged it and when; for a warning or
  // critical one not yet acknowledged, the button (operators) or "not acknowledged".
  function eventCell(e) {
    var td = node("td", "ack-cell");
    if (e.acknowledged_by) {
      td.appendChild(node("span", "badge b-good", "acknowledged"));
      td.appendChild(node("span", "muted ack-by", " " + e.acknowledged_by + " · " + when(e.acknowledged_at)));
      return td;
    }
    if (e.severity !== "warning" && e.severity !== "critical") return td;
    if (!canAct()) {
      td.appendChild(node("span", "muted", "not acknowledged"));
      return td;
    }
    td.appendChild(button("Acknowledge", "Acknowledge " + e.kind + " of " + e.asset, function (b) {
      b.textContent = "Acknowledging…";
      post("api/events/" + encodeURIComponent(e.id) + "/ack").then(function (r) {
        if (r.ok) delete notes[e.id]; else notes[e.id] = failure(r);
        Events.refresh();
      }, function (err) {
        notes[e.id] = "not sent: " + err.message;
        Events.refresh();
      });
    }));
    if (notes[e.id]) td.appendChild(node("span", "reason", notes[e.id]));
    return td;
  }

  // ---------- OPC-UA certificates ----------

  function loadCerts() {
    return fetch("api/opcua/certificates", { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (c) { if (c) certs = c.certificates || []; })
      .catch(function () { /* the banner says when the agent is unreachable */ });
  }

  function certRow(device, c) {
    var row = node("div", "cert");
    row.dataset.thumbprint = c.thumbprint;
    var text = node("div", "cert-text");
    text.appendChild(node("div", "cert-subject", c.subject || "(not a readable certificate)"));
    text.appendChild(node("div", "muted", "thumbprint " + (c.thumbprint || "—")));
    text.appendChild(node("div", c.valid_now ? "muted" : "error",
      "valid " + day(c.not_before) + " to " + day(c.not_after) + (c.valid_now ? "" : " · NOT VALID NOW")));
    if (!c.devices.length) {
      text.appendChild(node("div", "muted", "names no configured device's host" + (c.hosts.length ? " (" + c.hosts.join(", ") + ")" : "")));
    }
    if (c.error) text.appendChild(node("div", "error", c.error));
    var key = c.thumbprint;
    if (notes[key]) text.appendChild(node("div", "error", notes[key]));
    row.appendChild(text);
    if (!c.thumbprint || c.error) return row;
    if (!canAct()) {
      row.appendChild(node("span", "muted", "an operator can trust it"));
      return row;
    }
    row.appendChild(button("Trust", "Trust " + c.subject + " for every OPC-UA device", function (b) {
      b.textContent = "Trusting…";
      post("api/opcua/certificates/" + encodeURIComponent(c.thumbprint) + "/trust").then(function (r) {
        if (r.ok) {
          delete notes[key];
          flash[device] = { text: "✓ " + (r.body.message || "trusted"), until: Date.now() + FLASH_MS };
        } else {
          notes[key] = failure(r);
        }
        loadCerts();
      }, function (err) {
        notes[key] = "not sent: " + err.message;
      });
    }));
    return row;
  }

  // Under an OPC-UA device: the rejected certificates naming its endpoint's host (one that
  // names no configured device is shown under every OPC-UA device), with a Trust button
  // for operators. `null` when there is nothing to show.
  function deviceCerts(d) {
    if (d.protocol !== "opcua") return null;
    if (!certsTimer) {
      loadCerts();
      certsTimer = setInterval(loadCerts, CERTS_MS);
    }
    var mine = certs.filter(function (c) { return !c.devices.length || c.devices.indexOf(d.name) >= 0; });
    var f = flash[d.name] && flash[d.name].until > Date.now() ? flash[d.name] : null;
    if (!mine.length && !f) return null;
    var box = node("div", "certs");
    if (f) box.appendChild(node("div", "line", f.text));
    if (mine.length) {
      box.appendChild(node("h3", null, "Server certificates awaiting trust"));
      mine.forEach(function (c) { box.appendChild(certRow(d.name, c)); });
    }
    return box;
  }

  // ---------- session ----------

  function init() {
    fetch("api/session", { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (!s) return;
        me.role = s.role;
        me.csrf = s.csrf;
        Events.refresh();
      })
      .catch(function () {});
  }

  return { init: init, eventCell: eventCell, deviceCerts: deviceCerts };
})();
