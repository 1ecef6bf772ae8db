"""Renders the results of scripts/bench.py as Markdown and updates BENCHMARKS.md.

BENCHMARKS.md keeps whatever it holds outside the generated sections; each generated section
sits between `<!-- make-bench:NAME:start -->` and `<!-- make-bench:NAME:end -->` and is replaced
on every run (`gate`: the request-path micro-bench; `e2e`: the end-to-end benchmarks; `held`:
memory per held request by carrier; `builds`: build profile and allocator).
"""

import os
import re


def _ms(value, digits=1):
    return "n/a" if value is None else f"{value:.{digits}f} ms"


def _mib(kib):
    return f"{kib / 1024:.1f} MiB"


def _instructions(warm):
    """The callgrind comparison of the warm path, as a list item (empty if it was not run)."""
    ins = warm.get("instructions")
    if not ins:
        return ""
    a, b = ins["a_bare_pingora"], ins["b_idlewatcher"]
    each = lambda runs: "; ".join(", ".join(f"{v:,.0f}" for v in r["per_request"]) for r in runs)  # noqa: E731
    return f"""- Instructions per request, counted by callgrind (unlike time, not disturbed by the machine's
  other work): (a) {each(a)}; (b) {each(b)} ({len(a)} launches of each, interleaved;
  {len(a[0]['per_request'])} windows of {ins['requests']:,} requests per launch after a warm-up, each less the
  process's background work, measured idle). **b/a = {ins['b_over_a']:.4f}** (medians): on a CPU-bound proxy,
  throughput b/a = {ins['throughput_b_over_a']:.3f}. Reproduce: `{ins['command']}` (`stage_warm`, the
  same configurations; the profiles are kept in `target/bench/logs/callgrind-*.out.*`).
"""


# The warm-path budget: a ready route's throughput at least this share of the bare proxy's.
WARM_BUDGET = 0.98


def _verdict(ok):
    if ok is None:
        return f"not resolved by this run (the interval spans {WARM_BUDGET})"
    return "met" if ok else "**NOT met**"


def _machine(results):
    m = results["machine"]
    return (
        f"- Date: {results['date']} (run started {results['started']}), "
        f"`make bench` total {results.get('total_seconds', 0) / 60:.1f} min "
        f"(stages: {', '.join(f'{k} {v:.0f} s' for k, v in results['timings'].items() if isinstance(v, (int, float)))}).\n"
        f"- Machine: `nproc` {m['nproc']}, {m['cpu']}, {m['memory_gib']} GiB, kernel {m['kernel']}, "
        f"Docker {m['docker']} ({m['docker_storage']} storage), {m['rustc']}, {m['nginx']}, wrk from Debian.\n"
        f"- Load average (1/5/15 min) at the start {m['loadavg_start']}, at the end {m.get('loadavg_end', '?')}: "
        "the machine is shared, so other work may have been running (see each stage).\n"
    )


def render_gate(results):
    gate = results["stages"].get("gate")
    if not gate:
        return None
    rows = "".join(
        f"| `{name}` | {b['median']} | {b['low']} – {b['high']} |\n" for name, b in gate["benches"].items()
    )
    allocations = gate.get("allocations_per_request")
    return f"""## Request path (gate)

`benches/gate.rs` (criterion): what the gate adds to every request of a ready route, with 10,000
routes loaded. Budgets: activity mark ≤ 10 ns; no lock, no allocation, no syscall
on the ready path.

{_machine(results)}- Reproduce: `{gate['command']}` (run by `make bench`, before the end-to-end stages).

| bench | median | 95 % interval |
|---|---|---|
{rows}
- Heap allocations per request by the gate on a ready route: **{allocations}** ({gate.get('allocations', '?')}),
  counted by a global allocator around batches of 1,000 and 2,000 `IdleGate::check` calls plus the
  context drop (the difference is the per-request cost, free of once-per-batch work).
- `gate/ready_route_10000_routes` includes a `block_on` of the async `check` on a current-thread
  runtime; `gate/tokio_block_on_baseline` is that `block_on` alone, so the gate's own cost is the
  difference. `activity/mark` is the idle clock's whole cost on the request path.
"""


