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
</style>
</head>
<body>
<h1>fivetuple <small id="server">connecting&hellip;</small></h1>
<p id="status">last update: <span id="updated">never</span></p>
<p id="error" hidden></p>
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

function reasons(counts) {
  const parts = Object.entries(counts || {}).filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1]).map(([why, n]) => why + " " + nf.format(n));
  return parts.length ? parts.join(", ") : "none";
}

// One entry per column: what it shows, how to sort it, how to print it.
const COLUMNS = [
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
];
const valueOf = (col, c) => (col.get ? col.get(c) : c[col.key]);
let sort = {key: "id", dir: 1};
let lastConnections = [];

function compare(col, a, b) {
  const x = valueOf(col, a), y = valueOf(col, b);
  if (x == null || y == null) return (x == null) - (y == null);
  return col.num ? x - y : collator.compare(String(x), String(y));
}

function drawHeader() {
  const cells = COLUMNS.map((col) => {
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
  const col = COLUMNS.find((c) => c.key === sort.key);
  const rows = connections.slice().sort((a, b) => sort.dir * compare(col, a, b) || a.id - b.id);
  const body = document.createDocumentFragment();
  for (const c of rows.slice(0, MAX_ROWS)) {
    const tr = document.createElement("tr");
    tr.dataset.connId = String(c.id);
    for (const column of COLUMNS) {
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
    td.colSpan = COLUMNS.length;
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
  $("server").textContent = [s.app, s.codec, s.backend, "pid " + s.pid, "up " + duration(s.uptime_s)].join(" \\u00b7 ");
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

async function getJSON(path) {
  const response = await fetch(path, {cache: "no-store", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS)});
  if (!response.ok) throw new Error(path + " answered HTTP " + response.status);
  return response.json();
}

async function refresh() {
  try {
    const [stats, conns] = await Promise.all([getJSON("stats"), getJSON("connections")]);
    drawCounters(stats, conns.count);
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
