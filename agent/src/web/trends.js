"use strict";
// Trends on the status page: a sparkline of the last hour beside every tag (one request for
// all tags, api/sparklines, every 15 s), and a dialog with a tag's last hour at full rate
// and its last 24 h as min/avg/max per minute (api/tags/{device}/{tag}/history).
// Every string from the agent goes into the page as a text node, never parsed as markup.

var Trends = (function () {
  var SVG = "http://www.w3.org/2000/svg";
  var REFRESH_MS = 15000;
  var lines = null; // api/sparklines answer
  var open = null; // { device, tag, unit, refs } of the dialog

  function svg(tag, attrs) {
    var n = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { n.setAttribute(k, attrs[k]); });
    return n;
  }

  function finite(v) { return typeof v === "number" && isFinite(v); }

  // Runs of consecutive finite values, as lists of [index, value]: a gap breaks the line.
  function runs(values) {
    var out = [], cur = [];
    values.forEach(function (v, i) {
      if (finite(v)) { cur.push([i, v]); } else if (cur.length) { out.push(cur); cur = []; }
    });
    if (cur.length) out.push(cur);
    return out;
  }

  function range(values) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) { if (finite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    if (lo === Infinity) return null;
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    return [lo, hi];
  }

  // The small trend in a tag's row: 120 × 28, no axes. Options (a model's trend): w, h,
  // lower and upper (a band, per step as the values), refs (limits drawn as dashed lines:
  // [{value, label}]).
  function spark(values, opts) {
    opts = opts || {};
    var w = opts.w || 120, h = opts.h || 28, refs = opts.refs || [];
    var s = svg("svg", { viewBox: "0 0 " + w + " " + h, width: w, height: h, class: "spark", "aria-hidden": "true" });
    var lower = opts.lower || [], upper = opts.upper || [];
    var r = range(values.concat(lower, upper, refs.map(function (l) { return l.value; })));
    if (!r || values.length < 2 || !range(values)) return s;
    var x = function (i) { return (i / (values.length - 1)) * (w - 2) + 1; };
    var y = function (v) { return h - 2 - ((v - r[0]) / (r[1] - r[0])) * (h - 4); };
    var band = values.map(function (_, i) { return finite(lower[i]) && finite(upper[i]) ? 0 : null; });
    runs(band).forEach(function (run) {
      if (run.length < 2) return;
      var top = run.map(function (p) { return x(p[0]).toFixed(1) + "," + y(upper[p[0]]).toFixed(1); });
      var bottom = run.slice().reverse().map(function (p) { return x(p[0]).toFixed(1) + "," + y(lower[p[0]]).toFixed(1); });
      s.appendChild(svg("polygon", { points: top.concat(bottom).join(" "), class: "spark-band" }));
    });
    refs.forEach(function (l) {
      s.appendChild(svg("line", { x1: 1, x2: w - 1, y1: y(l.value).toFixed(1), y2: y(l.value).toFixed(1), class: "spark-limit" }));
    });
    runs(values).forEach(function (run) {
      if (run.length === 1) {
        s.appendChild(svg("circle", { cx: x(run[0][0]), cy: y(run[0][1]), r: h > 28 ? 3 : 1.5, class: "spark-dot" }));
        return;
      }
      var pts = run.map(function (p) { return x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1); }).join(" ");
      s.appendChild(svg("polyline", { points: pts, class: "spark-line" }));
    });
    return s;
  }

  function sparkCell(device, tag) {
    var td = document.createElement("td");
    td.className = "spark-cell";
    var values = lines && lines.devices && lines.devices[device] && lines.devices[device][tag];
    if (values) td.appendChild(spark(values));
    return td;
  }

  function line(device, tag) {
    return (tag && lines && lines.devices && lines.devices[device] && lines.devices[device][tag]) || null;
  }

  // What a model's output is judged against (data.models[].limits): the anomaly threshold,
  // the quality specification, the RUL's notice period (when the RUL is in hours).
  function modelRefs(m) {
    var l = m.limits || {}, refs = [];
    if (finite(l.score_on)) refs.push({ value: l.score_on, label: "threshold " + fmt(l.score_on) });
    if (finite(l.spec_min)) refs.push({ value: l.spec_min, label: "spec min " + fmt(l.spec_min) });
    if (finite(l.spec_max)) refs.push({ value: l.spec_max, label: "spec max " + fmt(l.spec_max) });
    if (finite(l.notify_within_h) && m.unit === "h") refs.push({ value: l.notify_within_h, label: "notice " + fmt(l.notify_within_h) + " h" });
    return refs;
  }

  // A model's output over the last hour (its band and limits drawn), as a button that opens
  // the larger trend. Null for a model whose output has no history.
  function modelSpark(m) {
    var t = m.trend;
    if (!t) return null;
    var values = line(t.device, t.value) || [];
    var refs = modelRefs(m);
    var b = document.createElement("button");
    b.type = "button";
    b.className = "spark-button model-spark";
    b.title = "Show the trend of " + m.name + (refs.length ? " against " + refs.map(function (r) { return r.label; }).join(", ") : "");
    b.setAttribute("aria-label", b.title);
    b.appendChild(spark(values, { w: 240, h: 44, refs: refs, lower: line(t.device, t.lower), upper: line(t.device, t.upper) }));
    if (!values.some(finite)) {
      var note = document.createElement("span");
      note.className = "spark-note";
      note.textContent = "no history yet";
      b.appendChild(note);
    }
    b.addEventListener("click", function () { show(t.device, t.value, m.unit, refs); });
    return b;
  }

  function refresh() {
    fetch("api/sparklines?from=1h&step=1m", { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (data) { lines = data; })
      .catch(function () { /* the page's banner already says when the agent is unreachable */ })
      .then(function () { setTimeout(refresh, REFRESH_MS); });
  }

  function fmt(v) {
    if (!finite(v)) return "—";
    var a = Math.abs(v);
    return v.toFixed(a >= 1000 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3);
  }

  function clock(ms, withDate) {
    var d = new Date(ms);
    var p = function (n) { return (n < 10 ? "0" : "") + n; };
    return (withDate ? d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " : "") + p(d.getHours()) + ":" + p(d.getMinutes());
  }

  // A trend chart: points [{ts, min, avg, max}] over [from, to]; min–max as a band when
  // the series is aggregated. Value labels left, time labels below; `refs` (limits) as
  // dashed lines with their label.
  function chart(series, title, refs) {
    refs = refs || [];
    var w = 800, h = 240, left = 70, right = 10, top = 10, bottom = 30;
    var from = Date.parse(series.from), to = Date.parse(series.to);
    var pts = series.points.map(function (p) { return { t: Date.parse(p.ts), min: p.min, avg: p.avg, max: p.max }; });
    var s = svg("svg", { viewBox: "0 0 " + w + " " + h, class: "chart", role: "img", "aria-label": title });
    var all = [];
    pts.forEach(function (p) { all.push(p.min, p.max, p.avg); });
    var r = range(all) && range(all.concat(refs.map(function (l) { return l.value; })));
    var x = function (t) { return left + ((t - from) / Math.max(1, to - from)) * (w - left - right); };
    var y = function (v) { return top + (1 - (v - r[0]) / (r[1] - r[0])) * (h - top - bottom); };
    s.appendChild(svg("rect", { x: left, y: top, width: w - left - right, height: h - top - bottom, class: "chart-frame" }));
    if (!r) {
      var t = svg("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "chart-label" });
      t.textContent = "No history yet";
      s.appendChild(t);
      return s;
    }
    [r[0], (r[0] + r[1]) / 2, r[1]].forEach(function (v) {
      var label = svg("text", { x: left - 6, y: y(v) + 5, "text-anchor": "end", class: "chart-label" });
      label.textContent = fmt(v);
      s.appendChild(label);
      s.appendChild(svg("line", { x1: left, x2: w - right, y1: y(v), y2: y(v), class: "chart-grid" }));
    });
    var long = to - from > 6 * 3600 * 1000;
    [from, (from + to) / 2, to].forEach(function (tm, i) {
      var label = svg("text", { x: x(tm), y: h - 8, "text-anchor": ["start", "middle", "end"][i], class: "chart-label" });
      label.textContent = clock(tm, long && i === 0);
      s.appendChild(label);
    });
    refs.forEach(function (l) {
      s.appendChild(svg("line", { x1: left, x2: w - right, y1: y(l.value), y2: y(l.value), class: "chart-limit" }));
      var label = svg("text", { x: w - right - 4, y: y(l.value) - 4, "text-anchor": "end", class: "chart-limit-label" });
      label.textContent = l.label;
      s.appendChild(label);
    });
    var values = pts.map(function (p) { return p.avg; });
    runs(values).forEach(function (run) {
      if (series.resolution === "aggregate" && run.length > 1) {
        var upper = run.map(function (q) { var p = pts[q[0]]; return x(p.t).toFixed(1) + "," + y(p.max).toFixed(1); });
        var lower = run.slice().reverse().map(function (q) { var p = pts[q[0]]; return x(p.t).toFixed(1) + "," + y(p.min).toFixed(1); });
        s.appendChild(svg("polygon", { points: upper.concat(lower).join(" "), class: "chart-band" }));
      }
      if (run.length === 1) {
        s.appendChild(svg("circle", { cx: x(pts[run[0][0]].t), cy: y(run[0][1]), r: 3, class: "chart-dot" }));
      } else {
        var line = run.map(function (q) { return x(pts[q[0]].t).toFixed(1) + "," + y(q[1]).toFixed(1); }).join(" ");
        s.appendChild(svg("polyline", { points: line, class: "chart-line" }));
      }
    });
    return s;
  }

  function note(series, what) {
    var n = series.points.length;
    var text = n + (series.resolution === "raw" ? " samples" : " minutes (min/avg/max)");
    if (series.covered_from && Date.parse(series.covered_from) > Date.parse(series.from) + 60000) {
      text += " · history starts " + clock(Date.parse(series.covered_from), true) + ", less than " + what + " asked";
    }
    var p = document.createElement("p");
    p.className = "muted";
    p.textContent = text;
    return p;
  }

  function section(title, series, what, refs) {
    var d = document.createElement("div");
    d.className = "trend-part";
    var h = document.createElement("h3");
    h.textContent = title;
    d.appendChild(h);
    d.appendChild(chart(series, title, refs));
    d.appendChild(note(series, what));
    return d;
  }

  function get(path) {
    return fetch(path, { cache: "no-store" }).then(function (r) {
      if (!r.ok) return r.text().then(function (t) { throw new Error(t || "HTTP " + r.status); });
      return r.json();
    });
  }

  function load() {
    if (!open) return;
    var base = "api/tags/" + encodeURIComponent(open.device) + "/" + encodeURIComponent(open.tag) + "/history";
    var body = document.getElementById("trend-body");
    Promise.all([get(base + "?from=1h"), get(base + "?from=24h&step=1m")])
      .then(function (r) {
        while (body.firstChild) body.removeChild(body.firstChild);
        body.appendChild(section("Last hour", r[0], "the hour", open && open.refs));
        body.appendChild(section("Last 24 hours, per minute", r[1], "the day", open && open.refs));
      })
      .catch(function (err) {
        while (body.firstChild) body.removeChild(body.firstChild);
        var p = document.createElement("p");
        p.className = "error";
        p.textContent = "No trend: " + err.message;
        body.appendChild(p);
      });
  }

  function show(device, tag, unit, refs) {
    open = { device: device, tag: tag, unit: unit, refs: refs || [] };
    var dialog = document.getElementById("trend");
    document.getElementById("trend-title").textContent = device + " · " + tag + (unit ? " (" + unit + ")" : "");
    load();
    if (!dialog.open) dialog.showModal();
  }

  function init() {
    var dialog = document.getElementById("trend");
    document.getElementById("trend-close").addEventListener("click", function () { dialog.close(); });
    dialog.addEventListener("close", function () { open = null; });
    // The open trend follows the data while it is shown.
    setInterval(load, REFRESH_MS);
    refresh();
  }

  return { sparkCell: sparkCell, modelSpark: modelSpark, show: show, init: init };
})();

// The latest events (api/events, every 5 s): time, severity, kind, asset and the details in
// one line, filtered by the severity chosen, and who acknowledged it (or, for operators, the
// button: actions.js). Text nodes only.
var Events = (function () {
  var REFRESH_MS = 5000;

  function cell(text, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    return td;
  }

  function summary(details) {
    if (!details || typeof details !== "object") return "";
    return Object.keys(details).filter(function (k) { return details[k] !== null && typeof details[k] !== "object"; })
      .slice(0, 4).map(function (k) { return k + " " + details[k]; }).join(" · ");
  }

  function when(ts) {
    var d = new Date(ts);
    if (isNaN(d)) return ts;
    var p = function (n) { return (n < 10 ? "0" : "") + n; };
    return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }

  function render(list) {
    var box = document.getElementById("event-list");
    while (box.firstChild) box.removeChild(box.firstChild);
    if (!list.events.length) {
      var p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No events yet.";
      box.appendChild(p);
      return;
    }
    var table = document.createElement("table");
    var body = document.createElement("tbody");
    list.events.forEach(function (e) {
      var tr = document.createElement("tr");
      tr.className = "event-row";
      tr.dataset.kind = e.kind;
      tr.dataset.id = e.id;
      var sev = document.createElement("td");
      var b = document.createElement("span");
      b.className = "badge b-" + e.severity;
      b.textContent = e.severity;
      sev.appendChild(b);
      tr.appendChild(cell(when(e.ts), "when"));
      tr.appendChild(sev);
      tr.appendChild(cell(e.kind));
      tr.appendChild(cell(e.asset));
      tr.appendChild(cell(summary(e.details), "muted"));
      tr.appendChild(typeof Actions === "undefined" ? cell("") : Actions.eventCell(e));
      body.appendChild(tr);
    });
    table.appendChild(body);
    var wrap = document.createElement("div");
    wrap.className = "table-wrap";
    wrap.appendChild(table);
    box.appendChild(wrap);
  }

  function refresh() {
    var sev = document.getElementById("event-severity").value;
    fetch("api/events?limit=50" + (sev ? "&severity=" + sev : ""), { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(render)
      .catch(function () { /* the banner says when the agent is unreachable */ });
  }

  function init() {
    document.getElementById("event-severity").addEventListener("change", refresh);
    refresh();
    setInterval(refresh, REFRESH_MS);
  }

  return { init: init, refresh: refresh };
})();
