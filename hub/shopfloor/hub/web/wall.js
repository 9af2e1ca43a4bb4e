// Shopfloor wall page: every machine's state, live, for a TV across the workshop.
//
// Data (relative URLs, so the page also works behind a proxy under a sub-path):
//   GET api/v1/machines  -> {"machines": [MachineView, ...]}   full list, on load, on every
//                           (re)connect of the stream and every 60 s as a safety net
//   GET api/v1/events    -> server-sent events, `event: machine` + `data: <MachineView JSON>`
//   GET api/v1/utilization?limit=200[&offset=…]
//                        -> today so far (site time zone) per machine: `total.utilization_planned`
//                           (of planned shift time) or `total.utilization` (of the elapsed day
//                           when the machine has no shift) with `total.coverage`; on load and
//                           every 60 s. A hub without the endpoint leaves the line empty.
//
// URL parameters of the page itself:
//   ?token=...   bearer token: sent as `Authorization: Bearer` to api/v1/machines and as
//                `?access_token=` to api/v1/events (EventSource cannot send headers)
//   ?site=...    show only the machines of this site
//   ?title=...   header text (default: the site name(s) the machines report)
//   ?stale=60    seconds without data after which a tile warns "no data for …"
//
// A MachineView may carry `phase` (a kiln's heating / soaking / cooling) and `job`, the run
// in progress in the machine's own unit (lines, bytes, parts, seconds): `done` of `total`,
// `started` (epoch ms), `eta_s` (the machine's own estimate) and a kiln's `segment`. Any of
// the job's fields may be missing or null; a job without a known total shows no bar.
// The hub's job book adds its estimate of the end: `eta_at` with the range `eta_low_at` ..
// `eta_high_at` (epoch ms) and `eta_origin` (linear, history, schedule, firmware); the tile
// then shows "ends 14:32 · in 12 min" with the origin in small type (the range in the
// title). Without `eta_at`, the machine's own `eta_s` shows as "about 12 min left".
//
// No dependencies, no build step, no network beyond the hub. Data only ever reaches the
// document through textContent and attributes, never innerHTML.
"use strict";

