// The node's live dashboard: polls /status a few times per second and draws
// the ring, the rates, the counters, the trees, the peers and the relay.
// Self-contained: no library, nothing loaded from elsewhere.
"use strict";

const POLL_MS = 250;
const RETRY_MS = 1000;
const HISTORY = 120; // points per chart: 30 s at 4 polls per second
const SVG = "http://www.w3.org/2000/svg";
const RADIUS = 160;

const CHARTS = [
  ["requests_sent", "requests sent /s"],
  ["requests_answered", "replies received /s"],
  ["requests_served", "requests served /s"],
  ["requests_failed", "requests failed /s"],
  ["events_published", "events published /s"],
  ["events_received", "events received /s"],
  ["events_dropped", "events dropped /s"],
  ["link_bytes_sent", "link bytes out /s"],
  ["link_bytes_received", "link bytes in /s"],
  ["tunnel_bytes_sent", "tunnel bytes out /s"],
];

const history = new Map(CHARTS.map(([name]) => [name, []]));

function $(id) { return document.getElementById(id); }

function element(tag, attributes, text) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function short(id) { return id ? id.slice(0, 8) : "—"; }

function number(value) {
  if (value === null || value === undefined) return "—";
  if (Math.abs(value) >= 1e9) return (value / 1e9).toFixed(2) + " G";
  if (Math.abs(value) >= 1e6) return (value / 1e6).toFixed(2) + " M";
  if (Math.abs(value) >= 1e4) return (value / 1e3).toFixed(1) + " k";
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
}

// Where an id sits on the ring: its first 32 bits as a fraction of a turn,
// from the top, clockwise.
function position(id, radius) {
  const turn = parseInt(id.slice(0, 8), 16) / 4294967296;
  const angle = turn * 2 * Math.PI - Math.PI / 2;
  return [radius * Math.cos(angle), radius * Math.sin(angle)];
}

function drawRing(status) {
  const ring = $("ring");
  ring.replaceChildren();
  ring.append(element("svg:circle", { class: "circle", cx: 0, cy: 0, r: RADIUS }));
  const leaves = new Set([...status.leaf_set.right, ...status.leaf_set.left]);
  const [sx, sy] = position(status.node_id, RADIUS);
  for (const peer of status.peers) {
    const [x, y] = position(peer.id, RADIUS);
    ring.append(element("svg:line", { class: "link", x1: sx, y1: sy, x2: x, y2: y }));
  }
  for (const peer of status.peers) {
    const [x, y] = position(peer.id, RADIUS);
    const kind = leaves.has(peer.id) ? "leaf" : "peer";
    const dot = element("svg:circle", { class: "node " + kind, cx: x, cy: y, r: 6, "data-id": peer.id });
    dot.append(element("svg:title", {}, `${peer.id}\n${peer.address}`));
    ring.append(dot);
    const [lx, ly] = position(peer.id, RADIUS + 18);
    ring.append(element("svg:text", { x: lx, y: ly + 3, "text-anchor": "middle" }, short(peer.id).slice(0, 4)));
  }
  const self = element("svg:circle", { class: "node self", cx: sx, cy: sy, r: 9, "data-id": status.node_id });
  self.append(element("svg:title", {}, `this node\n${status.node_id}\n${status.address.advertised}`));
  ring.append(self);
  ring.append(element("svg:text", { x: 0, y: 4, "text-anchor": "middle" }, short(status.node_id)));
  ring.setAttribute("data-peers", String(status.peers.length));
  $("peer-count").textContent = status.peers.length;
  $("leaf-count").textContent = leaves.size;
  $("table-entries").textContent = status.routing_table.entries;
  $("table-rows").textContent = status.routing_table.filled_rows;
}

function buildCharts() {
  const charts = $("charts");
  for (const [name, label] of CHARTS) {
    const chart = element("div", { class: "chart", "data-rate": name });
    chart.append(element("div", { class: "label" }, label));
    chart.append(element("div", { class: "value", id: "rate-" + name }, "0"));
    const svg = element("svg:svg", { viewBox: `0 0 ${HISTORY} 40`, preserveAspectRatio: "none" });
    svg.append(element("svg:polyline", { points: "" }));
    chart.append(svg);
    charts.append(chart);
  }
}

function drawRates(status) {
  $("rate-window").textContent = status.rates.window_s;
  for (const [name] of CHARTS) {
    const value = status.rates[name] || 0;
    const points = history.get(name);
    points.push(value);
    if (points.length > HISTORY) points.shift();
    $("rate-" + name).textContent = number(value);
    const top = Math.max(...points, 1e-9);
    const offset = HISTORY - points.length;
    const line = points.map((v, i) => `${offset + i},${(38 - (v / top) * 36).toFixed(1)}`).join(" ");
    const chart = document.querySelector(`.chart[data-rate="${name}"]`);
    chart.querySelector("polyline").setAttribute("points", line);
    chart.setAttribute("data-points", String(points.length));
  }
}

