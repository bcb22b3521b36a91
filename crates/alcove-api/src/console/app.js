// The alcove operator console. Names, metadata, output and events shown here
// come from untrusted code, so the DOM is only ever built with createElement
// and textContent, and links are only hash routes made of encoded ids.
'use strict';

const PAGE_SIZE = 50;
const MAX_EVENTS = 500;
const POLL_MS = 2000;
const STATS_POLL_MS = 5000;
const CONFIRM_MS = 5000;
const RECONNECT_MS = 2000;
const STATUSES = ['', 'ok', 'failed', 'exited', 'signaled', 'timeout', 'cpu_time', 'oom',
  'killed_by_policy', 'error', 'cancelled', 'queued', 'running'];
const UNFINISHED = new Set(['queued', 'running']);
const FUNCTION_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const SVG_NS = 'http://www.w3.org/2000/svg';
const CHART = { width: 640, height: 200, left: 44, right: 12, top: 14, bottom: 24 };

const viewRoot = document.getElementById('view');
const errorBox = document.getElementById('error');
const header = document.getElementById('header');
const loginView = document.getElementById('login-view');
const loginForm = document.getElementById('login-form');
const loginInput = document.getElementById('login-token');

// ---------------------------------------------------------------- helpers

const isNumber = (value) => typeof value === 'number' && Number.isFinite(value);
const isPlainObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);
const isAbsent = (value) => value === null || value === undefined;
// The objects of a list the daemon sent, or none if it sent no list.
const listOf = (value) => (Array.isArray(value) ? value.filter(isPlainObject) : []);
const messageOf = (error) => (error && error.message ? error.message : String(error));
const isAbort = (error) => Boolean(error && error.name === 'AbortError');
const pad = (number) => String(number).padStart(2, '0');

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === 'text') node.textContent = value;
    else if (key === 'className') node.className = value;
    else if (key === 'hidden' || key === 'disabled') node[key] = Boolean(value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// The only way a link is made: a hash route whose every segment is encoded,
// so an id can neither leave the console nor become a javascript: URL.
function routeLink(text, ...segments) {
  const link = document.createElement('a');
  link.href = '#/' + segments.map((segment) => encodeURIComponent(String(segment))).join('/');
  link.textContent = text;
  return link;
}

// Rewrites a node only when its text changed, sparing the DOM on every poll.
function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

function formatTime(unixSeconds) {
  if (!isNumber(unixSeconds)) return '—';
  const d = new Date(unixSeconds * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

const formatClock = (unixSeconds) => formatTime(unixSeconds).slice(11, 16);
const formatNumber = (value, digits = 2) => (isNumber(value) ? String(Number(value.toFixed(digits))) : '—');
const formatSeconds = (ms) => (isNumber(ms) ? `${formatNumber(ms / 1000, 3)} s` : '—');

function formatBytes(bytes) {
  if (!isNumber(bytes)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  for (; Math.abs(value) >= 1024 && unit < units.length - 1; unit += 1) value /= 1024;
  return `${Number.isInteger(value) ? value : value.toFixed(1)} ${units[unit]}`;
}

function formatMs(ms) {
  if (!isNumber(ms)) return '—';
  if (ms < 10) return ms.toFixed(2);
  return ms < 1000 ? ms.toFixed(1) : String(Math.round(ms));
}

function formatAge(seconds) {
  if (!isNumber(seconds)) return '—';
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

// Any value as one line of text; objects keep their JSON shape.
function compactValue(value) {
  if (isAbsent(value)) return '—';
  if (typeof value === 'string') return value;
  return typeof value === 'object' ? JSON.stringify(value) : String(value);
}

// Characters that would make hostile text read as something else: controls,
// and the invisible ones that reorder or hide what follows (bidi, zero-width).
const DECEPTIVE = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/;

// A key or value as plain `word`, or quoted (JSON) when it holds spaces,
// quotes, `=` or characters of DECEPTIVE, so a crafted key or value cannot
// pass for more pairs, and what is hidden shows as an escape.
const pairWord = (text) => (typeof text === 'string' && text !== '' && !/[\s"=,]/.test(text) && !DECEPTIVE.test(text)
  ? text : JSON.stringify(text).replace(/[\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`));

// `k=v` pairs, each side quoted when it could mislead.
const pairsText = (object) => Object.entries(object)
  .map(([key, value]) => `${pairWord(key)}=${pairWord(value)}`)
  .join(' ');
const argvText = (argv) => (Array.isArray(argv) ? argv.map(String).join(' ') : compactValue(argv));
const kernelCounter = (record, name) => (isPlainObject(record.kernel) ? compactValue(record.kernel[name]) : '—');
// Status text feeds a class name only when it is one the stylesheet knows.
const statusClass = (status) => (status && STATUSES.includes(status) ? `status status-${status}` : 'status');

function exitText(record) {
  if (!isAbsent(record.exit_code)) return `code ${record.exit_code}`;
  return isAbsent(record.signal) ? '—' : `signal ${record.signal}`;
}

function cpuMs(record) {
  if (!isNumber(record.cpu_user_ms) && !isNumber(record.cpu_sys_ms)) return null;
  return (isNumber(record.cpu_user_ms) ? record.cpu_user_ms : 0) + (isNumber(record.cpu_sys_ms) ? record.cpu_sys_ms : 0);
}

function makeTable(id, headings) {
  const tbody = el('tbody');
  const headRow = el('tr', {}, ...headings.map((heading) => el('th', { text: heading })));
  return { table: el('table', { id }, el('thead', {}, headRow), tbody), tbody };
}

function definitionList(pairs) {
  const list = el('dl');
  for (const [term, value] of pairs) list.append(el('dt', { text: term }), el('dd', { text: value }));
  return list;
}

// Puts `items` into `tbody` in order, reusing the row of each key seen before
// and dropping the rest.
function syncRows(tbody, known, items, keyOf, build) {
  const kept = new Map();
  let cursor = tbody.firstChild;
  for (const item of items) {
    const key = keyOf(item);
    if (kept.has(key)) continue;
    const entry = known.get(key) || build(item, key);
    entry.update(item);
    kept.set(key, entry);
    if (entry.row === cursor) cursor = cursor.nextSibling;
    else tbody.insertBefore(entry.row, cursor);
  }
  while (cursor) {
    const stale = cursor;
    cursor = cursor.nextSibling;
    stale.remove();
  }
  return kept;
}

// A table refreshed in place by each poll, rows keyed by id: only changed
// cells are rewritten, so a half-confirmed kill button, a selection or a
// hover survives. A column is {head, text(item)} for text that may change,
// or {head, make(item)} for a node made once per row (links, buttons);
// `className` is a string or a function of the item.
function liveTable(id, rowClass, columns, emptyText, keyOf = (item) => String(item.id)) {
  const { table, tbody } = makeTable(id, columns.map((column) => column.head));
  const empty = el('p', { className: 'empty', text: emptyText, hidden: true });
  let known = new Map();
  const build = (item, key) => {
    const cells = columns.map((column) => (column.make ? el('td', {}, column.make(item)) : el('td')));
    const row = el('tr', { className: rowClass }, ...cells);
    row.dataset.id = key;
    const update = (next) => {
      if (typeof next.status === 'string') row.dataset.status = next.status;
      columns.forEach((column, index) => {
        if (column.text) setText(cells[index], column.text(next));
        if (column.className) {
          cells[index].className = typeof column.className === 'function' ? column.className(next) : column.className;
        }
      });
    };
    return { row, update };
  };
  const sync = (items) => {
    known = syncRows(tbody, known, items, keyOf, build);
    empty.hidden = items.length > 0;
  };
  return { table, empty, sync };
}

// ---------------------------------------------------------------- errors

let errorSource = null;

function showError(source, message) {
  errorSource = source;
  errorBox.textContent = message;
  errorBox.hidden = false;
}

// Clears the message if `source` put it there (any message without a source),
// so a poll that recovers takes its own error away but not someone else's.
function clearError(source) {
  if (source !== undefined && source !== errorSource) return;
  errorSource = null;
  errorBox.textContent = '';
  errorBox.hidden = true;
}

class ApiError extends Error {
  constructor(message, status, handled = false) {
    super(message);
    this.status = status;
    // Already dealt with (a refused token): callers show nothing more.
    this.handled = handled;
  }
}

// Runs a task for a view, never letting it reject: its error goes to #error
// unless the view has been left meanwhile.
async function guarded(ctx, source, task) {
  try {
    await task();
    if (ctx.alive) clearError(source);
  } catch (error) {
    if (!ctx.alive || isAbort(error) || (error && error.handled)) return;
    showError(source, messageOf(error));
  }
}

// ---------------------------------------------------------------- API

// The token lives in this page's memory only, never in storage or a cookie:
// a public function is served on this same origin, and a page of it opened in
// this tab could read the tab's sessionStorage. A reload asks for it again.
let heldToken = '';
const readToken = () => heldToken;

async function errorFromResponse(response) {
  let message = `HTTP ${response.status}${response.statusText ? ' ' + response.statusText : ''}`;
  try {
    const body = JSON.parse(await response.text());
    if (isPlainObject(body) && isPlainObject(body.error) && typeof body.error.message === 'string') {
      message = body.error.message;
    }
  } catch {
    // Not the API's error shape: the HTTP status is all there is to say.
  }
  return new ApiError(message, response.status);
}

// Back to the login view; the error returned is one its callers skip.
function refuse(message) {
  signOut(message);
  return new ApiError(message || 'Signed out', 401, true);
}

async function api(path, { method = 'GET', signal } = {}) {
  const token = readToken();
  if (!token) throw refuse('');
  // CSRF defence: the token rides in a header that a cross-site page cannot
  // make the browser add, and no cookie is ever set or sent.
  const response = await fetch(path, {
    method, signal, credentials: 'omit', cache: 'no-store', headers: { Authorization: 'Bearer ' + token },
  });
  if (response.status === 401) throw refuse('The token was refused');
  if (!response.ok) throw await errorFromResponse(response);
  return response;
}

async function apiJson(path, signal) {
  const response = await api(path, { signal });
  try {
    return await response.json();
  } catch (error) {
    if (isAbort(error)) throw error;
    throw new ApiError(`The daemon's answer to ${path} is not JSON`, response.status);
  }
}

// ---------------------------------------------------------------- views

let currentView = null;

// Each view gets a context whose timers, fetches and hooks all end when the
// view is left, so nothing from an old view keeps polling or writes the DOM.
function enterView() {
  leaveView();
  const controller = new AbortController();
  const timers = new Set();
  const leaveHooks = [];
  const ctx = {
    alive: true,
    signal: controller.signal,
    later(task, ms) {
      if (!ctx.alive) return null;
      const id = setTimeout(() => {
        timers.delete(id);
        if (ctx.alive) task();
      }, ms);
      timers.add(id);
      return id;
    },
    cancel(id) {
      clearTimeout(id);
      timers.delete(id);
    },
    onLeave: (hook) => leaveHooks.push(hook),
    mount: (...nodes) => viewRoot.replaceChildren(...nodes),
    leave() {
      ctx.alive = false;
      controller.abort();
      for (const id of timers) clearTimeout(id);
      timers.clear();
      for (const hook of leaveHooks.splice(0)) hook();
    },
  };
  currentView = ctx;
  return ctx;
}

function leaveView() {
  if (currentView) currentView.leave();
  currentView = null;
}

// Runs `task` now and again `intervalMs` after each run ends, so a slow
// daemon never gets overlapping polls.
function poll(ctx, intervalMs, source, task) {
  const tick = async () => {
    await guarded(ctx, source, task);
    ctx.later(tick, intervalMs);
  };
  tick();
}

// A "Kill" button that first turns into "Really kill?" for a few seconds;
// only a click on that sends the request.
function killControl(ctx, perform) {
  const holder = el('span', { className: 'kill-holder' });
  const killButton = () => {
    const button = el('button', { type: 'button', className: 'kill', text: 'Kill' });
    button.addEventListener('click', () => {
      const confirm = el('button', { type: 'button', className: 'confirm-kill', text: 'Really kill?' });
      confirm.addEventListener('click', () => {
        confirm.disabled = true;
        perform();
      });
      holder.replaceChildren(confirm);
      ctx.later(() => holder.firstChild === confirm && holder.replaceChildren(killButton()), CONFIRM_MS);
    });
    return button;
  };
  holder.append(killButton());
  return holder;
}

// ---------------------------------------------------------------- functions

function showFunctions(ctx) {
  document.title = 'Functions · alcove';
  const functions = liveTable('functions-table', 'function-row', [
    { head: 'Name', make: (fn) => routeLink(String(fn.name), 'functions', fn.name) },
    { head: 'Latest', text: (fn) => compactValue(fn.latest) },
    { head: 'Versions', text: (fn) => compactValue(fn.versions) },
    { head: 'Handler', text: (fn) => argvText(fn.handler), className: 'mono' },
    { head: 'Start', text: (fn) => (fn.warm === true ? 'warm' : 'cold') },
  ], 'No functions deployed yet.', (fn) => String(fn.name));
  ctx.mount(el('h1', { text: 'Functions' }), functions.table, functions.empty);
  poll(ctx, POLL_MS, 'functions', async () => {
    functions.sync(listOf((await apiJson('/v1/functions', ctx.signal)).functions));
  });
}

// ---------------------------------------------------------------- one function

const SHOWN_CONFIG = new Set(['handler', 'env', 'secrets', 'memory_bytes', 'cpus', 'pids', 'timeout_ms',
  'output_bytes', 'net', 'concurrency', 'protocol', 'public']);

function versionSection(version) {
  const config = isPlainObject(version.config) ? version.config : {};
  const secrets = Array.isArray(config.secrets) ? config.secrets.map(String) : [];
  const envKeys = isPlainObject(config.env) ? Object.keys(config.env) : [];
  const pairs = [
    ['Created', formatTime(version.created_at)],
    ['Code digest', compactValue(version.code_digest)],
    ['Handler', argvText(config.handler)],
    ['Memory', formatBytes(config.memory_bytes)],
    ['CPUs', compactValue(config.cpus)],
    ['PIDs', compactValue(config.pids)],
    ['Timeout', formatSeconds(config.timeout_ms)],
    ['Output limit', formatBytes(config.output_bytes)],
    ['Network', compactValue(config.net)],
    ['Concurrency', compactValue(config.concurrency)],
    ['Protocol', compactValue(config.protocol)],
    ['Public', config.public === true ? 'yes' : 'no'],
    // Env values may be credentials: only their names are ever shown.
    ['Env keys', envKeys.length ? envKeys.join(', ') : 'none'],
    ['Secrets', secrets.length ? secrets.join(', ') : 'none'],
  ];
  for (const [key, value] of Object.entries(config)) {
    if (!SHOWN_CONFIG.has(key)) pairs.push([key, compactValue(value)]);
  }
  return el('section', { className: 'version' },
    el('h3', { text: `Version ${compactValue(version.version)}` }), definitionList(pairs));
}

function showFunctionDetails(container, detail) {
  const versions = listOf(detail.versions).sort((a, b) => (Number(b.version) || 0) - (Number(a.version) || 0));
  const parts = [el('h2', { text: 'Versions' })];
  if (!isAbsent(detail.aliases)) {
    const aliases = isPlainObject(detail.aliases) ? pairsText(detail.aliases) : compactValue(detail.aliases);
    parts.push(el('p', { className: 'meta', text: `Aliases: ${aliases}` }));
  }
  container.replaceChildren(...parts, ...versions.map(versionSection));
}

function showFunction(ctx, name) {
  document.title = `${name} · alcove`;
  const base = `/v1/functions/${encodeURIComponent(name)}`;
  const meta = el('p', { className: 'meta' });
  const chartSvg = (id) => svgEl('svg', { id, viewBox: `0 0 ${CHART.width} ${CHART.height}`, role: 'img' });
  const rateSvg = chartSvg('stats-rate');
  const durationSvg = chartSvg('stats-duration');
  const stats = el('section', { id: 'stats' },
    el('div', { className: 'chart' }, el('h3', { text: 'Invocations and errors per minute' }), rateSvg),
    el('div', { className: 'chart' }, el('h3', { text: 'Duration (ms): p50, p90, p99' }), durationSvg));
  const versions = el('section', { className: 'versions' });
  ctx.mount(el('p', { className: 'crumbs' }, routeLink('Functions', 'functions'), ' / '),
    el('h1', { text: name }), meta, stats, invocationsPanel(ctx, name), versions);

  guarded(ctx, 'function', async () => {
    let detail;
    try {
      detail = await apiJson(base, ctx.signal);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404 || !ctx.alive) throw error;
      // No such function: its stats and logs would only fail every poll.
      ctx.leave();
      showError('function', error.message);
      return;
    }
    meta.textContent = `Latest version ${compactValue(detail.latest)} of ${listOf(detail.versions).length}`;
    showFunctionDetails(versions, detail);
  });
  poll(ctx, STATS_POLL_MS, 'stats', async () => {
    const data = await apiJson(`${base}/stats`, ctx.signal);
    const buckets = listOf(data.buckets);
    drawRateChart(rateSvg, buckets, isNumber(data.bucket_s) ? data.bucket_s : 60);
    drawDurationChart(durationSvg, buckets);
  });
}

function invocationsPanel(ctx, name) {
  const page = { status: '', before: null, nextBefore: null, request: 0 };
  const select = el('select', { id: 'status-filter' },
    ...STATUSES.map((status) => el('option', { value: status, text: status || 'all statuses' })));
  const newer = el('button', { id: 'newer', type: 'button', text: '« Newest', disabled: true });
  const older = el('button', { id: 'older', type: 'button', text: 'Older »', disabled: true });
  const invocations = liveTable('invocations-table', 'invocation-row', [
    { head: 'Time', text: (r) => formatTime(r.created_at) },
    { head: 'ID', make: (r) => routeLink(String(r.id), 'invocations', r.id), className: 'mono' },
    { head: 'Status', text: (r) => compactValue(r.status), className: (r) => statusClass(r.status) },
    { head: 'Exit', text: exitText },
    { head: 'Wall ms', text: (r) => formatMs(r.wall_ms) },
    { head: 'CPU ms', text: (r) => formatMs(cpuMs(r)) },
    { head: 'Memory peak', text: (r) => formatBytes(r.memory_peak_bytes) },
    { head: 'Execs', text: (r) => kernelCounter(r, 'execs') },
    { head: 'Refused syscalls', text: (r) => kernelCounter(r, 'refused_syscalls') },
  ], 'No invocations.');

  const load = () => guarded(ctx, 'invocations', async () => {
    // Only the latest request may draw: a poll of page one that answers
    // after a click on "Older" must not put page one back.
    const request = ++page.request;
    // The list shows outcomes only: each record's stderr stays on the server.
    const params = new URLSearchParams({ limit: String(PAGE_SIZE), stderr: 'false' });
    if (page.status) params.set('status', page.status);
    if (page.before !== null) params.set('after', page.before);
    const data = await apiJson(`/v1/functions/${encodeURIComponent(name)}/logs?${params}`, ctx.signal);
    if (request !== page.request) return;
    invocations.sync(listOf(data.invocations).slice(0, PAGE_SIZE));
    // The next page starts after this one's last row (by id: rows created in
    // the same instant are ordered by id, none skipped).
    page.nextBefore = typeof data.next_after === 'string' ? data.next_after : null;
    older.disabled = page.nextBefore === null;
    newer.disabled = page.before === null;
  });
  const goTo = (before) => {
    page.before = before;
    load();
  };
  select.addEventListener('change', () => {
    page.status = select.value;
    goTo(null);
  });
  older.addEventListener('click', () => page.nextBefore !== null && goTo(page.nextBefore));
  newer.addEventListener('click', () => goTo(null));
  // Live only on the first page: older pages do not change under the reader.
  const tick = async () => {
    if (page.before === null) await load();
    ctx.later(tick, POLL_MS);
  };
  tick();

  return el('section', { className: 'invocations' }, el('h2', { text: 'Invocations' }),
    el('div', { className: 'toolbar' }, el('label', { for: 'status-filter', text: 'Status' }), select, newer, older),
    invocations.table, invocations.empty);
}

// ---------------------------------------------------------------- charts

function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((step) => step * magnitude).find((candidate) => candidate >= value);
}

// Clears `svg`, draws axes with a few labels and a legend, returns the scales.
function chartFrame(svg, buckets, maxValue, legend) {
  svg.replaceChildren();
  const plotWidth = CHART.width - CHART.left - CHART.right;
  const bottom = CHART.height - CHART.bottom;
  const step = plotWidth / Math.max(buckets.length, 1);
  const ceiling = niceCeiling(maxValue);
  const x = (index) => CHART.left + step * (index + 0.5);
  const y = (value) => bottom - (bottom - CHART.top) * (Math.min(value, ceiling) / ceiling);
  for (const fraction of [0, 0.5, 1]) {
    const value = ceiling * fraction;
    svg.append(
      svgEl('line', { class: fraction ? 'grid' : 'axis', x1: CHART.left, x2: CHART.width - CHART.right, y1: y(value), y2: y(value) }),
      svgEl('text', { class: 'label', x: CHART.left - 4, y: y(value) + 4, 'text-anchor': 'end' }, formatNumber(value)));
  }
  svg.append(svgEl('line', { class: 'axis', x1: CHART.left, x2: CHART.left, y1: CHART.top, y2: bottom }));
  const labelled = buckets.length ? [0, Math.floor((buckets.length - 1) / 2), buckets.length - 1] : [];
  for (const index of new Set(labelled)) {
    if (!isNumber(buckets[index].start)) continue;
    svg.append(svgEl('text', { class: 'label', x: x(index), y: bottom + 16, 'text-anchor': 'middle' },
      formatClock(buckets[index].start)));
  }
  let offset = CHART.width - CHART.right;
  for (const [className, text] of legend.slice().reverse()) {
    svg.append(svgEl('text', { class: `legend ${className}`, x: offset, y: 10, 'text-anchor': 'end' }, text));
    offset -= text.length * 7 + 14;
  }
  return { x, y, step, bottom };
}

function noData(svg, text) {
  svg.append(svgEl('text', { class: 'label no-data', x: CHART.width / 2, y: CHART.height / 2, 'text-anchor': 'middle' }, text));
}

function titled(node, bucket) {
  const ms = (value) => (isNumber(value) ? `${formatMs(value)} ms` : '—');
  node.append(svgEl('title', {}, `${formatTime(bucket.start)}: ${Number(bucket.invocations) || 0} invocations, `
    + `${Number(bucket.errors) || 0} errors, p50 ${ms(bucket.p50_ms)}, p90 ${ms(bucket.p90_ms)}, p99 ${ms(bucket.p99_ms)}`));
  return node;
}

// Bars per bucket, and one circle.point (titled with all of that bucket's
// numbers) for every bucket that saw an invocation.
function drawRateChart(svg, buckets, bucketSeconds) {
  const invocations = buckets.map((bucket) => Math.max(0, Number(bucket.invocations) || 0));
  const errors = buckets.map((bucket) => Math.max(0, Number(bucket.errors) || 0));
  const per = bucketSeconds === 60 ? 'per minute' : `per ${bucketSeconds} s`;
  const scale = chartFrame(svg, buckets, Math.max(0, ...invocations, ...errors),
    [['series-invocations', `invocations ${per}`], ['series-errors', 'errors']]);
  const barWidth = Math.max(1, scale.step * 0.7);
  for (const [counts, className] of [[invocations, 'bar-invocations'], [errors, 'bar-errors']]) {
    counts.forEach((count, index) => {
      if (count <= 0) return;
      svg.append(svgEl('rect', { class: className, x: scale.x(index) - barWidth / 2, y: scale.y(count),
        width: barWidth, height: Math.max(0, scale.bottom - scale.y(count)) }));
    });
  }
  invocations.forEach((count, index) => {
    if (count > 0) svg.append(titled(svgEl('circle', { class: 'point', cx: scale.x(index), cy: scale.y(count), r: 3 }), buckets[index]));
  });
  if (!invocations.some((count) => count > 0)) noData(svg, 'No invocations in this window');
}

// One line per percentile, broken where a bucket has no value.
function drawDurationChart(svg, buckets) {
  const series = [['p50_ms', 'series-p50', 'p50'], ['p90_ms', 'series-p90', 'p90'], ['p99_ms', 'series-p99', 'p99']];
  const values = buckets.flatMap((bucket) => series.map(([field]) => bucket[field]).filter(isNumber));
  const scale = chartFrame(svg, buckets, Math.max(0, ...values), series.map(([, className, label]) => [className, label]));
  for (const [field, className] of series) {
    let path = '';
    let drawing = false;
    buckets.forEach((bucket, index) => {
      drawing = drawing && isNumber(bucket[field]);
      if (!isNumber(bucket[field])) return;
      const [cx, cy] = [scale.x(index), scale.y(bucket[field])];
      path += `${drawing ? 'L' : 'M'}${cx.toFixed(1)},${cy.toFixed(1)} `;
      drawing = true;
      svg.append(titled(svgEl('circle', { class: `marker ${className}`, cx, cy, r: 2 }), bucket));
    });
    if (path) svg.append(svgEl('path', { class: `line ${className}`, d: path.trim() }));
  }
  if (!values.length) noData(svg, 'No durations in this window');
}

// ---------------------------------------------------------------- one invocation

// Every field goes in the list, in the daemon's order, but these three,
// which get their own blocks below it.
const SEPARATE_FIELDS = new Set(['stderr', 'error', 'kernel']);

function fieldText(key, value) {
  if (key.endsWith('_at') && isNumber(value)) return `${formatTime(value)} (${value})`;
  if (key.endsWith('_bytes') && isNumber(value)) return `${formatBytes(value)} (${value} B)`;
  if (key.endsWith('_ms') && isNumber(value)) return `${formatMs(value)} ms`;
  return isPlainObject(value) ? pairsText(value) : compactValue(value);
}

function renderInvocation(ctx, record) {
  const keys = Object.keys(record).filter((key) => !SEPARATE_FIELDS.has(key));
  const back = typeof record.function === 'string'
    ? routeLink(`← ${record.function}`, 'functions', record.function) : routeLink('← Functions', 'functions');
  let kernel = el('p', { className: 'muted', text: 'Not recorded for this invocation.' });
  if (isPlainObject(record.kernel)) {
    const { table, tbody } = makeTable('kernel-table', ['Counter', 'Value']);
    for (const [name, value] of Object.entries(record.kernel)) {
      tbody.append(el('tr', {}, el('td', { text: name }), el('td', { text: compactValue(value) })));
    }
    kernel = table;
  }
  ctx.mount(el('p', { className: 'crumbs' }, back),
    el('h1', { className: 'mono', text: `Invocation ${compactValue(record.id)}` }),
    definitionList(keys.map((key) => [key, fieldText(key, record[key])])),
    el('h2', { text: 'Error' }),
    el('p', { id: 'invocation-error', className: isAbsent(record.error) ? 'muted' : 'error-text',
      text: isAbsent(record.error) ? 'none' : compactValue(record.error) }),
    el('h2', { text: 'Kernel counters' }), kernel,
    el('h2', { text: 'stderr' }),
    el('pre', { id: 'invocation-stderr', text: typeof record.stderr === 'string' ? record.stderr : '' }));
}

function showInvocation(ctx, id) {
  document.title = `Invocation ${id} · alcove`;
  ctx.mount(el('p', { className: 'muted', text: 'Loading…' }));
  const load = () => guarded(ctx, 'invocation', async () => {
    const record = await apiJson(`/v1/invocations/${encodeURIComponent(id)}`, ctx.signal);
    if (!isPlainObject(record)) throw new Error('The daemon sent no invocation record');
    renderInvocation(ctx, record);
    // Follow an invocation that is still going until it settles.
    if (UNFINISHED.has(record.status)) ctx.later(load, POLL_MS);
  });
  load();
}

// ---------------------------------------------------------------- sandboxes

// Per-second rates of growing totals between two polls. A sample closer
// than half a second to the last is too noisy and keeps the last rate.
function rateTracker() {
  let samples = new Map();
  return (items, keyOf, totalOf) => {
    const now = performance.now();
    const next = new Map();
    for (const item of items) {
      const [key, total] = [keyOf(item), totalOf(item)];
      const last = samples.get(key);
      if (!isNumber(total)) continue;
      if (last && now - last.at < 500) next.set(key, last);
      else next.set(key, { total, at: now, rate: last ? Math.max(0, (total - last.total) * 1000 / (now - last.at)) : null });
    }
    samples = next;
    return (key) => (samples.has(key) ? samples.get(key).rate : null);
  };
}

function limitsText(limits) {
  if (!isPlainObject(limits)) return '—';
  return `mem ${formatBytes(limits.memory_bytes)} · cpus ${compactValue(limits.cpus)} · `
    + `pids ${compactValue(limits.pids)} · disk ${formatBytes(limits.disk_bytes)}`;
}

function showSandboxes(ctx) {
  document.title = 'Sandboxes · alcove';
  const trackCpu = rateTracker();
  const trackSyscalls = rateTracker();
  let cpuRate = () => null;
  let syscallRate = () => null;
  const usage = (sandbox) => (isPlainObject(sandbox.usage) ? sandbox.usage : {});
  const kill = (path, reload) => guarded(ctx, 'kill', async () => {
    await api(path, { method: 'DELETE', signal: ctx.signal });
    await reload();
  });

  const sandboxes = liveTable('sandboxes-table', 'sandbox-row', [
    { head: 'ID', text: (s) => String(s.id), className: 'mono' },
    { head: 'State', text: (s) => compactValue(s.state) },
    { head: 'Age', text: (s) => formatAge(Date.now() / 1000 - s.created_at) },
    { head: 'CPU ms', text: (s) => formatMs(usage(s).cpu_ms) },
    // cpu_ms per wall second, over 1000 ms, is the share of one CPU.
    { head: 'CPU %', text: (s) => (isNumber(cpuRate(String(s.id))) ? `${(cpuRate(String(s.id)) / 10).toFixed(1)} %` : '—') },
    { head: 'Memory', text: (s) => formatBytes(usage(s).memory_bytes) },
    { head: 'Limits', text: (s) => limitsText(s.limits) },
    { head: 'Net', text: (s) => compactValue(s.net) },
    { head: 'Metadata', text: (s) => (isPlainObject(s.metadata) ? pairsText(s.metadata) : compactValue(s.metadata)) },
    { head: '', make: (s) => killControl(ctx, () => kill(`/v1/sandboxes/${encodeURIComponent(s.id)}`, loadSandboxes)) },
  ], 'No agent sandboxes.');

  const running = liveTable('running-table', 'running-row', [
    { head: 'ID', make: (r) => routeLink(String(r.id), 'invocations', r.id), className: 'mono' },
    { head: 'Function', make: (r) => (typeof r.function === 'string' ? routeLink(r.function, 'functions', r.function) : '—') },
    { head: 'Version', text: (r) => compactValue(r.version) },
    { head: 'Status', text: (r) => `${compactValue(r.status)}${r.cancelled === true ? ' (cancelling)' : ''}`,
      className: (r) => statusClass(r.status) },
    { head: 'Age', text: (r) => formatAge((Number(r.age_ms) || 0) / 1000) },
    { head: 'CPU ms', text: (r) => formatMs(r.cpu_ms) },
    { head: 'Memory', text: (r) => formatBytes(r.memory_bytes) },
    { head: 'Memory peak', text: (r) => formatBytes(r.memory_peak_bytes) },
    { head: 'Syscalls/s', text: (r) => formatNumber(syscallRate(String(r.id)), 1) },
    { head: '', make: (r) => killControl(ctx, () => kill(`/v1/invocations/${encodeURIComponent(r.id)}`, loadRunning)) },
  ], 'Nothing running.');
  const runningNote = el('p', { className: 'meta' });

  ctx.mount(el('h1', { text: 'Sandboxes' }),
    el('h2', { text: 'Agent sandboxes' }), sandboxes.table, sandboxes.empty,
    el('h2', { text: 'Running invocations' }), runningNote, running.table, running.empty);

  async function loadSandboxes() {
    const list = listOf((await apiJson('/v1/sandboxes', ctx.signal)).sandboxes);
    cpuRate = trackCpu(list, (s) => String(s.id), (s) => usage(s).cpu_ms);
    sandboxes.sync(list);
  }
  async function loadRunning() {
    const data = await apiJson('/v1/invocations', ctx.signal);
    const list = listOf(data.invocations);
    syscallRate = trackSyscalls(list, (r) => String(r.id), (r) => r.syscalls);
    running.sync(list);
    const total = isNumber(data.total) ? data.total : list.length;
    runningNote.textContent = data.truncated === true
      ? `${total} in flight; showing the first ${list.length}` : `${total} in flight`;
  }
  poll(ctx, POLL_MS, 'sandboxes', loadSandboxes);
  poll(ctx, POLL_MS, 'running', loadRunning);
}

// ---------------------------------------------------------------- events

// One server-sent-events block into {kind, payload}; comment-only blocks
// (keep-alives) and unparsable data give null.
function parseEventBlock(block) {
  let kind = '';
  const data = [];
  for (const line of block.split(/\r\n|\r|\n/)) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') kind = value;
    else if (field === 'data') data.push(value);
  }
  if (!data.length) return null;
  let payload;
  try {
    payload = JSON.parse(data.join('\n'));
  } catch {
    return null;
  }
  if (!isPlainObject(payload)) payload = { value: payload };
  return { kind: typeof payload.event === 'string' ? payload.event : kind || 'message', payload };
}

// Reads the stream to its end, handing over each complete block. EventSource
// cannot send the Authorization header, hence fetch and a reader.
async function readEventStream(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let boundary;
    while ((boundary = buffer.search(/\r\n\r\n|\n\n|\r\r/)) !== -1) {
      const event = parseEventBlock(buffer.slice(0, boundary));
      buffer = buffer.slice(boundary + (buffer.startsWith('\r\n', boundary) ? 4 : 2));
      if (event) onEvent(event);
    }
    // A block never ends only if the stream is broken; do not hoard it.
    if (buffer.length > 1 << 20) buffer = '';
  }
}

const EVENT_COLUMNS = new Set(['event', 'function', 'invocation', 'time']);

function eventRow({ kind, payload }) {
  const details = Object.fromEntries(Object.entries(payload).filter(([key]) => !EVENT_COLUMNS.has(key)));
  const linkOr = (value, section) => (typeof value === 'string' ? routeLink(value, section, value) : '—');
  const row = el('tr', { className: 'event-row' },
    el('td', { text: formatTime(payload.time) }),
    el('td', { className: 'kind', text: kind }),
    el('td', {}, linkOr(payload.function, 'functions')),
    el('td', { className: 'mono' }, linkOr(payload.invocation, 'invocations')),
    el('td', { className: 'details', text: pairsText(details) }));
  row.dataset.kind = kind;
  return row;
}

function showEvents(ctx) {
  document.title = 'Events · alcove';
  const pause = el('button', { id: 'events-pause', type: 'button', text: 'Pause', 'aria-pressed': 'false' });
  const filter = el('input', { id: 'events-filter', type: 'text', placeholder: 'function name (all when empty)',
    spellcheck: 'false', autocomplete: 'off' });
  const status = el('span', { id: 'events-status', className: 'meta' });
  const { table, tbody } = makeTable('events-table', ['Time', 'Kind', 'Function', 'Invocation', 'Details']);
  const empty = el('p', { className: 'empty', text: 'Waiting for events…' });
  ctx.mount(el('h1', { text: 'Events' }),
    el('div', { className: 'toolbar' }, el('label', { for: 'events-filter', text: 'Function' }), filter, pause, status),
    table, empty);

  let paused = false;
  let held = [];
  let pending = [];
  let frame = 0;
  // A busy stream is drawn at most once a frame, and only its newest
  // MAX_EVENTS matter, so neither queue may grow beyond that.
  const flush = () => {
    frame = 0;
    const rows = pending.reverse().map(eventRow);
    pending = [];
    tbody.prepend(...rows);
    while (tbody.rows.length > MAX_EVENTS) tbody.lastElementChild.remove();
    empty.hidden = tbody.rows.length > 0;
  };
  const scheduleFlush = () => {
    if (!frame && pending.length) frame = requestAnimationFrame(flush);
  };
  const enqueue = (event) => {
    const queue = paused ? held : pending;
    queue.push(event);
    if (queue.length > MAX_EVENTS) queue.shift();
    if (paused) setText(pause, `Resume (${held.length} held)`);
    else scheduleFlush();
  };
  ctx.onLeave(() => cancelAnimationFrame(frame));
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    pause.textContent = paused ? 'Resume (0 held)' : 'Pause';
    if (paused) return;
    pending = pending.concat(held).slice(-MAX_EVENTS);
    held = [];
    scheduleFlush();
  });

  let connection = null;
  let retry = null;
  let connectedFilter = null;
  ctx.onLeave(() => connection && connection.abort());
  async function connect() {
    if (connection) connection.abort();
    ctx.cancel(retry);
    const controller = new AbortController();
    connection = controller;
    const name = filter.value.trim();
    connectedFilter = name;
    if (name && !FUNCTION_NAME.test(name)) {
      showError('events', `"${name}" is not a function name`);
      status.textContent = 'not connected';
      return;
    }
    status.textContent = 'connecting…';
    try {
      const query = name ? '?function=' + encodeURIComponent(name) : '';
      const response = await api(`/v1/events${query}`, { signal: controller.signal });
      clearError('events');
      status.textContent = name ? `live: ${name}` : 'live: all functions';
      await readEventStream(response, enqueue);
    } catch (error) {
      if (controller !== connection || !ctx.alive || isAbort(error) || (error && error.handled)) return;
      showError('events', messageOf(error));
      // A refused request (a bad filter) does not heal by retrying.
      if (error instanceof ApiError && error.status >= 400 && error.status < 500) {
        status.textContent = 'not connected';
        return;
      }
    }
    if (controller !== connection || !ctx.alive) return;
    status.textContent = 'stream ended; reconnecting…';
    retry = ctx.later(connect, RECONNECT_MS);
  }

  let typing = null;
  const applyFilter = () => {
    ctx.cancel(typing);
    if (filter.value.trim() === connectedFilter) return;
    clearError('events');
    connect();
  };
  filter.addEventListener('input', () => {
    ctx.cancel(typing);
    typing = ctx.later(applyFilter, 400);
  });
  filter.addEventListener('change', applyFilter);
  connect();
}

// ---------------------------------------------------------------- routing and login

function parseRoute(hash) {
  let section = '';
  let id = '';
  try {
    [section = '', id = ''] = hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  } catch {
    // A malformed escape: fall through to the default view.
  }
  if (section === 'functions' && id) return { nav: 'functions', render: (ctx) => showFunction(ctx, id) };
  if (section === 'invocations' && id) return { nav: 'functions', render: (ctx) => showInvocation(ctx, id) };
  if (section === 'sandboxes') return { nav: 'sandboxes', render: showSandboxes };
  if (section === 'events') return { nav: 'events', render: showEvents };
  return { nav: 'functions', render: showFunctions };
}

function route() {
  if (!readToken()) {
    showLogin('');
    return;
  }
  loginView.hidden = true;
  header.hidden = false;
  const target = parseRoute(location.hash);
  for (const name of ['functions', 'sandboxes', 'events']) {
    const link = document.getElementById(`nav-${name}`);
    if (name === target.nav) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  clearError();
  target.render(enterView());
}

function showLogin(message) {
  leaveView();
  viewRoot.replaceChildren();
  header.hidden = true;
  loginView.hidden = false;
  document.title = 'Sign in · alcove';
  if (message) showError('auth', message);
  else clearError();
  loginInput.focus();
}

function signOut(message) {
  heldToken = '';
  showLogin(message);
}

loginForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const token = loginInput.value.trim();
  if (!token) {
    showError('auth', 'Enter the API token');
    return;
  }
  heldToken = token;
  loginInput.value = '';
  route();
});

document.getElementById('logout').addEventListener('click', () => signOut(''));
window.addEventListener('hashchange', route);

// A last net: a rejection nobody caught is shown, not left to the console.
window.addEventListener('unhandledrejection', (event) => {
  event.preventDefault();
  if (!isAbort(event.reason)) showError('unexpected', messageOf(event.reason));
});

route();