(() => {
  const STATES = ["ALARM", "RUNNING", "PAUSED", "SETUP", "IDLE", "OFFLINE"];
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 30000;
  const REFETCH_EVERY_MS = 60000;
  const UTILIZATION_EVERY_MS = 60000;
  const UTILIZATION_PAGE = 200;
  // Below this share of observed time the coverage is shown in the warning colour.
  const LOW_COVERAGE = 0.9;
  const FETCH_TIMEOUT_MS = 10000;
  const BANNER_AFTER_MS = 10000;
  // A stream stuck "connecting" this long (a proxy that accepts and never answers) is
  // replaced by a fresh one.
  const STUCK_AFTER_MS = 45000;
  // Only trust the hub's Date header (1 s resolution) when the local clock is clearly off:
  // a Pi behind a TV has no real-time clock and may boot without NTP.
  const SKEW_THRESHOLD_MS = 5000;
  const PHONE = window.matchMedia("(max-width: 700px)");

  const params = new URLSearchParams(window.location.search);
  const token = params.get("token") || "";
  const siteFilter = params.get("site") || "";
  const titleParam = params.get("title") || "";
  const staleSeconds = Number(params.get("stale"));
  const staleAfterMs = Number.isFinite(staleSeconds) && staleSeconds > 0 ? staleSeconds * 1000 : 60000;

  const $ = (id) => document.getElementById(id);
  const grid = $("grid");
  const template = $("tile-template");
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

  /** id -> {view, seq, tile, els, key} */
  const machines = new Map();
  /** id -> today's `total` figures from api/v1/utilization */
  const utilization = new Map();
  let eventSeq = 0; // bumps on every stream event; lets a slow full fetch lose to newer events
  let skewMs = 0;
  let source = null;
  let retryMs = RETRY_MIN_MS;
  let retryTimer = 0;
  let connectedAt = 0; // when the current EventSource was created
  let openedBefore = false;
  let lostSince = null;
  let authProblem = "";

  const now = () => Date.now() + skewMs;

  // ---- formatting -------------------------------------------------------------------------

  const pad2 = (n) => String(n).padStart(2, "0");

  /** "42 s", "12 min", "1 h 05 min", "3 d 04 h" */
  function formatDuration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    const h = Math.floor(m / 60);
    if (h < 24) return `${h} h ${pad2(m % 60)} min`;
    return `${Math.floor(h / 24)} d ${pad2(h % 24)} h`;
  }

  /** A span of a job in seconds: "42 s", "25 min", "2 h 10 min", "13 h" (hours, never days). */
  function formatSpan(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    return m % 60 ? `${Math.floor(m / 60)} h ${pad2(m % 60)} min` : `${m / 60} h`;
  }

  // Digit grouping of the viewer's locale ("1,240" in English).
  const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function setAttr(el, name, value) {
    if (value === null) {
      if (el.hasAttribute(name)) el.removeAttribute(name);
    } else if (el.getAttribute(name) !== value) {
      el.setAttribute(name, value);
    }
  }

  function show(el, visible) {
    if (el.hidden === visible) el.hidden = !visible;
  }

  // ---- tiles ------------------------------------------------------------------------------

  function sortKey(view) {
    return { name: String(view.name || view.id), id: String(view.id) };
  }

  function compareKeys(a, b) {
    return collator.compare(a.name, b.name) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  }

  function createTile(id) {
    const tile = template.content.firstElementChild.cloneNode(true);
    tile.dataset.machine = id;
    const q = (cls) => tile.querySelector(`.${cls}`);
    const els = {
      name: q("name"),
      kind: q("kind"),
      state: q("state"),
      duration: q("duration"),
      alarm: q("alarm"),
      program: q("program"),
      programName: q("program-name"),
      phase: q("phase"),
      job: q("job"),
      jobMeter: q("job-meter"),
      jobBar: q("job-bar"),
      jobFill: q("job-fill"),
      jobPct: q("job-pct"),
      jobCount: q("job-count"),
      jobEta: q("job-eta"),
      jobEtaText: q("job-eta-text"),
      jobEtaOrigin: q("job-eta-origin"),
      detail: q("detail"),
      seen: q("seen"),
      util: q("util"),
      utilValue: q("util-value"),
      utilBasis: q("util-basis"),
      utilCoverage: q("util-coverage"),
    };
    return { tile, els };
  }

  /** Put the tile where it belongs in name order (stable: name, then id). */
  function place(entry) {
    let before = null;
    for (const other of machines.values()) {
      if (other === entry || !other.tile.isConnected) continue;
      if (compareKeys(entry.key, other.key) < 0 && (!before || compareKeys(other.key, before.key) < 0)) {
        before = other;
      }
    }
    const ref = before ? before.tile : null;
    if (entry.tile.parentNode !== grid || entry.tile.nextElementSibling !== ref) {
      grid.insertBefore(entry.tile, ref);
    }
  }

  function render(entry) {
    const v = entry.view;
    const { tile, els } = entry;
    const state = STATES.includes(v.state) ? v.state : "UNKNOWN";
    setAttr(tile, "data-state", state);
    setText(els.name, String(v.name || v.id));
    setAttr(els.name, "title", String(v.name || v.id));
    setText(els.kind, [v.kind, v.protocol].filter(Boolean).join(" · "));
    setText(els.state, String(v.state || "UNKNOWN"));
    setText(els.detail, String(v.detail || ""));

    const alarm = state === "ALARM" && v.alarm ? v.alarm : null;
    if (alarm) {
      const code = alarm.code === null || alarm.code === undefined ? "" : `Alarm ${alarm.code}`;
      setText(els.alarm, [code, String(alarm.text || "")].filter(Boolean).join(": ") || "Alarm");
    }
    show(els.alarm, Boolean(alarm));

    const phase = state !== "OFFLINE" && v.phase ? String(v.phase) : "";
    setText(els.phase, phase);
    show(els.phase, Boolean(phase));

    // The job's program stands in when the state does not name one.
    const job = jobOf(v);
    const program = v.program || (job && job.program) || "";
    setText(els.programName, String(program));
    setAttr(els.programName, "title", program ? String(program) : null);
    // The program line keeps its place when empty, so the bands of a row line up.
    setAttr(els.program, "data-empty", program ? null : "true");
    renderUtilization(entry);
    tick(entry, now());
  }

  const percent = (x) => `${Math.round(x * 100)} %`;

  // ---- job progress -------------------------------------------------------------------------

  /** The view's job, if it is one (an object); null otherwise. */
  function jobOf(view) {
    const job = view.job;
    return job && typeof job === "object" && !Array.isArray(job) ? job : null;
  }

  const UNITS = { lines: ["line", "lines"], parts: ["part", "parts"] };

  /** An amount in the job's unit, without the unit word for counts ("1,240"; "412" kB). */
  function amount(unit, x) {
    if (unit === "bytes") return integer.format(Math.floor(x / 1024)); // kB of 1024 bytes
    if (unit === "seconds") return formatSpan(x);
    return integer.format(Math.floor(x));
  }

  /** The unit word after an amount: "lines", "part", "kB"; none for seconds. */
  function unitWord(unit, x) {
    if (unit === "bytes") return "kB";
    if (unit === "seconds") return "";
    if (UNITS[unit]) return UNITS[unit][Math.floor(x) === 1 ? 0 : 1];
    return typeof unit === "string" ? unit : "";
  }

  /**
   * What the job line and bar say at time `t`:
   * {fraction|null, count: "1,240 / 2,000 lines" | "1,240 lines · 12 min", eta: "…"|""}.
   */
  function describeJob(job, t) {
    const unit = job.unit;
    const total = isNum(job.total) && job.total > 0 ? job.total : null;
    const done = isNum(job.done) ? Math.max(0, job.done) : null;
    const parts = [];
    if (unit === "seconds" && Number.isInteger(job.segment)) parts.push(`segment ${job.segment}`);
    let fraction = null;
    if (total !== null) {
      const d = done === null ? 0 : done;
      fraction = Math.min(1, d / total);
      if (unit === "seconds") {
        parts.push(`${formatSpan(d)} of ${formatSpan(total)}`);
      } else {
        // The done figure in the total's scale: "412 / 1,024 kB", "38 / 50 parts".
        const word = unitWord(unit, total);
        parts.push(`${amount(unit, d)} / ${amount(unit, total)}${word ? ` ${word}` : ""}`);
      }
    } else {
      // No known total: what is done, and for how long the job has been running.
      if (done !== null) {
        const word = unitWord(unit, done);
        parts.push(`${amount(unit, done)}${word ? ` ${word}` : ""}`);
      }
      const elapsed = isNum(job.started) ? formatSpan((t - job.started) / 1000) : "";
      // A kiln's done already is its elapsed time.
      if (elapsed && !(unit === "seconds" && done !== null)) parts.push(elapsed);
    }
    let eta = "";
    let etaOrigin = "";
    let etaTitle = "";
    if (isNum(job.eta_at)) {
      const left = job.eta_at - t;
      const clock = clockTime(job.eta_at, t);
      eta = left < 60000 ? `ends ${clock} · any minute` : `ends ${clock} · in ${formatSpan(left / 1000)}`;
      etaOrigin = ORIGINS[job.eta_origin] ? String(job.eta_origin) : "";
      const range =
        isNum(job.eta_low_at) && isNum(job.eta_high_at) && job.eta_high_at > job.eta_low_at
          ? ` (likely between ${clockTime(job.eta_low_at, t)} and ${clockTime(job.eta_high_at, t)})`
          : "";
      etaTitle = `Expected end ${clock}${range}. ${ORIGINS[job.eta_origin] || "Estimated by the hub."}`;
    } else if (isNum(job.eta_s) && job.eta_s >= 0) {
      eta = job.eta_s < 60 ? "less than a minute left" : `about ${formatSpan(job.eta_s)} left`;
      etaTitle = "The machine's own estimate of the time left";
    }
    return { fraction, count: parts.join(" · "), eta, etaOrigin, etaTitle };
  }

  /** What each ETA origin means, for the tile's title. */
  const ORIGINS = {
    linear: "Estimated from this run's pace so far (pauses not counted).",
    history: "Estimated from past runs of this program on this machine, blended with this run's pace.",
    schedule: "From the firing schedule; it slips when the kiln lags behind it.",
    firmware: "The machine's own estimate.",
  };

  /** "14:32", or "Tue 08:15" when the moment is not today. */
  function clockTime(ms, t) {
    const d = new Date(ms);
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (d.toDateString() === new Date(t).toDateString()) return time;
    return `${d.toLocaleDateString([], { weekday: "short" })} ${time}`;
  }

  /** No measurable progress: the bar is no progressbar and not shown. */
  function hideBar(els) {
    for (const a of ["role", "aria-valuenow", "aria-valuemin", "aria-valuemax", "aria-valuetext"]) {
      setAttr(els.jobBar, a, null);
    }
    show(els.jobMeter, false);
  }

  /** The progress part of the band; it shows elapsed time, so it runs with every tick. */
  function renderJob(entry, t) {
    const { tile, els } = entry;
    const job = jobOf(entry.view);
    const described = job ? describeJob(job, t) : null;
    if (!described || (described.fraction === null && !described.count && !described.eta)) {
      hideBar(els);
      setAttr(tile, "data-job", null);
      setAttr(tile, "data-eta", null);
      show(els.job, false);
      return;
    }
    const { fraction, count, eta, etaOrigin, etaTitle } = described;
    const bar = els.jobBar;
    if (fraction === null) {
      // Nothing to measure against: no bar, no percentage, only what is done.
      hideBar(els);
    } else {
      // Floored, so "100 %" means finished.
      const pct = Math.floor(fraction * 100 + 1e-9);
      const width = `${(fraction * 100).toFixed(2)}%`;
      if (els.jobFill.style.width !== width) els.jobFill.style.width = width;
      setText(els.jobPct, `${pct} %`);
      setAttr(bar, "role", "progressbar");
      setAttr(bar, "aria-valuemin", "0");
      setAttr(bar, "aria-valuemax", "100");
      setAttr(bar, "aria-valuenow", String(pct));
      setAttr(bar, "aria-valuetext", [`${pct} %`, count, eta].filter(Boolean).join(", "));
      show(els.jobMeter, true);
    }
    setText(els.jobCount, count);
    setText(els.jobEtaText, eta);
    setText(els.jobEtaOrigin, etaOrigin);
    show(els.jobEtaOrigin, Boolean(etaOrigin));
    setAttr(els.jobEta, "title", eta ? etaTitle : null);
    setAttr(els.jobEta, "data-origin", etaOrigin || null);
    show(els.jobEta, Boolean(eta));
    setAttr(tile, "data-job", fraction === null ? "count" : "bar");
    setAttr(tile, "data-eta", eta ? "true" : null);
    show(els.job, true);
  }

  /** "Today 62 % of shift · 96 % seen" (or "of day" for a machine without a shift). */
  function renderUtilization(entry) {
    const { els } = entry;
    const f = utilization.get(entry.view.id);
    const planned = f && f.planned_ms > 0 && typeof f.utilization_planned === "number";
    const value = !f ? null : planned ? f.utilization_planned : f.utilization;
    if (typeof value !== "number") {
      setAttr(els.util, "data-empty", "true");
      return;
    }
    setText(els.utilValue, percent(value));
    setText(els.utilBasis, planned ? "of shift" : "of day");
    const coverage = typeof f.coverage === "number" ? f.coverage : null;
    setText(els.utilCoverage, coverage === null ? "" : ` · ${percent(coverage)} seen`);
    setAttr(els.util, "data-low-coverage", coverage !== null && coverage < LOW_COVERAGE ? "true" : null);
    setAttr(
      els.util,
      "title",
      planned
        ? "Productive share of today's planned shift time so far; 'seen' is the share of time with data."
        : "Productive share of today so far (no shift planned); 'seen' is the share of time with data.",
    );
    setAttr(els.util, "data-empty", null);
  }

  /** The parts of a tile that change with time alone. */
  function tick(entry, t) {
    const v = entry.view;
    const { tile, els } = entry;
    setText(els.duration, typeof v.since === "number" ? formatDuration(t - v.since) : "");
    renderJob(entry, t);

    let seen = "";
    let stale = false;
    const age = typeof v.last_seen === "number" ? t - v.last_seen : null;
    if (v.state === "OFFLINE") {
      seen = age === null ? "never seen" : `last seen ${formatDuration(age)} ago`;
    } else if (v.online === false) {
      seen = "agent offline";
      stale = true;
    } else if (age !== null && age > staleAfterMs) {
      seen = `no data for ${formatDuration(age)}`;
      stale = true;
    }
    setText(els.seen, seen);
    show(els.seen, Boolean(seen));
    setAttr(tile, "data-stale", stale ? "true" : null);
  }

  function apply(view, seq) {
    if (!view || typeof view.id !== "string") return;
    if (siteFilter && view.site !== siteFilter) return;
    let entry = machines.get(view.id);
    const isNew = !entry;
    if (isNew) {
      entry = { ...createTile(view.id), view, seq, key: sortKey(view) };
      machines.set(view.id, entry);
    }
    entry.view = view;
    entry.seq = Math.max(entry.seq, seq);
    const key = sortKey(view);
    const moved = isNew || compareKeys(key, entry.key) !== 0;
    entry.key = key;
    render(entry);
    if (moved) {
      place(entry);
      layout();
    }
    renderHeader();
  }

  // ---- header: title, summary, clock, connection --------------------------------------------

  function renderHeader() {
    const sites = [...new Set([...machines.values()].map((e) => String(e.view.site || "")))]
      .filter(Boolean)
      .sort(collator.compare);
    const title = titleParam || siteFilter || sites.join(" · ") || "Shopfloor";
    setText($("site"), title);
    if (document.title !== `${title} · Shopfloor wall`) document.title = `${title} · Shopfloor wall`;

    const counts = new Map();
    for (const e of machines.values()) {
      const s = STATES.includes(e.view.state) ? e.view.state : "UNKNOWN";
      counts.set(s, (counts.get(s) || 0) + 1);
    }
    const summary = $("summary");
    const wanted = STATES.filter((s) => counts.get(s));
    const current = [...summary.children].map((li) => `${li.dataset.state}:${li.textContent}`);
    const next = wanted.map((s) => `${s}:${counts.get(s)} ${s.toLowerCase()}`);
    if (current.join("|") !== next.join("|")) {
      summary.replaceChildren(
        ...wanted.map((s) => {
          const li = document.createElement("li");
          li.dataset.state = s;
          li.textContent = `${counts.get(s)} ${s.toLowerCase()}`;
          return li;
        }),
      );
    }
    show($("empty"), machines.size === 0);
  }

  function renderClock(t) {
    const d = new Date(t);
    setText($("clock-time"), d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
    setText($("clock-date"), d.toLocaleDateString([], { weekday: "short", day: "numeric", month: "short" }));
    setAttr($("clock-time"), "datetime", d.toISOString());
  }

  function setConn(state) {
    const conn = $("conn");
    if (state === "lost" && lostSince === null) lostSince = now();
    if (state === "live") lostSince = null;
    setAttr(conn, "data-conn", state);
    const text = { live: "Live", connecting: "Connecting…", lost: "Connection lost · retrying" }[state];
    setText($("conn-text"), text);
    document.body.dataset.conn = state;
    renderBanner(now());
  }

  function renderBanner(t) {
    const banner = $("banner");
    let text = authProblem;
    if (!text && lostSince !== null && t - lostSince >= BANNER_AFTER_MS) {
      const at = new Date(lostSince).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      text = `No live data from the hub since ${at}. Showing the last known state; reconnecting by itself.`;
    }
    setText(banner, text);
    show(banner, Boolean(text));
  }

  // ---- layout: fill the TV with the largest tiles that fit ----------------------------------

  const TILE_ASPECT = 1.3; // preferred width / height
  const MIN_TILE_WIDTH = 180;

  function layout() {
    const n = grid.children.length;
    if (PHONE.matches || n === 0) {
      delete grid.dataset.fit;
      return;
    }
    const style = getComputedStyle(grid);
    const gap = parseFloat(style.columnGap) || 0;
    const w = grid.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const h = grid.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    let best = null;
    for (let cols = 1; cols <= n; cols += 1) {
      const rows = Math.ceil(n / cols);
      const tw = (w - gap * (cols - 1)) / cols;
      const th = (h - gap * (rows - 1)) / rows;
      // The largest tile of the preferred shape that fits, a little less for empty cells.
      const empty = cols * rows - n;
      const score = Math.min(tw, th * TILE_ASPECT) * (1 - (0.15 * empty) / n);
      if (!best || score > best.score + 0.5) best = { cols, rows, score, tw };
    }
    if (best.tw < MIN_TILE_WIDTH) {
      // Too many machines for one screen: keep tiles readable and let the page scroll.
      grid.dataset.fit = "scroll";
      grid.style.removeProperty("--rows");
      grid.style.setProperty("--cols", String(Math.max(1, Math.floor((w + gap) / (MIN_TILE_WIDTH + gap)))));
      return;
    }
    grid.dataset.fit = "screen";
    grid.style.setProperty("--cols", String(best.cols));
    grid.style.setProperty("--rows", String(best.rows));
  }

  // ---- data: full list and live stream ------------------------------------------------------

  function withToken(path, name) {
    return token ? `${path}?${name}=${encodeURIComponent(token)}` : path;
  }

  async function refetch() {
    const startedAt = eventSeq;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const headers = { Accept: "application/json" };
      if (token) headers.Authorization = `Bearer ${token}`;
      const sentAt = Date.now();
      const resp = await fetch("api/v1/machines", { headers, cache: "no-store", signal: controller.signal });
      if (resp.status === 401 || resp.status === 403) {
        authProblem = token
          ? `The hub refused this page's token (HTTP ${resp.status}). Check the token in the address.`
          : `The hub needs a token (HTTP ${resp.status}). Open this page as /wall?token=<read token>.`;
        renderBanner(now());
        return;
      }
      if (!resp.ok) return;
      authProblem = "";
      learnSkew(resp.headers.get("Date"), sentAt);
      const body = await resp.json();
      const listed = Array.isArray(body.machines) ? body.machines : [];
      for (const view of listed) {
        const entry = view && machines.get(view.id);
        // A stream event that arrived while this request was in flight is newer: keep it.
        if (entry && entry.seq > startedAt) continue;
        apply(view, startedAt);
      }
      // The hub no longer knows a machine (removed from its configuration): drop its tile.
      const ids = new Set(listed.map((view) => view && view.id));
      for (const [id, entry] of machines) {
        if (ids.has(id) || entry.seq > startedAt) continue;
        machines.delete(id);
        entry.tile.remove();
        layout();
      }
      renderHeader();
      renderBanner(now());
    } catch (err) {
      // The hub is unreachable. A stream can look open long after its network is gone
      // (nothing tells the browser), so start a fresh one; it reports its own state.
      if (source && source.readyState === EventSource.OPEN) {
        setConn("lost");
        connect();
      }
    } finally {
      clearTimeout(timer);
    }
  }

  /** Today's utilization of every machine, page by page; failures leave the last figures. */
  async function fetchUtilization() {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const fresh = new Map();
    let offset = 0;
    try {
      for (let pages = 0; pages < 50 && offset !== null; pages += 1) {
        const controller = new AbortController();
        const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
        let resp;
        try {
          const url = `api/v1/utilization?limit=${UTILIZATION_PAGE}&offset=${offset}`;
          resp = await fetch(url, { headers, cache: "no-store", signal: controller.signal });
        } finally {
          clearTimeout(timer);
        }
        if (!resp.ok) return;
        const body = await resp.json();
        for (const m of Array.isArray(body.machines) ? body.machines : []) {
          if (m && typeof m.machine === "string" && m.total) fresh.set(m.machine, m.total);
        }
        offset = typeof body.next_offset === "number" ? body.next_offset : null;
      }
    } catch (err) {
      return; // the hub is unreachable: the stream's own handling reports it
    }
    utilization.clear();
    for (const [id, f] of fresh) utilization.set(id, f);
    for (const entry of machines.values()) renderUtilization(entry);
  }

  function learnSkew(dateHeader, sentAt) {
    const server = Date.parse(dateHeader || "");
    if (!Number.isFinite(server)) return;
    const local = (sentAt + Date.now()) / 2;
    const skew = server + 500 - local; // the header is truncated to the second
    skewMs = Math.abs(skew) > SKEW_THRESHOLD_MS ? skew : 0;
  }

  function connect() {
    clearTimeout(retryTimer);
    if (source) source.close();
    const es = new EventSource(withToken("api/v1/events", "access_token"));
    source = es;
    connectedAt = Date.now();
    es.addEventListener("open", () => {
      if (es !== source) return;
      retryMs = RETRY_MIN_MS;
      setConn("live");
      // Anything may have changed while we were away: take the full list again.
      if (openedBefore) refetch();
      openedBefore = true;
    });
    es.addEventListener("machine", (ev) => {
      if (es !== source) return;
      let view;
      try {
        view = JSON.parse(ev.data);
      } catch (err) {
        return;
      }
      eventSeq += 1;
      apply(view, eventSeq);
    });
    es.addEventListener("error", () => {
      if (es !== source) return;
      setConn("lost");
      // The browser retries by itself after a dropped stream (readyState CONNECTING), but
      // gives up for good after an HTTP error (CLOSED): then we retry, with backoff.
      if (es.readyState === EventSource.CLOSED) {
        es.close();
        retryTimer = setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
      }
    });
  }

  // ---- screen -------------------------------------------------------------------------------

  let wakeLock = null;
  async function keepAwake() {
    if (!("wakeLock" in navigator) || document.visibilityState !== "visible" || wakeLock) return;
    try {
      wakeLock = await navigator.wakeLock.request("screen");
      wakeLock.addEventListener("release", () => {
        wakeLock = null;
      });
    } catch (err) {
      wakeLock = null; // not allowed here (no HTTPS, battery saver…): the kiosk setup decides
    }
  }

  function everySecond() {
    const t = now();
    renderClock(t);
    for (const entry of machines.values()) tick(entry, t);
    renderBanner(t);
    if (source && source.readyState === EventSource.CONNECTING && Date.now() - connectedAt > STUCK_AFTER_MS) {
      connect();
    }
  }

  function start() {
    renderHeader();
    everySecond();
    // Tick on the second boundary so every tile and the clock change together.
    setTimeout(() => {
      everySecond();
      setInterval(everySecond, 1000);
    }, 1000 - (Date.now() % 1000));
    setInterval(refetch, REFETCH_EVERY_MS);
    setInterval(fetchUtilization, UTILIZATION_EVERY_MS);
    window.addEventListener("resize", layout);
    PHONE.addEventListener("change", layout);
    document.addEventListener("visibilitychange", keepAwake);
    keepAwake();
    refetch();
    fetchUtilization();
    connect();
  }

  start();
})();