def render_e2e(results):
    s = results["stages"]
    out = ["## Gateway end to end (`make bench`)\n\n"]
    out.append(
        "`make bench` (`scripts/bench.sh` → `scripts/bench.py`, load client `examples/loadgen.rs`, baseline "
        "`examples/bare_proxy.rs`) runs these on one machine, one after the other, against the real Docker "
        "engine, and rewrites this section. Every stage can be run alone: `scripts/bench.sh --only STAGE` "
        "(`footprint`, `warm`, `herd`, `cold`, `sse`); the commands below name the ports and generated "
        "configs as placeholders (they are picked fresh each run); PREFIX is the run's container prefix: the containers are made by `loadgen create` from the `idlewatcher-bench` image that `scripts/bench.py` builds (`FROM scratch` + Debian's static busybox; `/bin/serve` sleeps `LISTEN_DELAY` seconds, then runs busybox httpd), labelled `idlewatcher-test=1`, and removed at the end.\n\n"
    )
    out.append(_machine(results))
    errors = {k: v["error"] for k, v in s.items() if isinstance(v, dict) and "error" in v}
    if errors:
        out.append("\n**Stages that failed in this run:** " + "; ".join(f"{k}: {v}" for k, v in errors.items()) + "\n")

    # Budgets at a glance.
    rows = []
    warm = s.get("warm")
    if warm and "ratio_b_a" in warm:
        low, high = warm["ratio_b_a_of_medians_ci95"]
        clow, chigh = warm["cpu_per_request_b_over_a_ci95"]
        # Met if the whole 95 % interval clears the budget; not met if it lies below; else the noise
        # of this machine is larger than the margin and the run cannot tell.
        verdict = True if low >= WARM_BUDGET else (False if high < WARM_BUDGET else None)
        measured = (f"b/a = {warm['ratio_b_a_of_medians']:.3f} (95 % interval {low:.3f}–{high:.3f}; per-round ratios "
                    f"{', '.join(f'{x:.2f}' for x in warm['ratio_b_a_per_round'])}); proxy CPU per request b/a = "
                    f"{warm['cpu_per_request_b_over_a']:.3f} ({clow:.3f}–{chigh:.3f})")
        instructions = warm.get("instructions")
        if instructions:
            measured += (f"; instructions per request (callgrind) b/a = {instructions['b_over_a']:.4f}, "
                         f"i.e. throughput b/a = {instructions['throughput_b_over_a']:.3f} on a CPU-bound machine")
            if verdict is None:
                # The noise of this machine hides the margin; the instruction count does not.
                verdict = instructions["throughput_b_over_a"] >= WARM_BUDGET
                measured += f" (the instruction count decides: the throughput interval spans {WARM_BUDGET})"
        rows.append((f"ready route: throughput ≥ {WARM_BUDGET}× the bare Pingora proxy, 10,000 routes loaded",
                     measured, verdict))
    herd = s.get("herd")
    if herd and "answered" in herd:
        rows.append((f"{herd['requests']:,} concurrent requests to a sleeping route: one start",
                     f"{herd['engine_starts']} engine `start` event(s)", herd["engine_starts"] == 1))
        ok200 = herd["statuses"].get("200", 0)
        rows.append(("… every request answered",
                     f"{herd['answered']:,} answered ({', '.join(f'{k}: {v:,}' for k, v in sorted(herd['statuses'].items()))}), "
                     f"{sum(herd['errors'].values())} errors", herd["answered"] == herd["requests"] and ok200 == herd["requests"]))
        extra = herd["extra_kib"] / 1024
        rows.append(("… ≤ 64 MB extra", f"{extra:.1f} MiB (peak RSS during the herd − RSS before)", extra * 1024 * 1024 <= 64e6))
    cold = s.get("cold")
    if cold and "stop" in cold:
        for method in ["stop", "pause"]:
            if method in cold and cold[method].get("ready_to_served_ms"):
                med = cold[method]["ready_to_served_ms"]["median"]
                rows.append((f"upstream accepting → first held request answered ≤ 10 ms median ({method})",
                             f"{med:.1f} ms median, {cold[method]['ready_to_served_ms']['p90']:.1f} ms p90", med <= 10))
    gate = s.get("gate")
    if gate:
        mark = gate["benches"].get("activity/mark")
        if mark:
            value, unit = mark["median"].split()
            ns = float(value) * {"ps": 0.001, "ns": 1, "µs": 1000, "us": 1000}.get(unit, 1)
            rows.append(("activity mark ≤ 10 ns", mark["median"], ns <= 10))
        if "allocations_per_request" in gate:
            rows.append(("no allocation on the ready path", f"{gate['allocations_per_request']} per request",
                         gate["allocations_per_request"] == 0))
    if rows:
        out.append("\n### Budgets\n\n| budget | measured | |\n|---|---|---|\n")
        out.extend(f"| {b} | {m} | {_verdict(ok)} |\n" for b, m, ok in rows)

    if warm and "summary" in warm:
        names = {"a_bare_pingora": "(a) bare Pingora proxy (`examples/bare_proxy.rs`)",
                 "b_idlewatcher": f"(b) idlewatcher, {warm['routes']:,} routes, target ready",
                 "c_nginx": "(c) nginx, reverse proxy with upstream keepalive"}
        out.append(f"""
### 1. Warm path: a ready route under load

The same static upstream for all three (Debian's nginx, 1 worker, serving a 513-byte file on
loopback, keepalive). (a) and (b) run Pingora with the same server keys (`threads: 2`,
`upstream_keepalive_pool_size: 1024`, h2c on); (c) is nginx with `worker_processes 2`, upstream
`keepalive 256`, access log off on both nginx. {warm['rounds']} rounds of {warm['seconds_per_round']} s,
interleaved a, b, c, a, b, c… after a 2 s warm-up each; figures are the medians over the rounds.
wrk, the proxy and the upstream share the 2 cores, as a user's single box would.

| target | requests/s | p50 | p99 | proxy CPU per request | requests/s per round |
|---|---|---|---|---|---|
""")
        for key, label in names.items():
            r = warm["summary"][key]
            out.append(f"| {label} | {r['rps_median']:,.0f} | {_ms(r['p50_ms_median'], 2)} | {_ms(r['p99_ms_median'], 2)} | "
                       f"{r['cpu_us_per_request_median']:.1f} µs | "
                       f"{', '.join(f'{x:,.0f}' for x in r['rps_all'])} |\n")
        errs = [f"{k}: {v['errors']}" for k, v in warm["summary"].items() if v["errors"] or v["non_2xx"]]
        out.append(f"""
- **b/a = {warm['ratio_b_a_of_medians']:.3f}** (budget ≥ {WARM_BUDGET}): the ratio of the median throughputs; 95 %
  interval {warm['ratio_b_a_of_medians_ci95'][0]:.3f}–{warm['ratio_b_a_of_medians_ci95'][1]:.3f} (bootstrap over
  the rounds). The median of the per-round ratios (each b round against the a round just before it)
  is {warm['ratio_b_a']:.3f}. **b/c = {warm['ratio_b_c_of_medians']:.3f}** (per-round median {warm['ratio_b_c']:.3f}).
- Proxy CPU per request (utime + stime of the proxy's processes over the round ÷ requests
  served; less sensitive than throughput to what else runs on the machine): b/a =
  **{warm['cpu_per_request_b_over_a']:.3f}** (95 % interval {warm['cpu_per_request_b_over_a_ci95'][0]:.3f}–{warm['cpu_per_request_b_over_a_ci95'][1]:.3f}),
  b/c = {warm['cpu_per_request_b_over_c']:.3f}.
{_instructions(warm)}- Load average before/after the rounds: {warm['loadavg'][0]} / {warm['loadavg'][1]}; other busy processes at the start: {', '.join(warm['others_busy']) or 'none above 5 % CPU'}.
{('- Errors: ' + '; '.join(errs) + chr(10)) if errs else ''}- Reproduce: each round is `{warm['wrk_command']}`; (a) is
  `{warm['bare_command']}` (SERVER_KEYS.yaml: the same Pingora keys as the gateway's file), (b) the gateway of stage 5
  with the route `target` (its container started by hand, `upstream: 127.0.0.1:UPSTREAM`, `health: {{ tcp: true }}`), (c) the
  nginx configuration written by `scripts/bench.py` (`stage_warm`). All at once: `scripts/bench.sh --only warm`.
""")

    if herd and "answered" in herd:
        out.append(f"""
### 2. Thundering herd: {herd['requests']:,} concurrent requests on a sleeping route

A stopped busybox-httpd container (`idlewatcher-bench` image: `FROM scratch` + Debian's static
busybox), `max_waiters: 20000`. The client opens {herd['requests']:,} connections first
({_ms(herd['connect_ms'], 0)}), then writes one `GET /` on each; the route is asleep, so the first
one wakes it and the others join the wake.

| figure | value |
|---|---|
| engine `start` events for the container in the window | **{herd['engine_starts']}** |
| answered | {herd['answered']:,} of {herd['requests']:,}: {', '.join(f'{k}: {v:,}' for k, v in sorted(herd['statuses'].items()))}; errors: {herd['errors'] or 'none'} |
| all requests written before the first answer (all held at once) | {herd['all_held']} (last written at {_ms(herd['last_request_sent_ms'])}, first answer at {_ms(herd['first_response_ms'])}) |
| time to the last response (from the first request written) | **{_ms(herd['last_response_ms'])}** |
| per-request latency median / p99 | {_ms(herd['latency_ms']['median'])} / {_ms(herd['latency_ms']['p99'])} |
| gateway RSS before | {_mib(herd['rss_before_kib'])} |
| … with the {herd['requests']:,} connections open, no request sent yet (the L4 stream and the early hold's task, waiting for each first byte) | {_mib(herd['rss_connected_kib'])} (+{(herd['rss_connected_kib'] - herd['rss_before_kib']) * 1024 / herd['requests'] / 1000:.1f} kB per connection) |
| … with every request held (largest 10 ms sample before the first answer) | {_mib(herd.get('rss_held_kib', 0))} (+{(herd.get('rss_held_kib', 0) - herd['rss_before_kib']) * 1024 / herd['requests'] / 1000:.1f} kB per request) |
| … peak during the herd (`VmHWM`) | {_mib(herd['hwm_after_kib'])} |
| **extra memory** (peak − before) | **{_mib(herd['extra_kib'])}** = {herd['extra_kib'] * 1024 / 1e6:.0f} MB (budget ≤ 64 MB) |

- The peak (`VmHWM`) is reset through `/proc/PID/clear_refs` just before the herd: {herd['peak_reset']}.
- Reproduce: `{herd['command']}` (`target/release/examples/loadgen`).
""")

    if cold and ("stop" in cold or "pause" in cold):
        out.append("""
### 3. Cold-start tax

For each wake, alternately: (1) **direct**: the backend is started (or unpaused) through the engine
API and a tight connect loop on its container address (no gateway) measures T from the API call
to the first accepted connection (and to the first HTTP answer on it); the gateway then adopts it
and it is put back to sleep by hand (`docker stop`, or `docker pause`), waiting for the status
endpoint to say `napping`; (2) **through the gateway**: a first `GET /` on the sleeping route,
timed from the connect to the last byte. Tax = (2) − T of the same pair. A watcher beside the
gateway measures *when the upstream started accepting* (stop: a connect loop from the engine's
`start` event on; pause: a request sent to the frozen backend before the wake, answered on thaw),
giving **ready-to-served** = the gateway's answer − that moment (the ≤ 10 ms budget).
The stop backend waits """ + str(results["options"].get("listen_delay")) + """ s before listening (`LISTEN_DELAY`), so the listen moment
is well after the engine's start and both watchers see it.

| method | wakes | T direct: connect (median / p90) | T direct: first HTTP answer | through the gateway | tax vs connect (median / p90) | tax vs first HTTP answer | **ready-to-served** (median / p90) |
|---|---|---|---|---|---|---|---|
""")
        for method in ["stop", "pause"]:
            c = cold.get(method)
            if not c or "gateway_ms" not in c:
                continue
            g = lambda k, q="median": c[k][q]
            out.append(
                f"| {method} | {c['wakes']} | {g('direct_connect_ms'):.1f} / {g('direct_connect_ms', 'p90'):.1f} ms "
                f"| {g('direct_http_ms'):.1f} ms | {g('gateway_ms'):.1f} ms "
                f"| {g('tax_vs_connect_ms'):.1f} / {g('tax_vs_connect_ms', 'p90'):.1f} ms | {g('tax_vs_http_ms'):.1f} ms "
                f"| **{g('ready_to_served_ms'):.1f}** / {g('ready_to_served_ms', 'p90'):.1f} ms |\n"
            )
        for method in ["stop", "pause"]:
            c = cold.get(method)
            if c and "command" in c:
                calls = c.get("engine_calls_per_wake", [])
                out.append(f"- {method}: engine `{'unpause' if method == 'pause' else 'start'}` events per gateway wake: "
                           f"{sorted(set(calls))}; reproduce: `{c['command']}`.\n")

    sse = s.get("sse")
    if sse and "subscribers" in sse:
        out.append(f"""
### 4. SSE fan-out: {sse['subscribers']:,} subscribers of one route's events

{sse['subscribers']:,} connections on `/.idlewatcher/events` of a sleeping route (subscribed in
{_ms(sse['subscribe_ms'], 0)}); then one held `GET /` wakes it.

| figure | value |
|---|---|
| subscribers that received `ready` | {sse['got_ready']:,} of {sse['subscribers']:,} (errors: {sse['errors'] or 'none'}) |
| engine `start` events | {sse['engine_starts']} |
| `ready` at the first / last subscriber, after the wake request | {_ms(sse['first_ready_ms'])} / {_ms(sse['last_ready_ms'])} |
| **fan-out time** (first to last subscriber) | **{_ms(sse['fanout_spread_ms'])}** |
| the held request answered (status {sse['held_request_status']}) after | {_ms(sse['held_request_ms'])} |
| gateway RSS before / with the subscribers | {_mib(sse['rss_before_kib'])} / {_mib(sse['rss_subscribed_kib'])} |
| **RSS per subscriber** | **{sse['rss_per_subscriber_bytes'] / 1024:.1f} KiB** |

- Reproduce: `{sse['command']}`.
""")

    fp = s.get("footprint")
    if fp and "rss_kib" in fp:
        created = fp["containers"]
        out.append(f"""
### 5. Footprint: {fp['routes']:,} routes, all napping, idle {fp['idle_seconds']:.0f} s

{fp['routes']:,} stopped containers, created in parallel through the engine API over its unix socket
({created['created']:,} in {created['seconds']:.0f} s, {created['per_second']:.0f}/s at concurrency
{created['concurrency']}), one route each (`idle_timeout: 1h`). The gateway inspects every watched
container when it connects to the engine's event stream (8 at a time).
{('**Note:** ' + fp['note'] + chr(10)) if fp.get('note') else ''}
| figure | value |
|---|---|
| `idlewatcher -t` (validate the {fp['routes']:,}-route file) | {fp['startup']['validate_s']:.2f} s |
| start → listening / → every container resynced | {fp['startup']['listening_s']:.1f} s / {fp['startup']['resynced_s']:.1f} s |
| **RSS** after {fp['idle_seconds']:.0f} s idle | **{_mib(fp['rss_kib'])}** ({fp['rss_per_route_bytes'] / 1024:.1f} KiB per route); peak during start-up {_mib(fp.get('startup_peak_kib', 0))} |
| **CPU** (utime + stime) over {fp['idle_seconds']:.0f} s idle | **{fp['cpu_seconds']:.2f} s** ({fp['cpu_percent']:.2f} % of one core) |
| context switches per second (all {fp['threads']} threads) | {fp['ctx_switches_per_s']:.1f} |
| engine events (any container: start, die, pause, unpause, create, destroy) the gateway's stream received meanwhile | {fp.get('engine_events_in_window', '?')} |

- Load average before/after: {fp['loadavg'][0]} / {fp['loadavg'][1]}; other busy processes: {', '.join(fp['others_busy']) or 'none above 5 % CPU'}.
  The engine's events for *other* containers (e.g. another engineer's tests) also reach the gateway's
  event stream and are matched against the watched list.
- Reproduce: `scripts/bench.sh --only footprint` (config: one line per route,
  `- {{ name: rN, hosts: [rN.bench], docker: {{ container: PREFIX-N }}, port: 80 }}`), then
  `grep -E 'VmRSS|VmHWM' /proc/PID/status` and fields 14–15 of `/proc/PID/stat`.
""")
    return "".join(out)


