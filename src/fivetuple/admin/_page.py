"""The live page served at ``GET /``: one self-contained HTML document.

Theory of operation. The page is static; all data comes from the JSON
endpoints (docs/admin.md). Every second it fetches ``stats`` and
``connections`` (relative URLs, so it also works behind a path prefix), then
redraws the counters and the connection table. The listing arrives in chunks
(the server builds it a batch of rows per loop iteration); ``fetch`` hands
over the whole document once the last chunk is in. The next fetch is scheduled
only after the previous one finished, so a slow server never piles up
requests. A failed fetch keeps the last good data on screen, dimmed, under a
visible error line.

Charts. The page also reads ``history`` (docs/admin.md): the whole ring
once, then ``history?after=N`` each second for the samples it has not got,
kept in a local copy no longer than the ring. Four charts are drawn from it
as inline SVG polylines by the page's own script (no chart library, nothing
fetched from elsewhere): connections per worker, accepts/s per worker,
bytes/s in and out, closes/s by reason. A null (a worker that did not
answer, or its first sample) breaks a line rather than drawing a false 0.
If the endpoint is a supervisor's (``stats.workers`` exists), the table
gains a ``worker`` column and a line lists the workers, unreachable ones
marked.

Everything from the server is written with ``textContent`` (never
``innerHTML``): a client's address or an app label cannot inject markup. No
external resources: the admin port may be on a machine without internet.
"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fivetuple admin</title>
<link rel="icon" href="data:,">
<style>
  :root { color-scheme: light dark; --line: #8884; --accent: #2a7ae2; --bad: #c62828; }
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1rem 1.5rem; }
  h1 { font-size: 1.2rem; margin: 0 0 .25rem; }
  h1 small { font-weight: normal; opacity: .7; }
  #counters { display: flex; flex-wrap: wrap; gap: .5rem; margin: .75rem 0; padding: 0; }
  #counters div { border: 1px solid var(--line); border-radius: 6px; padding: .35rem .7rem; }
  #counters dt { font-size: .75rem; opacity: .7; }
  #counters dd { margin: 0; font-size: 1.05rem; font-variant-numeric: tabular-nums; }
  #status { font-size: .85rem; opacity: .8; }
  #error { color: #fff; background: var(--bad); padding: .4rem .7rem; border-radius: 6px; }
  body.stale #counters, body.stale table { opacity: .45; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { padding: .2rem .6rem; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
  th { position: sticky; top: 0; background: Canvas; cursor: pointer; user-select: none; }
  th:hover { color: var(--accent); }
  th[aria-sort=ascending]::after { content: " \\25B2"; }
  th[aria-sort=descending]::after { content: " \\25BC"; }
  .num { text-align: right; }
  .empty { opacity: .6; font-style: italic; }
  #charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: .75rem; margin: .75rem 0; }
  #charts figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: .35rem .6rem; }
  #charts figcaption { font-size: .75rem; opacity: .8; display: flex; justify-content: space-between; }
  #charts svg { width: 100%; height: 90px; display: block; }
  #charts polyline { fill: none; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
  .legend { font-size: .72rem; display: flex; flex-wrap: wrap; gap: .1rem .6rem; min-height: 1em; }
  .legend span::before { content: "\\25A0 "; color: var(--swatch); }
  .unreachable { color: var(--bad); }
</style>
</head>
<body>
<h1>fivetuple <small id="server">connecting&hellip;</small></h1>
<p id="status">last update: <span id="updated">never</span></p>
<p id="error" hidden></p>
<p id="workers" hidden></p>
<dl id="counters">
  <div><dt>connections now / peak</dt><dd><span id="conn-count">&ndash;</span> / <span id="conn-peak">&ndash;</span></dd></div>
  <div><dt>descriptors / soft limit</dt><dd id="fds">&ndash;</dd></div>
  <div><dt>accepted</dt><dd id="accepted">&ndash;</dd></div>
  <div><dt>bytes in / out</dt><dd id="bytes">&ndash;</dd></div>
  <div><dt>buffered now / peak / budget</dt><dd id="buffers">&ndash;</dd></div>
  <div><dt>closes by reason</dt><dd id="closed">&ndash;</dd></div>
  <div><dt>accept pauses / errors</dt><dd id="refused">&ndash;</dd></div>
  <div><dt>accept queue / backlog</dt><dd id="accept-queue">&ndash;</dd></div>
  <div><dt>loop events per wakeup</dt><dd id="events-per-wakeup">&ndash;</dd></div>
</dl>
<section id="charts">
  <figure><figcaption><span>connections per worker</span><span id="chart-conns-max"></span></figcaption>
    <svg id="chart-conns" viewBox="0 0 360 100" preserveAspectRatio="none" role="img" aria-label="connections per worker"></svg>
    <div class="legend" id="chart-conns-legend"></div></figure>
  <figure><figcaption><span>accepts/s</span><span id="chart-accepts-max"></span></figcaption>
    <svg id="chart-accepts" viewBox="0 0 360 100" preserveAspectRatio="none" role="img" aria-label="accepts per second"></svg>
    <div class="legend" id="chart-accepts-legend"></div></figure>
  <figure><figcaption><span>bytes/s in, out</span><span id="chart-bytes-max"></span></figcaption>
    <svg id="chart-bytes" viewBox="0 0 360 100" preserveAspectRatio="none" role="img" aria-label="bytes per second"></svg>
    <div class="legend" id="chart-bytes-legend"></div></figure>
  <figure><figcaption><span>closes/s by reason</span><span id="chart-closes-max"></span></figcaption>
    <svg id="chart-closes" viewBox="0 0 360 100" preserveAspectRatio="none" role="img" aria-label="closes per second by reason"></svg>
    <div class="legend" id="chart-closes-legend"></div></figure>
</section>
<table>
  <thead><tr id="columns"></tr></thead>
  <tbody id="conns"></tbody>
</table>
<p id="truncated" class="empty" hidden></p>
<script>
"use strict";
const REFRESH_MS = 1000;
const FETCH_TIMEOUT_MS = 5000;
const MAX_ROWS = 1000;  // more rows than this make the redraw itself the bottleneck

const $ = (id) => document.getElementById(id);
const nf = new Intl.NumberFormat("en-US");
const collator = new Intl.Collator("en", {numeric: true});

function bytes(n) {
  if (n == null) return "n/a";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function duration(s) {
  if (s == null) return "";
  if (s < 60) return s.toFixed(1) + " s";
  const pad = (v) => String(Math.floor(v)).padStart(2, "0");
  const m = Math.floor(s / 60), h = Math.floor(m / 60);
  if (m < 60) return m + "m " + pad(s % 60) + "s";
  if (h < 24) return h + "h " + pad(m % 60) + "m";
  return Math.floor(h / 24) + "d " + pad(h % 24) + "h";
}

function remote(c) {
  const addr = c.remote_addr || "(unnamed)";
  if (c.remote_port == null) return addr;  // a Unix socket: the address is a path
  return (addr.includes(":") ? "[" + addr + "]" : addr) + ":" + c.remote_port;
}

// A field of a TLS connection's tls object ("handshake" while it runs).
function tls(field) {
  return (c) => {
    if (c.tls == null) return null;
    if (!c.tls.handshake_done) return field === "version" ? "handshake" : null;
    const value = c.tls[field];
    return field === "version" && value ? value.replace(/^TLSv/, "") : value;
  };
}

function reasons(counts) {
  const parts = Object.entries(counts || {}).filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1]).map(([why, n]) => why + " " + nf.format(n));
  return parts.length ? parts.join(", ") : "none";
}

// One entry per column: what it shows, how to sort it, how to print it.
const COLUMNS = [
  {key: "worker", label: "worker", cls: "worker", onlyWithWorkers: true},
  {key: "id", label: "id", num: true},
  {key: "remote", label: "remote", get: remote, cls: "remote"},
  {key: "local_port", label: "local port", num: true},
  {key: "fd", label: "fd", num: true},
  {key: "state", label: "state"},
  {key: "age_s", label: "age", num: true, show: duration},
  {key: "idle_s", label: "idle", num: true, show: duration},
  {key: "bytes_in", label: "bytes in", num: true, show: bytes},
  {key: "bytes_out", label: "bytes out", num: true, show: bytes},
  {key: "input_bytes", label: "input", num: true, show: bytes},
  {key: "queued_bytes", label: "queued", num: true, show: bytes},
  {key: "app", label: "app"},
  {key: "codec", label: "codec"},
  {key: "tls_version", label: "tls", get: tls("version"), onlyWithTLS: true},
  {key: "tls_cipher", label: "cipher", get: tls("cipher"), onlyWithTLS: true},
  {key: "tls_alpn", label: "alpn", get: tls("alpn"), onlyWithTLS: true},
  {key: "tls_sni", label: "sni", get: tls("sni"), onlyWithTLS: true},
  {key: "tls_peer_cert", label: "peer cert", get: tls("peer_cert"), onlyWithTLS: true},
];
const valueOf = (col, c) => (col.get ? col.get(c) : c[col.key]);
let sort = {key: "id", dir: 1};
let lastConnections = [];
let withWorkers = false;  // a supervisor's endpoint: rows have a worker column
let withTLS = false;  // a TLS server: rows have a tls object (kept once seen: no flicker)
const shownColumns = () => COLUMNS.filter((col) =>
  (withWorkers || !col.onlyWithWorkers) && (withTLS || !col.onlyWithTLS));

function compare(col, a, b) {
  const x = valueOf(col, a), y = valueOf(col, b);
  if (x == null || y == null) return (x == null) - (y == null);
  return col.num ? x - y : collator.compare(String(x), String(y));
}

function drawHeader() {
  const cells = shownColumns().map((col) => {
    const th = document.createElement("th");
    th.textContent = col.label;
    th.dataset.key = col.key;
    if (col.num) th.className = "num";
    if (sort.key === col.key) th.setAttribute("aria-sort", sort.dir > 0 ? "ascending" : "descending");
    th.addEventListener("click", () => {
      sort = {key: col.key, dir: sort.key === col.key ? -sort.dir : 1};
      drawHeader();
      drawTable(lastConnections);
    });
    return th;
  });
  $("columns").replaceChildren(...cells);
}

function drawTable(connections) {
  lastConnections = connections;
  const col = shownColumns().find((c) => c.key === sort.key) || COLUMNS[1];
  const byWorker = (a, b) => collator.compare(String(a.worker ?? ""), String(b.worker ?? ""));
  const rows = connections.slice().sort((a, b) => sort.dir * compare(col, a, b) || byWorker(a, b) || a.id - b.id);
  const body = document.createDocumentFragment();
  for (const c of rows.slice(0, MAX_ROWS)) {
    const tr = document.createElement("tr");
    tr.dataset.connId = String(c.id);
    if (c.worker != null) tr.dataset.worker = String(c.worker);
    for (const column of shownColumns()) {
      const td = document.createElement("td");
      const value = valueOf(column, c);
      td.textContent = value == null ? "" : column.show ? column.show(value) : String(value);
      if (column.show === bytes && value != null) td.title = nf.format(value) + " bytes";
      td.className = [column.cls, column.num && "num"].filter(Boolean).join(" ");
      tr.append(td);
    }
    body.append(tr);
  }
  if (!rows.length) {
    const tr = document.createElement("tr"), td = document.createElement("td");
    td.colSpan = shownColumns().length;
    td.className = "empty";
    td.textContent = "no connections";
    tr.append(td);
    body.append(tr);
  }
  $("conns").replaceChildren(body);
  const cut = $("truncated");
  cut.hidden = rows.length <= MAX_ROWS;
  cut.textContent = "showing the first " + nf.format(MAX_ROWS) + " of " + nf.format(rows.length) + " rows in this order";
}

function drawCounters(stats, count) {
  const s = stats.server, conns = stats.connections, fds = stats.descriptors;
  const many = stats.workers != null;
  $("server").textContent = [s.app, s.codec, s.backend, (many ? "supervisor pid " : "pid ") + s.pid,
    ...(many ? [s.workers + " of " + s.workers_asked + " workers answering"] : []),
    "up " + duration(s.uptime_s)].join(" \\u00b7 ");
  drawWorkers(stats.workers);
  $("conn-count").textContent = nf.format(count);
  $("conn-peak").textContent = nf.format(conns.peak) + (conns.max == null ? "" : " (max " + nf.format(conns.max) + ")");
  $("fds").textContent = nf.format(fds.in_use) + " / " + nf.format(fds.soft_limit);
  $("accepted").textContent = nf.format(stats.listeners.reduce((sum, l) => sum + l.accepted, 0));
  $("bytes").textContent = bytes(stats.bytes.in) + " / " + bytes(stats.bytes.out);
  const buf = stats.buffers || {};
  $("buffers").textContent = bytes(buf.now) + " / " + bytes(buf.peak) + " / " +
    (buf.max == null ? "none" : bytes(buf.max));
  $("closed").textContent = reasons(stats.closed);
  $("refused").textContent = reasons(stats.refused) + " / " + reasons(stats.accept_errors);
  $("accept-queue").textContent = stats.listeners.map((l) =>
    (l.accept_queue == null ? "n/a" : nf.format(l.accept_queue)) + " / " + nf.format(l.backlog)).join(", ");
  $("events-per-wakeup").textContent = stats.loop.events_per_wakeup.toFixed(2);
}

function drawWorkers(workers) {
  const line = $("workers");
  line.hidden = workers == null;
  if (workers == null) return;
  const parts = Object.entries(workers).map(([label, w]) => {
    const span = document.createElement("span");
    span.dataset.worker = label;
    if (w.reachable) {
      span.textContent = "worker " + label + ": pid " + w.pid + ", " + nf.format(w.stats.connections.now) + " conns";
    } else {
      span.className = "unreachable";
      span.textContent = "worker " + label + ": unreachable (" + w.error + ")";
    }
    return span;
  });
  const nodes = [];
  parts.forEach((span, i) => { if (i) nodes.push(" \\u00b7 "); nodes.push(span); });
  line.replaceChildren(...nodes);
}

// -- charts from /history: inline SVG, drawn here ------------------------------
const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_W = 360, CHART_H = 100;
const PALETTE = ["#2a7ae2", "#e2762a", "#2aa84a", "#c62828", "#8e44ad", "#16a085", "#d4a017", "#7f8c8d"];
let samples = [];      // the local copy of the endpoint's ring, oldest first
let historyAfter = 0;  // the seq of the newest sample we have

function workerLabels(list) {
  return [...new Set(list.flatMap((s) => Object.keys(s.workers)))].sort(collator.compare);
}

function perWorker(list, get) {
  return workerLabels(list).map((label) => ({
    name: "worker " + label,
    values: list.map((s) => (s.workers[label] == null ? null : get(s.workers[label]))),
  }));
}

const CHARTS = [
  {id: "chart-conns", show: nf.format, series: (list) => perWorker(list, (w) => w.connections)},
  {id: "chart-accepts", show: (v) => v.toFixed(1), series: (list) => perWorker(list, (w) => w.accepts_per_s)},
  {id: "chart-bytes", show: (v) => bytes(Math.round(v)) + "/s", series: (list) => [
    {name: "in", values: list.map((s) => s.total.bytes_in_per_s)},
    {name: "out", values: list.map((s) => s.total.bytes_out_per_s)},
  ]},
  {id: "chart-closes", show: (v) => v.toFixed(1), series: (list) => {
    const names = [...new Set(list.flatMap((s) => Object.keys(s.total.closed_per_s || {})))].sort();
    return names.map((name) => ({name, values: list.map((s) => (s.total.closed_per_s || {})[name] || 0)}));
  }},
];

function drawChart(chart, list) {
  const series = chart.series(list);
  let top = 0;
  for (const one of series) for (const v of one.values) if (v != null && v > top) top = v;
  const scale = top > 0 ? top * 1.1 : 1;
  const x = (i) => (list.length > 1 ? (i / (list.length - 1)) * CHART_W : CHART_W);
  const y = (v) => CHART_H - (v / scale) * CHART_H;
  const lines = [], legend = [];
  series.forEach((one, k) => {
    const color = PALETTE[k % PALETTE.length];
    let run = [];
    const flush = () => {  // a null breaks the line: one polyline per unbroken run
      if (!run.length) return;
      const line = document.createElementNS(SVG_NS, "polyline");
      line.setAttribute("points", run.join(" "));
      line.setAttribute("stroke", color);
      line.dataset.series = one.name;
      line.dataset.count = String(run.length);
      lines.push(line);
      run = [];
    };
    one.values.forEach((v, i) => { if (v == null) flush(); else run.push(x(i).toFixed(1) + "," + y(v).toFixed(1)); });
    flush();
    const last = one.values.filter((v) => v != null).pop();
    const item = document.createElement("span");
    item.style.setProperty("--swatch", color);
    item.textContent = one.name + (last == null ? "" : " " + chart.show(last));
    legend.push(item);
  });
  $(chart.id).replaceChildren(...lines);
  $(chart.id + "-legend").replaceChildren(...legend);
  $(chart.id + "-max").textContent = series.length ? "max " + chart.show(top) : "";
}

function addHistory(doc) {
  if (doc.next_after < historyAfter) {  // the endpoint restarted: start again
    samples = [];
    historyAfter = 0;
    return;
  }
  samples = samples.concat(doc.samples);
  if (samples.length > doc.capacity) samples = samples.slice(samples.length - doc.capacity);
  historyAfter = doc.next_after;
  for (const chart of CHARTS) drawChart(chart, samples);
}

async function getJSON(path) {
  const response = await fetch(path, {cache: "no-store", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS)});
  if (!response.ok) throw new Error(path + " answered HTTP " + response.status);
  return response.json();
}

async function refresh() {
  try {
    const [stats, conns, history] = await Promise.all([
      getJSON("stats"), getJSON("connections"),
      getJSON("history?after=" + historyAfter).catch(() => null),  // charts only: not fatal
    ]);
    const tlsRows = conns.connections.some((c) => c.tls != null);
    if (withWorkers !== (stats.workers != null) || (tlsRows && !withTLS)) {
      withWorkers = stats.workers != null;
      withTLS = withTLS || tlsRows;
      drawHeader();
    }
    drawCounters(stats, conns.count);
    if (history) addHistory(history);
    drawTable(conns.connections);
    document.title = "fivetuple admin (" + conns.count + ")";
    $("updated").textContent = new Date(conns.time * 1000).toLocaleTimeString();
    $("error").hidden = true;
    document.body.classList.remove("stale");
  } catch (err) {
    $("error").textContent = "update failed: " + (err && err.message ? err.message : err) +
      " (retrying every second; the numbers shown are from the last update)";
    $("error").hidden = false;
    document.body.classList.add("stale");
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

drawHeader();
refresh();
</script>
</body>
</html>
"""
