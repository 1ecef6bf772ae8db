// idlewatcher loading page: follows the wake over SSE, opens the real page when ready.
// Every server-provided string goes through textContent/dataset only, never innerHTML.
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const list = $('events');
  const status = $('status');
  const errBox = $('error');
  const retry = $('retry');
  const kicker = $('kicker');
  const route = $('route-name').textContent;
  const title = document.title;
  const base = body.dataset.events;
  const STAGES = ['starting', 'waking_dep', 'dep_ready', 'container_woke', 'waiting_ready', 'ready'];
  const GUARD = 'idlewatcher-ready';

  const seen = new Set();
  let es = null;
  let lastId = null;
  let backoff = 500;
  let stage = 0;
  let t0 = NaN;
  let failed = false;
  let done = false;

  const str = (v) => (typeof v === 'string' ? v.trim() : '');

  // RFC 3339 -> ms; tolerates nanosecond fractions and lower-case t/z.
  const parseTime = (s) => Date.parse(str(s).toUpperCase().replace(' ', 'T').replace(/(\.\d{3})\d+/, '$1'));

  const since = (ms) => {
    const s = Math.max(0, ms) / 1000;
    if (s < 10) return '+' + s.toFixed(1) + ' s';
    const t = Math.floor(s);
    return t < 60 ? '+' + t + ' s' : '+' + Math.floor(t / 60) + ' min ' + String(t % 60).padStart(2, '0') + ' s';
  };

  const setStage = (type) => {
    const i = STAGES.indexOf(type) + 1;
    if (type === 'starting') stage = 0;
    if (i > stage) body.dataset.stage = String((stage = i));
  };

  const add = (e, ts) => {
    const li = document.createElement('li');
    li.dataset.type = e.type;
    const msg = document.createElement('span');
    msg.className = 'msg';
    msg.textContent = str(e.message) || e.type;
    li.appendChild(msg);
    if (!Number.isNaN(ts)) {
      const tm = document.createElement('time');
      tm.dateTime = str(e.timestamp);
      tm.title = new Date(ts).toLocaleString();
      tm.textContent = since(ts - t0);
      li.appendChild(tm);
    }
    list.appendChild(li);
  };

  const fail = (reason) => {
    failed = true;
    body.dataset.state = 'error';
    kicker.textContent = 'Could not wake';
    document.title = 'Failed: ' + route;
    status.textContent = 'The service could not be started.';
    errBox.hidden = false;
    errBox.textContent = reason;
    retry.hidden = false;
    retry.focus();
  };

  const recover = () => {
    failed = false;
    body.dataset.state = 'waking';
    kicker.textContent = 'Waking up';
    document.title = title;
    errBox.hidden = true;
    errBox.textContent = '';
    retry.hidden = true;
  };

  // Navigate at once; only a tight ready->page->ready loop (stale state on the
  // server) gets slowed down, so a misbehaving gateway is never hammered.
  const go = () => {
    done = true;
    if (es) es.close();
    let wait = 0;
    try {
      const g = JSON.parse(sessionStorage.getItem(GUARD) || 'null');
      const n = g && Date.now() - g.t < 2000 ? g.n + 1 : 0;
      if (n >= 2) wait = Math.min(250 * 2 ** (n - 2), 5000);
      sessionStorage.setItem(GUARD, JSON.stringify({ t: Date.now() + wait, n }));
    } catch (_) { /* storage unavailable: no guard */ }
    // Same URL with a #fragment would only scroll, so reload in that case.
    setTimeout(() => (location.hash ? location.reload() : location.replace(location.href)), wait);
  };

  const onMessage = (m) => {
    if (done) return;
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    if (!e || typeof e !== 'object' || typeof e.type !== 'string') return;
    if (m.lastEventId) lastId = m.lastEventId;
    // Dedupe by id; the timestamp guards against ids reused by a restarted server.
    const key = m.lastEventId + '\n' + e.timestamp + '\n' + e.type;
    if (seen.has(key)) return;
    seen.add(key);

    const ts = parseTime(e.timestamp);
    if (!Number.isNaN(ts) && (Number.isNaN(t0) || e.type === 'starting')) t0 = ts;
    if (e.type === 'starting' && failed) recover();
    add(e, ts);

    if (e.type === 'ready') {
      setStage('ready');
      kicker.textContent = 'Ready';
      status.textContent = 'Ready, opening ' + route + '…';
      go();
    } else if (e.type === 'error') {
      fail(str(e.error) || str(e.message) || 'The service could not be started.');
    } else if (!failed && STAGES.includes(e.type)) {
      setStage(e.type);
      if (str(e.message)) status.textContent = str(e.message);
    }
  };

  const connect = () => {
    if (done) return;
    let url = base;
    if (lastId !== null) {
      const u = new URL(base, location.href);
      u.searchParams.set('last_event_id', lastId);
      url = u.href;
    }
    const s = (es = new EventSource(url));
    s.onopen = () => { backoff = 500; };
    s.onmessage = onMessage;
    s.onerror = () => {
      // CONNECTING: the browser retries by itself with Last-Event-ID.
      // CLOSED (non-200, wrong type): reconnect ourselves with ?last_event_id=.
      if (s !== es || done || s.readyState !== EventSource.CLOSED) return;
      es = null;
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 5000);
    };
  };

  retry.addEventListener('click', () => location.reload());
  // Restored from the back/forward cache: the state shown is stale.
  window.addEventListener('pageshow', (ev) => { if (ev.persisted) location.reload(); });

  if (base && 'EventSource' in window) {
    connect();
  } else {
    const secs = parseInt(body.dataset.retry, 10) || 5;
    setTimeout(() => location.reload(), secs * 1000);
  }
})();