def render_builds(results):
    """The `builds` stage: build profile and allocator, then runtime settings (empty if not run)."""
    b = results["stages"].get("builds")
    if not b or "rows" not in b:
        return ""
    ci = lambda pair: f"{pair[0]:.2f}–{pair[1]:.2f}"  # noqa: E731
    count = lambda row, side: f"{row[f'instructions_{side}']:,.0f}" if f"instructions_{side}" in row else "n/a"  # noqa: E731
    napping = lambda row: f"{row['bytes_per_napping_route']:,.0f} B" if row.get("bytes_per_napping_route") else "n/a"  # noqa: E731
    out = [f"""## Allocator and build profile (`make bench`, stage `builds`)

Each build below is made with its cargo command (the gateway and the bare proxy alike), then
measured side by side in one run: {b['rounds']} interleaved rounds of {b['seconds_per_round']} s over
every build's bare Pingora proxy (a) and gateway (b, one ready route; the same server keys) and
nginx (c, 2 workers, upstream keepalive, access log off), `{b['wrk_command']}`; then each a and b
under callgrind (instructions per request, the stable figure on this shared machine); then RSS
per napping route (1 and 10,000 routes, engine unreachable). Figures are medians over the rounds;
intervals are 95 % bootstrap intervals of the ratio of medians. nginx: {b['nginx']['rps']:,.0f}
requests/s at {b['nginx']['cpu_us']:.1f} µs CPU per request. Shipped (`make run`): **{b['shipped']}**.

| build | build time | binary | (a) req/s | (b) req/s | b/a | b/c | CPU/request a / b | instructions/request a / b | napping route |
|---|---|---|---|---|---|---|---|---|---|
"""]
    for row in b["rows"]:
        out.append(
            f"| {row['build']} | {row['build_s']:.0f} s | {row['size_bytes'] / 2**20:.1f} MiB | {row['rps_a']:,.0f} | "
            f"{row['rps_b']:,.0f} | {row['b_over_a']:.3f} ({ci(row['b_over_a_ci95'])}) | "
            f"{row['b_over_c']:.3f} ({ci(row['b_over_c_ci95'])}) | {row['cpu_us_a']:.1f} / {row['cpu_us_b']:.1f} µs | "
            f"{count(row, 'a')} / {count(row, 'b')} | {napping(row)} |\n")
    out.append("\nPingora's runtime settings, on the shipped build's gateway, in the same rounds:\n\n"
               "| settings | req/s | against the shipped settings | b/c | CPU/request |\n|---|---|---|---|---|\n")
    for row in b["runtime"]:
        out.append(f"| {row['settings']} | {row['rps']:,.0f} | {row['over_shipped']:.3f} ({ci(row['over_shipped_ci95'])}) | "
                   f"{row['over_c']:.3f} | {row['cpu_us']:.1f} µs |\n")
    out.append(f"\n- Load average before/after the rounds: {b['loadavg'][0]} / {b['loadavg'][1]}.\n"
               "- Commands: " + "; ".join(f"`{row['command']}`" for row in b["rows"]) + ".\n"
               "- Reproduce: `scripts/bench.sh --only builds` (`--build-rounds N`).\n")
    return "".join(out)


