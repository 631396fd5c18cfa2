// The status page of sessionwatchd: counts by status, a paged table of the
// watched sessions and a live feed of events, kept current from the daemon's
// event stream (GET /api/v1/events, Server-Sent Events read with fetch so
// that the Authorization and Last-Event-ID headers can be sent).
//
// Every string that comes from the API goes into the DOM as text
// (textContent or text nodes), never as markup.
'use strict';

(function () {
  const PAGE_SIZE = 50;
  const FEED_MAX = 50;
  const REFRESH_MIN_MS = 1000; // counts and table: at most once a second
  const RETRY_MIN_MS = 500;
  const RETRY_MAX_MS = 5000;
  const STREAM_IDLE_MS = 65000; // no byte (not even a heartbeat) for this long: reconnect
  const SEARCH_DELAY_MS = 250;
  const TOKEN_KEY = 'sessionwatch.token';
  const STATUSES = ['Failed', 'Waiting', 'Active', 'Pending', 'Cancelling', 'Cancelled', 'Succeeded'];
  const COUNT_KEYS = STATUSES.concat(['unknown', 'gone']);
  const LIVE_TYPE = 'sessionwatch.stream.live';

  const $ = (id) => document.getElementById(id);
  const el = {
    connection: $('connection'),
    daemon: $('daemon'),
    auth: $('auth'),
    authForm: $('auth-form'),
    authMessage: $('auth-message'),
    token: $('token'),
    error: $('error'),
    counts: $('counts'),
    status: $('filter-status'),
    runbook: $('filter-runbook'),
    runbooks: $('runbooks'),
    search: $('search'),
    clear: $('clear-filters'),
    matched: $('matched'),
    tbody: document.querySelector('#sessions tbody'),
    prev: $('prev'),
    next: $('next'),
    pageInfo: $('page-info'),
    feed: $('feed'),
    feedEmpty: $('feed-empty'),
  };

  // ---- small helpers ------------------------------------------------------

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // A CSS-class-safe form of a status name (the name itself is shown as text).
  function statusClass(status) {
    if (status === null || status === undefined) return 'status-none';
    return STATUSES.includes(status) ? 'status-' + status.toLowerCase() : 'status-other';
  }

  function statusBadge(status, label) {
    const text = label !== undefined ? label : (status === null || status === undefined ? '—' : status);
    const badge = make('span', 'badge ' + statusClass(status), text);
    if (typeof status === 'string') badge.dataset.status = status;
    return badge;
  }

  function parseTime(text) {
    if (typeof text !== 'string') return NaN;
    return Date.parse(text);
  }

  function relativeTime(ms, now) {
    if (!Number.isFinite(ms)) return '—';
    const s = Math.round((now - ms) / 1000);
    if (s < 5) return 'just now';
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function timeElement(iso) {
    const ms = parseTime(iso);
    const node = make('time', 'rel', relativeTime(ms, Date.now()));
    if (Number.isFinite(ms)) {
      node.dateTime = new Date(ms).toISOString();
      node.title = new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
      node.dataset.ms = String(ms);
    }
    return node;
  }

  function refreshRelativeTimes() {
    const now = Date.now();
    for (const node of document.querySelectorAll('time.rel[data-ms]')) {
      node.textContent = relativeTime(Number(node.dataset.ms), now);
    }
  }

  function safeHttpUrl(text) {
    if (typeof text !== 'string') return null;
    try {
      const url = new URL(text, document.baseURI);
      return url.protocol === 'https:' || url.protocol === 'http:' ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function formatNumber(n) {
    return typeof n === 'number' ? n.toLocaleString('en-US') : '0';
  }

  function showError(text) {
    if (text) {
      el.error.textContent = text;
      el.error.hidden = false;
    } else {
      el.error.hidden = true;
      el.error.textContent = '';
    }
  }

  // ---- authentication -----------------------------------------------------

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (e) {
      return '';
    }
  }

  function headers(extra) {
    const h = Object.assign({ Accept: 'application/json' }, extra || {});
    const t = token();
    if (t) h.Authorization = 'Bearer ' + t;
    return h;
  }

  class Unauthorized extends Error {}

  let authNeeded = false;

  function needToken() {
    if (authNeeded) return;
    authNeeded = true;
    // A stream still waiting for its answer gets its own 401 and ends; one
    // that is open is closed.
    stopStream(streamOpen);
    setConnection('unauthorized', 'token needed');
    el.authMessage.textContent = token()
      ? 'The daemon refused this token. Enter the contents of its [http] token-file.'
      : 'This daemon asks for a bearer token: enter the contents of its [http] token-file.';
    el.auth.hidden = false;
    el.token.focus();
  }

  el.authForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const value = el.token.value.trim();
    if (!value) return;
    try {
      sessionStorage.setItem(TOKEN_KEY, value);
    } catch (e) {
      // storage refused (private mode): the token lasts until the page is left
    }
    el.token.value = '';
    el.auth.hidden = true;
    authNeeded = false;
    refreshNow();
    startStream();
  });

  async function getJSON(path) {
    const response = await fetch(path, { headers: headers(), cache: 'no-store', credentials: 'omit' });
    if (response.status === 401) {
      needToken();
      throw new Unauthorized('unauthorized');
    }
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      throw new Error(path + ': HTTP ' + response.status + ', not JSON');
    }
    if (!response.ok) {
      const err = new Error((body && body.message) || ('HTTP ' + response.status));
      err.status = response.status;
      throw err;
    }
    return body;
  }

  // ---- counts -------------------------------------------------------------

  const countItems = new Map();

  function buildCounts() {
    for (const key of COUNT_KEYS) {
      const li = make('li', 'count ' + (key === 'gone' ? 'status-gone' : key === 'unknown' ? 'status-other' : statusClass(key)));
      li.dataset.status = key;
      const button = make('button', null);
      button.type = 'button';
      button.title = key === 'unknown' ? 'a status outside the known ones' : 'show only ' + key;
      const value = make('span', 'value', '–');
      const label = make('span', 'label', key);
      button.append(value, label);
      if (key !== 'unknown') {
        button.addEventListener('click', () => {
          el.status.value = el.status.value === key ? '' : key;
          filtersChanged();
        });
      } else {
        button.disabled = true;
      }
      li.append(button);
      el.counts.append(li);
      countItems.set(key, value);
    }
  }

  function renderStatus(status) {
    const sessions = (status && status.sessions) || {};
    const by = sessions.byStatus || {};
    for (const key of COUNT_KEYS) {
      const n = key === 'gone' ? sessions.gone : by[key];
      countItems.get(key).textContent = formatNumber(typeof n === 'number' ? n : 0);
    }
    const parts = [];
    if (typeof sessions.watched === 'number') parts.push(formatNumber(sessions.watched) + ' watched');
    if (typeof sessions.unseen === 'number' && sessions.unseen > 0) parts.push(formatNumber(sessions.unseen) + ' not seen yet');
    if (typeof status.version === 'string') parts.push('sessionwatchd ' + status.version);
    if (typeof status.apiUrl === 'string') parts.push(status.apiUrl);
    el.daemon.textContent = parts.join(' · ');
  }

  // ---- the sessions table -------------------------------------------------

  // cursors[i] is the "after" value of page i (null for the first page).
  let cursors = [null];
  let nextCursor = null;
  let tableGeneration = 0;
  const runbooksSeen = new Set();

  function filterQuery() {
    const params = new URLSearchParams();
    if (el.status.value) params.set('status', el.status.value);
    const runbook = el.runbook.value.trim();
    if (runbook) params.set('runbook', runbook);
    const q = el.search.value.trim();
    if (q) params.set('q', q);
    params.set('limit', String(PAGE_SIZE));
    return params;
  }

  async function loadTable() {
    const generation = ++tableGeneration;
    const params = filterQuery();
    appliedFilters = params.toString();
    const after = cursors[cursors.length - 1];
    if (after !== null) params.set('after', after);
    let reply;
    try {
      reply = await getJSON('/api/v1/sessions?' + params.toString());
    } catch (err) {
      if (generation !== tableGeneration) return;
      if (err.status === 400 && after !== null) {
        // A cursor the daemon no longer takes (e.g. after a restart): start over.
        cursors = [null];
        return loadTable();
      }
      throw err;
    }
    if (generation !== tableGeneration) return; // filters or page changed meanwhile
    renderTable(reply);
  }

  function renderTable(reply) {
    const sessions = Array.isArray(reply.sessions) ? reply.sessions : [];
    const now = Date.now();
    const rows = document.createDocumentFragment();
    for (const s of sessions) rows.append(sessionRow(s, now));
    if (sessions.length === 0) {
      const tr = make('tr', 'empty');
      const td = make('td', null, 'No session matches.');
      td.colSpan = 7;
      tr.append(td);
      rows.append(tr);
    }
    el.tbody.replaceChildren(rows);
    nextCursor = typeof reply.next === 'string' && reply.next !== '' ? reply.next : null;
    const page = cursors.length;
    const first = (page - 1) * PAGE_SIZE;
    const matched = typeof reply.matched === 'number' ? reply.matched : sessions.length;
    el.matched.textContent = sessions.length
      ? 'Sessions ' + formatNumber(first + 1) + '–' + formatNumber(first + sessions.length) + ' of ' + formatNumber(matched)
      : formatNumber(matched) + ' matching sessions';
    el.matched.dataset.matched = String(matched);
    el.pageInfo.textContent = 'page ' + page + ' of ' + Math.max(1, Math.ceil(matched / PAGE_SIZE));
    el.prev.disabled = cursors.length <= 1;
    el.next.disabled = nextCursor === null;
    updateRunbookList();
  }

  function sessionRow(s, now) {
    const tr = make('tr', statusClass(s.status));
    if (typeof s.id === 'string') tr.dataset.id = s.id;
    if (typeof s.status === 'string') tr.dataset.status = s.status;

    const idCell = make('td', 'id');
    const href = safeHttpUrl(s.url);
    if (href) {
      const a = make('a', null, s.id);
      a.href = href;
      a.target = '_blank';
      a.rel = 'noopener noreferrer';
      idCell.append(a);
    } else {
      idCell.textContent = s.id;
    }

    const nameCell = make('td', 'name');
    if (typeof s.name === 'string' && s.name !== '') {
      if (href) {
        const a = make('a', null, s.name);
        a.href = href;
        a.target = '_blank';
        a.rel = 'noopener noreferrer';
        nameCell.append(a);
      } else {
        nameCell.textContent = s.name;
      }
    } else {
      nameCell.append(make('span', 'muted', '—'));
    }

    const runbookCell = make('td', 'runbook');
    if (typeof s.runbook === 'string' && s.runbook !== '') {
      runbooksSeen.add(s.runbook);
      const button = make('button', 'link', s.runbook);
      button.type = 'button';
      button.title = 'show only this runbook';
      button.addEventListener('click', () => {
        el.runbook.value = s.runbook;
        filtersChanged();
      });
      runbookCell.append(button);
    } else {
      runbookCell.append(make('span', 'muted', '—'));
    }

    const statusCell = make('td', 'status');
    statusCell.append(statusBadge(s.status, s.status === null || s.status === undefined ? 'never seen' : undefined));
    const prevCell = make('td', 'previous');
    if (typeof s.previousStatus === 'string') prevCell.append(statusBadge(s.previousStatus));
    else prevCell.append(make('span', 'muted', '—'));

    const changedCell = make('td', 'changed');
    changedCell.append(timeElement(s.changedAt));

    const flagsCell = make('td', 'flags');
    if (s.stalled === true) flagsCell.append(make('span', 'flag flag-stalled', 'stalled'));
    if (s.gone === true) flagsCell.append(make('span', 'flag flag-gone', 'gone'));

    tr.append(idCell, nameCell, runbookCell, statusCell, prevCell, changedCell, flagsCell);
    return tr;
  }

  function updateRunbookList() {
    if (el.runbooks.childElementCount === runbooksSeen.size) return;
    const options = document.createDocumentFragment();
    for (const id of Array.from(runbooksSeen).sort().slice(0, 500)) {
      const option = document.createElement('option');
      option.value = id;
      options.append(option);
    }
    el.runbooks.replaceChildren(options);
  }

  // The filters the table shows; a change event that brings nothing new
  // (an input losing the focus after Enter applied it) keeps the page.
  let appliedFilters = null;

  function filtersChanged() {
    const params = filterQuery().toString();
    if (params === appliedFilters) return;
    appliedFilters = params;
    cursors = [null];
    nextCursor = null;
    refreshTableNow();
  }

  let searchTimer = null;
  el.status.addEventListener('change', filtersChanged);
  el.runbook.addEventListener('change', filtersChanged);
  el.search.addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(filtersChanged, SEARCH_DELAY_MS);
  });
  el.search.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') {
      event.preventDefault();
      clearTimeout(searchTimer);
      filtersChanged();
    }
  });
  el.runbook.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') {
      event.preventDefault();
      filtersChanged();
    }
  });
  document.getElementById('filters').addEventListener('submit', (event) => event.preventDefault());
  el.clear.addEventListener('click', () => {
    el.status.value = '';
    el.runbook.value = '';
    el.search.value = '';
    filtersChanged();
  });
  el.next.addEventListener('click', () => {
    if (nextCursor === null) return;
    cursors.push(nextCursor);
    refreshTableNow();
  });
  el.prev.addEventListener('click', () => {
    if (cursors.length <= 1) return;
    cursors.pop();
    refreshTableNow();
  });

  // ---- refreshing ---------------------------------------------------------

  // Counts and the current page are reloaded on each event, but at most once
  // every REFRESH_MIN_MS, whatever the rate of events.
  let lastRefresh = 0;
  let refreshTimer = null;
  let refreshing = false;
  let refreshAgain = false;

  function scheduleRefresh() {
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    if (refreshTimer !== null) return;
    const wait = Math.max(0, lastRefresh + REFRESH_MIN_MS - Date.now());
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      refreshNow();
    }, wait);
  }

  async function refreshNow() {
    if (refreshTimer !== null) {
      clearTimeout(refreshTimer);
      refreshTimer = null;
    }
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    lastRefresh = Date.now();
    try {
      const [status] = await Promise.all([getJSON('/api/v1/status'), loadTable()]);
      renderStatus(status);
      showError(null);
      document.body.dataset.loaded = 'true';
    } catch (err) {
      if (!(err instanceof Unauthorized)) showError('Could not load from the daemon: ' + err.message);
    } finally {
      refreshing = false;
      if (refreshAgain) {
        refreshAgain = false;
        scheduleRefresh();
      }
    }
  }

  // A filter or page change: only the table, at once.
  async function refreshTableNow() {
    try {
      await loadTable();
      showError(null);
    } catch (err) {
      if (!(err instanceof Unauthorized)) showError('Could not load the sessions: ' + err.message);
    }
  }

  // ---- the live feed ------------------------------------------------------

  function eventLabel(ev) {
    const type = typeof ev.type === 'string' ? ev.type : '';
    const kind = type.startsWith('sessionwatch.session.') ? type.slice('sessionwatch.session.'.length) : type;
    const data = ev.data && typeof ev.data === 'object' ? ev.data : {};
    if (kind === 'gone') return { kind, status: null, text: 'gone' };
    if (kind === 'stalled') return { kind, status: data.status, text: 'stalled' };
    return { kind, status: typeof data.status === 'string' ? data.status : null, text: typeof data.status === 'string' ? data.status : kind };
  }

  function addFeedItem(ev) {
    const data = ev.data && typeof ev.data === 'object' ? ev.data : {};
    const session = data.session && typeof data.session === 'object' ? data.session : {};
    const label = eventLabel(ev);
    const li = make('li', 'event');
    li.dataset.type = typeof ev.type === 'string' ? ev.type : '';
    if (typeof ev.subject === 'string') li.dataset.session = ev.subject;
    if (typeof ev.sequence === 'number') li.dataset.sequence = String(ev.sequence);

    li.append(timeElement(ev.time), ' ');
    const who = make('span', 'who');
    const name = typeof session.name === 'string' && session.name !== '' ? session.name : null;
    if (name) who.append(make('span', 'name', name), ' ');
    who.append(make('span', 'id', typeof ev.subject === 'string' ? ev.subject : session.id));
    li.append(who, ' ');
    const change = make('span', 'change');
    if (typeof data.previousStatus === 'string') {
      change.append(statusBadge(data.previousStatus), make('span', 'arrow', ' → '));
    }
    if (label.kind === 'gone') change.append(make('span', 'badge status-gone', 'gone'));
    else if (label.kind === 'stalled') change.append(make('span', 'flag flag-stalled', 'stalled'));
    else change.append(statusBadge(label.status, label.text));
    if (data.skipped === true) change.append(make('span', 'muted', ' (a step was missed)'));
    li.append(change);

    el.feed.prepend(li);
    while (el.feed.childElementCount > FEED_MAX) el.feed.lastElementChild.remove();
    el.feedEmpty.hidden = true;
  }

  function addFeedGap() {
    if (!el.feed.firstElementChild || el.feed.firstElementChild.classList.contains('gap')) return;
    const li = make('li', 'gap muted', 'Events may be missing here (the daemon restarted or this page fell behind); counts and table were reloaded.');
    el.feed.prepend(li);
    while (el.feed.childElementCount > FEED_MAX) el.feed.lastElementChild.remove();
  }

  // ---- the event stream ---------------------------------------------------

  let lastEventId = null;
  let retryMs = RETRY_MIN_MS;
  let retryTimer = null;
  let streamAbort = null;
  let streamRun = 0;
  let everLive = false;
  let streamOpen = false; // the current stream has its 200 answer

  function setConnection(state, text) {
    el.connection.dataset.state = state;
    el.connection.textContent = text;
  }

  function stopStream(abort = true) {
    streamRun++;
    if (retryTimer !== null) {
      clearTimeout(retryTimer);
      retryTimer = null;
    }
    if (streamAbort && abort) streamAbort.abort();
    streamAbort = null;
    streamOpen = false;
  }

  function startStream() {
    stopStream();
    const run = streamRun;
    readStream(run).then(
      () => streamEnded(run, null),
      (err) => streamEnded(run, err));
  }

  function streamEnded(run, err) {
    if (run !== streamRun || authNeeded) return; // replaced or stopped on purpose
    streamAbort = null;
    streamOpen = false;
    const wait = retryMs;
    retryMs = Math.min(RETRY_MAX_MS, retryMs * 2);
    const why = err && err.message ? ' (' + err.message + ')' : '';
    setConnection('disconnected', 'disconnected — reconnecting in ' + (wait / 1000).toFixed(1) + ' s');
    el.connection.title = 'The event stream ended' + why;
    retryTimer = setTimeout(() => {
      retryTimer = null;
      startStream();
    }, wait);
  }

  async function readStream(run) {
    const abort = new AbortController();
    streamAbort = abort;
    const h = headers({ Accept: 'text/event-stream' });
    if (lastEventId !== null) h['Last-Event-ID'] = lastEventId;
    const response = await fetch('/api/v1/events', { headers: h, cache: 'no-store', credentials: 'omit', signal: abort.signal });
    if (response.status === 401) {
      needToken();
      return;
    }
    if (!response.ok || !response.body) throw new Error('HTTP ' + response.status);
    if (run === streamRun) streamOpen = true;

    const reader = response.body.getReader();
    const decoder = new TextDecoder('utf-8');
    let idle = null;
    const armIdle = () => {
      clearTimeout(idle);
      idle = setTimeout(() => abort.abort(), STREAM_IDLE_MS);
    };
    armIdle();
    const parser = new SseParser((message) => {
      if (run === streamRun) handleMessage(message);
    });
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (run !== streamRun) return;
        armIdle();
        parser.push(decoder.decode(value, { stream: true }));
      }
      parser.push(decoder.decode());
    } finally {
      clearTimeout(idle);
    }
    throw new Error('the stream ended');
  }

  // The text/event-stream format: lines ended by CRLF, LF or CR; "field:
  // value" lines (one optional space after the colon); a line starting with
  // ":" is a comment; an empty line dispatches the message gathered so far.
  class SseParser {
    constructor(onMessage) {
      this.onMessage = onMessage;
      this.buffer = '';
      this.pendingCR = false;
      this.reset();
    }

    reset() {
      this.event = '';
      this.data = [];
      this.hasData = false;
    }

    push(text) {
      if (!text) return;
      if (this.pendingCR && text[0] === '\n') text = text.slice(1);
      this.pendingCR = false;
      this.buffer += text;
      let start = 0;
      for (;;) {
        const nl = this.buffer.slice(start).search(/[\r\n]/);
        if (nl < 0) break;
        const end = start + nl;
        const line = this.buffer.slice(start, end);
        let next = end + 1;
        if (this.buffer[end] === '\r') {
          if (next < this.buffer.length) {
            if (this.buffer[next] === '\n') next++;
          } else {
            this.pendingCR = true; // a LF may come first in the next chunk
          }
        }
        start = next;
        this.line(line);
      }
      this.buffer = this.buffer.slice(start);
    }

    line(line) {
      if (line === '') {
        if (this.hasData || this.event) {
          this.onMessage({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
        }
        this.reset();
        return;
      }
      if (line[0] === ':') return; // comment (heartbeat)
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') {
        this.data.push(value);
        this.hasData = true;
      } else if (field === 'event') {
        this.event = value;
      } else if (field === 'id') {
        if (!value.includes('\0')) {
          this.id = value;
          lastEventId = value;
        }
      } else if (field === 'retry') {
        // the daemon's own backoff is used instead
      }
    }
  }

  function handleMessage(message) {
    let payload = null;
    try {
      payload = message.data ? JSON.parse(message.data) : null;
    } catch (e) {
      return; // not JSON: nothing to show
    }
    if (message.event === LIVE_TYPE) {
      retryMs = RETRY_MIN_MS;
      el.connection.title = '';
      setConnection('live', 'live');
      const resumed = payload && payload.resumed === true;
      if (payload && typeof payload.sequence === 'number' && lastEventId === null) {
        lastEventId = String(payload.sequence);
      }
      if (!resumed) {
        if (payload && typeof payload.sequence === 'number') lastEventId = String(payload.sequence);
        if (everLive) addFeedGap();
        refreshNow();
      }
      everLive = true;
      return;
    }
    if (!payload || typeof payload !== 'object') return;
    addFeedItem(payload);
    scheduleRefresh();
  }

  // ---- start --------------------------------------------------------------

  buildCounts();
  refreshNow();
  startStream();
  setInterval(refreshRelativeTimes, 10000);
})();