function drawCounters(status) {
  const rows = [
    ["requests sent", status.requests.sent], ["requests answered", status.requests.answered],
    ["requests failed", status.requests.failed], ["requests pending", status.requests.pending],
    ["requests received", status.requests.received], ["requests served", status.requests.served],
    ["requests expired", status.requests.expired], ["requests refused", status.requests.refused],
    ["events published", status.events.published], ["broadcasts sent", status.events.broadcasts_sent],
    ["events received", status.events.received], ["events dropped", status.events.dropped],
    ["events missed", status.events.missed], ["events buffered", status.events.buffered],
    ["tunnels opened", status.tunnels.opened], ["tunnels accepted", status.tunnels.accepted],
    ["tunnels open", status.tunnels.open], ["links open", status.links.open],
    ["link bytes out", status.links.bytes_sent], ["link bytes in", status.links.bytes_received],
    ["frames dropped (full link)", status.drops.link_queue_full],
    ["routed dropped", status.drops.routed_dropped],
    ["peers declared dead", status.drops.peers_declared_dead],
  ];
  const box = $("counters");
  box.replaceChildren(...rows.map(([label, value]) => {
    const row = element("div", { "data-counter": label });
    row.append(element("span", {}, label), element("b", {}, number(value)));
    return row;
  }));
}

function cell(text, mono) {
  const td = element("td", mono ? { class: "mono" } : {}, text);
  if (text === "—") td.classList.add("none");
  return td;
}

function drawTrees(status) {
  const body = $("trees").tBodies[0];
  body.replaceChildren(...status.trees.map((tree) => {
    const tr = element("tr");
    const name = tree.name !== null ? `${tree.kind} ${tree.name}` : short(tree.id);
    const role = tree.root ? "root" : tree.member ? "member" : "forwarder";
    tr.append(cell(name), cell(role + (tree.root && tree.member ? " (member)" : "")),
      cell(short(tree.parent), true), cell(tree.children.map(short).join(" ") || "—", true));
    return tr;
  }));
  $("tree-count").textContent = status.trees.length;
}

function drawPeers(status) {
  const body = $("peers").tBodies[0];
  body.replaceChildren(...status.peers.map((peer) => {
    const tr = element("tr");
    tr.append(cell(short(peer.id), true), cell(peer.address, true), cell(duration(peer.link_age_s)),
      cell(peer.rtt_ms === null ? "—" : peer.rtt_ms.toFixed(1) + " ms"),
      cell(number(peer.queued_bytes)), cell(number(peer.bytes_sent)), cell(number(peer.bytes_received)));
    return tr;
  }));
}

function drawRelay(status) {
  const body = $("relay").tBodies[0];
  const relay = status.relay;
  if (relay === null) {
    $("relay-summary").textContent = "(not served by this node)";
    body.replaceChildren();
    return;
  }
  $("relay-summary").textContent =
    `(port ${relay.port}: ${relay.connections_open} clients now, ${relay.connections_accepted} ever, ` +
    `${relay.protocol_violations} protocol violations)`;
  body.replaceChildren(...relay.clients.map((client) => {
    const tr = element("tr");
    tr.append(cell(client.cluster === null ? "client" : `service of ${client.cluster}`),
      cell(number(client.events_dropped)));
    return tr;
  }));
}

function draw(status) {
  $("node-id").textContent = status.node_id;
  $("network").textContent = status.network;
  $("version").textContent = status.version;
  $("uptime").textContent = duration(status.uptime_s);
  $("address").textContent = status.address.advertised;
  const joined = $("joined");
  joined.textContent = status.joined ? "joined" : "joining";
  joined.className = "badge " + (status.joined ? "good" : "bad");
  drawRing(status);
  drawRates(status);
  drawCounters(status);
  drawTrees(status);
  drawPeers(status);
  drawRelay(status);
}

async function poll() {
  const connection = $("connection");
  let wait = POLL_MS;
  try {
    const response = await fetch("/status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    draw(await response.json());
    connection.textContent = "live";
    connection.className = "badge good";
    document.body.setAttribute("data-updates", String(Number(document.body.getAttribute("data-updates") || 0) + 1));
  } catch (error) {
    connection.textContent = "no answer from the node";
    connection.className = "badge bad";
    wait = RETRY_MS;
  }
  setTimeout(poll, wait);
}

buildCharts();
poll();