# What the `held` stage's carriers are (tests/tls.rs's `Carrier`, as its MEASURE lines name
# them), in the table's order: the row's label and where such a request is held.
HELD_CARRIERS = [
    ("Cleartext", "HTTP/1.1, cleartext", "early hold (below Pingora's session)"),
    ("Tls", "HTTP/1.1 over TLS", "early hold (below Pingora's session)"),
    ("H2 { per_connection: 100 }", "HTTP/2 over TLS, 100 requests per connection",
     "the gate, in `request_filter` (a live h2 stream session)"),
    ("H2 { per_connection: 1 }", "HTTP/2 over TLS, one connection per request", "the gate, in `request_filter`"),
    ("CleartextIdle", "*(a cleartext connection, no request yet)*",
     "the early hold's task, waiting for the first byte"),
    ("TlsIdle", "*(a TLS connection, no request yet)*", "the early hold's task, waiting for the first byte"),
]


def render_held(results):
    """The `held` stage: memory per held request by carrier (empty if it was not run)."""
    h = results["stages"].get("held")
    if not h or "bytes_per_held" not in h:
        return ""
    m = results["machine"]
    measured = dict(h["bytes_per_held"])
    rows = []
    for key, label, where in HELD_CARRIERS:
        if key in measured:
            rows.append(f"| {label} | {where} | {measured.pop(key):,} |\n")
    # A carrier the test gained since this table was written: shown under its own name.
    rows.extend(f"| `{key}` | ? | {value:,} |\n" for key, value in measured.items())
    rss = "; ".join(f"`{key}` {before:,} → {after:,}" for key, (before, after) in h["rss_kib"].items())
    seconds = results["timings"].get("held")
    return f"""## Memory per held request by carrier (`make bench`, stage `held`)

What one request held through a wake costs the gateway, by how it arrives: `tests/tls.rs`'s
ignored test `memory_per_held_request`, built in release, run against the gateway of the
`{results['options'].get('profile', '?')}` profile (`{h['gateway']}`, through `IDLEWATCHER_BIN`).
For each carrier, a fresh gateway (`threads: 2`, HTTP and HTTPS listeners, one ECDSA P-256
certificate of a test CA) fronts a container that never listens (`wake_timeout: 10m`); after a
warm-up, {h['count']:,} requests `GET /` are sent and the test waits until the admin listener's
`idlewatcher_requests_held` says all {h['count']:,} are held; then (`VmRSS` after − `VmRSS`
before) / {h['count']:,}. The idle rows are {h['count']:,} connections that send nothing (for TLS:
handshake done, TLS 1.3), for comparison. **One run** of each row (no repetitions, no interval).

| carrier | held where | bytes per held request |
|---|---|---|
{''.join(rows)}
- Date: {results['date']} (run started {results['started']}{f', the stage took {seconds:.0f} s' if isinstance(seconds, (int, float)) else ''}).
- Machine: `nproc` {m['nproc']}, {m['cpu']}, {m['memory_gib']} GiB, kernel {m['kernel']}, Docker {m['docker']}, {m['rustc']}.
- Load average (1/5/15 min) before/after the stage: {h['loadavg'][0]} / {h['loadavg'][1]} (the machine is shared).
- RSS before → after, KiB, by the test's name of the carrier: {rss}.
- Command: `{h['command']}`; the same by hand: `{h['cargo_command']}`.
- Reproduce: `scripts/bench.sh --only held` (`--held N`).
"""


def render(results):
    report = {}
    # A run of the `builds` or `held` stages alone leaves the end-to-end section as it was.
    if set(results["stages"]) - {"builds", "held"}:
        report["e2e"] = render_e2e(results)
    gate = render_gate(results)
    if gate:
        report["gate"] = gate
    builds = render_builds(results)
    if builds:
        report["builds"] = builds
    held = render_held(results)
    if held:
        report["held"] = held
    return report


def _replace(text, name, body):
    start, end = f"<!-- make-bench:{name}:start -->", f"<!-- make-bench:{name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    # First time: right after the title, before the hand-written sections.
    lines = text.split("\n", 1)
    if lines[0].startswith("# "):
        return f"{lines[0]}\n\n{block}\n" + (lines[1] if len(lines) > 1 else "")
    return f"{block}\n\n{text}"


def update_benchmarks_md(path, report):
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    # The gate section goes in first so that the end-to-end one ends up above it.
    if "gate" in report:
        text = _replace(text, "gate", report["gate"])
    if "e2e" in report:
        text = _replace(text, "e2e", report["e2e"])
    if "builds" in report:
        text = _replace(text, "builds", report["builds"])
    if "held" in report:
        text = _replace(text, "held", report["held"])
    with open(path, "w") as f:
        f.write(text)
