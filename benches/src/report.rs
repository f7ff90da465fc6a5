//! The load comparison's report: `load/run.sh` writes one CSV row per wrk run (the process
//! accounting it took around the run, and the path of wrk's saved output); this module parses
//! wrk's output, takes medians over rounds and ratios to the reference target within each round,
//! and renders the markdown table, the target checks and the SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// The target every ratio is taken against (nginx with `keepalive 16`).
pub const REFERENCE: &str = "nginx-keep";
/// The peers whose best result upkeep is measured against (`haproxy-splice` only where the
/// splice comparison ran it).
pub const PEERS: [&str; 4] = [
    "nginx-nokeep",
    "nginx-keep",
    "haproxy-safe",
    "haproxy-splice",
];
/// upkeep with its default (pooling) settings.
pub const UPKEEP: &str = "upkeep";
/// The splice comparison: (splicing target, the same proxy copying).
pub const SPLICE_PAIRS: [(&str, &str); 2] = [
    ("upkeep", "upkeep-copy"),
    ("haproxy-splice", "haproxy-safe"),
];

/// What wrk printed, the part we use.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Wrk {
    /// Completed requests.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

/// wrk's time units (`812.00us`, `1.20ms`, `2.00s`, `1.00m`) in milliseconds.
fn millis(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(v * scale)
}

/// Parses the output of `wrk --latency`. `None` when the run produced no summary.
pub fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    let mut have_requests = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => w.p50_ms = millis(v)?,
            ["99%", v] => w.p99_ms = millis(v)?,
            [n, "requests", "in", ..] => {
                w.requests = n.parse().ok()?;
                have_requests = true;
            }
            ["Requests/sec:", v] => w.rps = v.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                for pair in rest.chunks(2) {
                    if let [_, n] = pair {
                        w.errors += n.trim_end_matches(',').parse::<u64>().ok()?;
                    }
                }
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => w.errors += n.parse::<u64>().ok()?,
            _ => {}
        }
    }
    have_requests.then_some(w)
}

/// One row of the CSV `run.sh` writes (see its header line for the column names).
#[derive(Clone, Debug, PartialEq)]
pub struct RunRow {
    pub round: u32,
    pub scenario: String,
    pub body: String,
    pub target: String,
    /// Concurrent client connections (wrk -c).
    pub conns: u32,
    /// wrk's output file, relative to the CSV's directory.
    pub wrk_file: String,
    /// utime+stime of the target's processes during the run, in clock ticks (None: no proxy).
    pub cpu_ticks: Option<u64>,
    pub clk_tck: u64,
    /// Peak RSS (VmHWM summed over the target's processes) during the run, KiB.
    pub rss_kb: Option<u64>,
    /// Connections the origins accepted during the run (stub_status delta).
    pub upstream_conns: u64,
    /// TIME_WAIT sockets with an origin port at either end that appeared during the run.
    pub tw_new: u64,
    /// All TIME_WAIT sockets toward the origins right after the run.
    pub tw_after: u64,
    /// Length of the run in seconds (wrk -d).
    pub duration_s: u64,
    /// utime+stime of both origins during the run, clock ticks.
    pub backend_ticks: u64,
    /// utime+stime of wrk, clock ticks.
    pub wrk_ticks: u64,
    /// Machine-wide user+nice+system time during the run (all CPUs), clock ticks.
    pub machine_busy_ticks: u64,
    /// Machine-wide idle+iowait time during the run (all CPUs), clock ticks.
    pub machine_idle_ticks: u64,
    /// utime alone of the target's processes (the user part of `cpu_ticks`); None: no proxy,
    /// or a CSV from before the split ([`CSV_HEADER_V1`]).
    pub cpu_user_ticks: Option<u64>,
    /// stime alone (the system part of `cpu_ticks`).
    pub cpu_sys_ticks: Option<u64>,
    /// Bytes upkeep moved with splice(2) during the run (`upkeep_spliced_bytes_total` delta);
    /// None for other targets and older CSVs.
    pub spliced_bytes: Option<u64>,
}

/// The CSV header `run.sh` writes; [`parse_csv`] checks it.
pub const CSV_HEADER: &str = "round,scenario,body,target,conns,wrk_file,cpu_ticks,clk_tck,rss_kb,upstream_conns,tw_new,tw_after,duration_s,backend_ticks,wrk_ticks,machine_busy_ticks,machine_idle_ticks,cpu_user_ticks,cpu_sys_ticks,spliced_bytes";

/// The header before the user/system split and the spliced bytes (the first 17 columns of
/// [`CSV_HEADER`]); [`parse_csv`] still reads such files, the new columns as unknown.
pub const CSV_HEADER_V1: &str = "round,scenario,body,target,conns,wrk_file,cpu_ticks,clk_tck,rss_kb,upstream_conns,tw_new,tw_after,duration_s,backend_ticks,wrk_ticks,machine_busy_ticks,machine_idle_ticks";

fn opt(v: &str) -> Result<Option<u64>, String> {
    if v.is_empty() || v == "-" {
        Ok(None)
    } else {
        v.parse().map(Some).map_err(|e| format!("{v:?}: {e}"))
    }
}

/// Parses the CSV (header line first).
pub fn parse_csv(text: &str) -> Result<Vec<RunRow>, String> {
    let mut lines = text.lines();
    let fields = match lines.next().map(str::trim) {
        Some(h) if h == CSV_HEADER => CSV_HEADER.split(',').count(),
        Some(h) if h == CSV_HEADER_V1 => CSV_HEADER_V1.split(',').count(),
        other => return Err(format!("expected header {CSV_HEADER:?}, found {other:?}")),
    };
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let err = |e: String| format!("line {}: {e}", i + 2);
        if f.len() != fields {
            return Err(err(format!("{} fields, expected {fields}", f.len())));
        }
        // Columns an older header does not have are unknown.
        let extra = |k: usize| f.get(k).map_or(Ok(None), |v| opt(v)).map_err(err);
        let num = |v: &str| v.parse::<u64>().map_err(|e| err(format!("{v:?}: {e}")));
        rows.push(RunRow {
            round: num(f[0])? as u32,
            scenario: f[1].to_string(),
            body: f[2].to_string(),
            target: f[3].to_string(),
            conns: num(f[4])? as u32,
            wrk_file: f[5].to_string(),
            cpu_ticks: opt(f[6]).map_err(err)?,
            clk_tck: num(f[7])?,
            rss_kb: opt(f[8]).map_err(err)?,
            upstream_conns: num(f[9])?,
            tw_new: num(f[10])?,
            tw_after: num(f[11])?,
            duration_s: num(f[12])?,
            backend_ticks: num(f[13])?,
            wrk_ticks: num(f[14])?,
            machine_busy_ticks: num(f[15])?,
            machine_idle_ticks: num(f[16])?,
            cpu_user_ticks: extra(17)?,
            cpu_sys_ticks: extra(18)?,
            spliced_bytes: extra(19)?,
        });
    }
    Ok(rows)
}

/// One measured run: a CSV row with its wrk figures and the derived per-request values.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub row: RunRow,
    pub wrk: Wrk,
}

impl Run {
    /// Proxy CPU microseconds per completed request.
    pub fn cpu_us_per_req(&self) -> Option<f64> {
        self.us_per_req(self.row.cpu_ticks)
    }

    /// `ticks` (of the proxy) in microseconds per completed request.
    fn us_per_req(&self, ticks: Option<u64>) -> Option<f64> {
        let ticks = ticks?;
        (self.wrk.requests > 0 && self.row.clk_tck > 0)
            .then(|| ticks as f64 * 1e6 / self.row.clk_tck as f64 / self.wrk.requests as f64)
    }

    /// Proxy user-mode CPU (utime) microseconds per completed request.
    pub fn cpu_user_us_per_req(&self) -> Option<f64> {
        self.us_per_req(self.row.cpu_user_ticks)
    }

    /// Proxy kernel-mode CPU (stime) microseconds per completed request.
    pub fn cpu_sys_us_per_req(&self) -> Option<f64> {
        self.us_per_req(self.row.cpu_sys_ticks)
    }

    /// KiB moved with splice(2) per completed request.
    pub fn spliced_kib_per_req(&self) -> Option<f64> {
        let bytes = self.row.spliced_bytes?;
        (self.wrk.requests > 0).then(|| bytes as f64 / 1024.0 / self.wrk.requests as f64)
    }

    /// Both origins' CPU microseconds per completed request.
    pub fn backend_us_per_req(&self) -> Option<f64> {
        (self.wrk.requests > 0 && self.row.clk_tck > 0).then(|| {
            self.row.backend_ticks as f64 * 1e6 / self.row.clk_tck as f64 / self.wrk.requests as f64
        })
    }

    /// Machine idle time during the run, in % of all CPUs.
    pub fn idle_pct(&self) -> Option<f64> {
        let total = self.row.machine_busy_ticks + self.row.machine_idle_ticks;
        (total > 0).then(|| self.row.machine_idle_ticks as f64 * 100.0 / total as f64)
    }

    /// CPU used during the run by everything except the proxy, the origins and wrk (another
    /// workload on a shared machine), in % of one CPU.
    pub fn others_pct(&self) -> Option<f64> {
        let ours = self.row.cpu_ticks.unwrap_or(0) + self.row.backend_ticks + self.row.wrk_ticks;
        let span = self.row.duration_s * self.row.clk_tck;
        (span > 0)
            .then(|| self.row.machine_busy_ticks.saturating_sub(ours) as f64 * 100.0 / span as f64)
    }

    /// Upstream connections opened per 100k requests.
    pub fn conns_per_100k(&self) -> f64 {
        self.row.upstream_conns as f64 * 1e5 / self.wrk.requests.max(1) as f64
    }
}

/// Reads the CSV and every wrk output it names (paths relative to the CSV's directory).
pub fn load(csv: &Path) -> Result<Vec<Run>, String> {
    let text = std::fs::read_to_string(csv).map_err(|e| format!("{}: {e}", csv.display()))?;
    let dir = csv.parent().unwrap_or(Path::new("."));
    parse_csv(&text)?
        .into_iter()
        .map(|row| {
            let path = dir.join(&row.wrk_file);
            let out =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let wrk = parse_wrk(&out)
                .ok_or_else(|| format!("{}: no wrk summary in the output", path.display()))?;
            Ok(Run { row, wrk })
        })
        .collect()
}

/// Median (mean of the middle two for an even count); `None` for no values.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A scenario and body: one block of the table.
pub type Case = (String, String);

/// Medians over rounds of one target in one case.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub rounds: usize,
    pub conns: u32,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_us: Option<f64>,
    /// The user (utime) and system (stime) parts of the proxy's CPU µs per request (medians
    /// of their own, so they need not add up to `cpu_us` exactly).
    pub cpu_user_us: Option<f64>,
    pub cpu_sys_us: Option<f64>,
    /// KiB upkeep spliced per request (median over rounds).
    pub spliced_kib: Option<f64>,
    pub rss_mb: Option<f64>,
    pub upstream_conns: f64,
    pub conns_per_100k: f64,
    pub tw_new: f64,
    pub tw_after: f64,
    /// Errors summed over the rounds.
    pub errors: u64,
    pub backend_us: Option<f64>,
    pub idle_pct: Option<f64>,
    pub others_pct: Option<f64>,
    /// Medians of the per-round ratios to [`REFERENCE`] (None without a reference run).
    pub rps_ratio: Option<f64>,
    pub p50_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    pub cpu_ratio: Option<f64>,
    pub rss_ratio: Option<f64>,
    pub conns_ratio: Option<f64>,
    pub tw_ratio: Option<f64>,
}

/// Per-round ratio `f(run) / f(reference run of the same round and case)`, median over rounds.
fn ratio(
    runs: &[&Run],
    refs: &BTreeMap<u32, &Run>,
    f: impl Fn(&Run) -> Option<f64>,
) -> Option<f64> {
    let v: Vec<f64> = runs
        .iter()
        .filter_map(|r| {
            let base = f(refs.get(&r.row.round)?)?;
            let v = f(r)?;
            (base > 0.0).then_some(v / base)
        })
        .collect();
    median(v)
}

/// Medians and ratios per case (in first-seen order) and target (in first-seen order).
pub fn summarize(runs: &[Run]) -> Vec<(Case, Vec<(String, Summary)>)> {
    let mut cases: Vec<Case> = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    for r in runs {
        let case = (r.row.scenario.clone(), r.row.body.clone());
        if !cases.contains(&case) {
            cases.push(case);
        }
        if !targets.contains(&r.row.target) {
            targets.push(r.row.target.clone());
        }
    }
    let mut out = Vec::new();
    for case in cases {
        let of = |t: &str| -> Vec<&Run> {
            runs.iter()
                .filter(|r| r.row.scenario == case.0 && r.row.body == case.1 && r.row.target == t)
                .collect()
        };
        let refs: BTreeMap<u32, &Run> = of(REFERENCE)
            .into_iter()
            .map(|r| (r.row.round, r))
            .collect();
        let mut rows = Vec::new();
        for t in &targets {
            let rs = of(t);
            if rs.is_empty() {
                continue;
            }
            let med =
                |f: &dyn Fn(&Run) -> Option<f64>| median(rs.iter().filter_map(|r| f(r)).collect());
            let s = Summary {
                rounds: rs.len(),
                conns: rs[0].row.conns,
                rps: med(&|r| Some(r.wrk.rps)).unwrap_or(0.0),
                p50_ms: med(&|r| Some(r.wrk.p50_ms)).unwrap_or(0.0),
                p99_ms: med(&|r| Some(r.wrk.p99_ms)).unwrap_or(0.0),
                cpu_us: med(&|r| r.cpu_us_per_req()),
                cpu_user_us: med(&|r| r.cpu_user_us_per_req()),
                cpu_sys_us: med(&|r| r.cpu_sys_us_per_req()),
                spliced_kib: med(&|r| r.spliced_kib_per_req()),
                rss_mb: med(&|r| r.row.rss_kb.map(|k| k as f64 / 1024.0)),
                upstream_conns: med(&|r| Some(r.row.upstream_conns as f64)).unwrap_or(0.0),
                conns_per_100k: med(&|r| Some(r.conns_per_100k())).unwrap_or(0.0),
                tw_new: med(&|r| Some(r.row.tw_new as f64)).unwrap_or(0.0),
                tw_after: med(&|r| Some(r.row.tw_after as f64)).unwrap_or(0.0),
                errors: rs.iter().map(|r| r.wrk.errors).sum(),
                backend_us: med(&|r| r.backend_us_per_req()),
                idle_pct: med(&|r| r.idle_pct()),
                others_pct: med(&|r| r.others_pct()),
                rps_ratio: ratio(&rs, &refs, |r| Some(r.wrk.rps)),
                p50_ratio: ratio(&rs, &refs, |r| Some(r.wrk.p50_ms)),
                p99_ratio: ratio(&rs, &refs, |r| Some(r.wrk.p99_ms)),
                cpu_ratio: ratio(&rs, &refs, Run::cpu_us_per_req),
                rss_ratio: ratio(&rs, &refs, |r| r.row.rss_kb.map(|k| k as f64)),
                conns_ratio: ratio(&rs, &refs, |r| Some(r.row.upstream_conns as f64)),
                tw_ratio: ratio(&rs, &refs, |r| Some(r.row.tw_new as f64)),
            };
            rows.push((t.clone(), s));
        }
        out.push((case, rows));
    }
    out
}

/// `12,345` style thousands separators.
fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut s = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            s.push(',');
        }
        s.push(c);
    }
    if n < 0 { format!("-{s}") } else { s }
}

fn fixed(v: Option<f64>, places: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.places$}"))
}

/// "value (ratio)" cell; the ratio is omitted when unknown.
fn cell(value: String, ratio: Option<f64>) -> String {
    match ratio {
        Some(r) => format!("{value} ({r:.2})"),
        None => value,
    }
}

/// The results table: one block per case, one row per target, each figure followed by its
/// ratio to [`REFERENCE`] from the same round (median over rounds).
pub fn markdown(summary: &[(Case, Vec<(String, Summary)>)]) -> String {
    let mut s = String::new();
    s.push_str(
        "| scenario | body | clients | target | req/s | p50 ms | p99 ms | proxy CPU µs/req | user µs/req | sys µs/req | peak RSS MiB | upstream conns opened | per 100k req | new TIME_WAIT | TIME_WAIT after | errors | backend CPU µs/req | idle % | others % | spliced KiB/req |\n",
    );
    s.push_str(
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for ((scenario, body), rows) in summary {
        for (target, x) in rows {
            let _ = writeln!(
                s,
                "| {scenario} | {body} | {} | {target} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                x.conns,
                cell(thousands(x.rps), x.rps_ratio),
                cell(format!("{:.2}", x.p50_ms), x.p50_ratio),
                cell(format!("{:.2}", x.p99_ms), x.p99_ratio),
                cell(fixed(x.cpu_us, 1), x.cpu_ratio),
                fixed(x.cpu_user_us, 1),
                fixed(x.cpu_sys_us, 1),
                cell(fixed(x.rss_mb, 1), x.rss_ratio),
                cell(thousands(x.upstream_conns), x.conns_ratio),
                thousands(x.conns_per_100k),
                cell(thousands(x.tw_new), x.tw_ratio),
                thousands(x.tw_after),
                x.errors,
                fixed(x.backend_us, 1),
                fixed(x.idle_pct, 0),
                fixed(x.others_pct, 0),
                fixed(x.spliced_kib, 1),
            );
        }
    }
    s
}

/// One of the targets, checked against a summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub what: String,
    pub measured: String,
    pub pass: bool,
}

/// Per-round ratios `f(a) / f(b)` between two targets of one case (rounds where both ran),
/// and their median.
fn round_ratios(
    runs: &[Run],
    case: &Case,
    a: &str,
    b: &str,
    f: impl Fn(&Run) -> Option<f64>,
) -> Option<(f64, Vec<f64>)> {
    let of = |t: &str| -> BTreeMap<u32, &Run> {
        runs.iter()
            .filter(|r| r.row.scenario == case.0 && r.row.body == case.1 && r.row.target == t)
            .map(|r| (r.row.round, r))
            .collect()
    };
    let (ra, rb) = (of(a), of(b));
    let v: Vec<f64> = ra
        .iter()
        .filter_map(|(round, x)| {
            let base = f(rb.get(round)?)?;
            (base > 0.0).then_some(f(x)? / base)
        })
        .collect();
    Some((median(v.clone())?, v))
}

fn per_round(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
    format!("per round {}", parts.join(", "))
}

/// The load targets for upkeep (with pooling), each as the median of per-round ratios
/// (so a round disturbed by another workload does not pick the comparison): on keep-alive
/// clients against the strongest peer (the one upkeep's req/s ratio is lowest against), on
/// 64 KiB bodies against direct-to-backend, and upstream connection churn in every scenario
/// (the worst round).
pub fn checks(runs: &[Run]) -> Vec<Check> {
    let mut cases: Vec<Case> = Vec::new();
    for r in runs {
        let case = (r.row.scenario.clone(), r.row.body.clone());
        if !cases.contains(&case) {
            cases.push(case);
        }
    }
    let rps = |r: &Run| Some(r.wrk.rps);
    let mut out = Vec::new();
    for case in &cases {
        let ups: Vec<&Run> = runs
            .iter()
            .filter(|r| r.row.scenario == case.0 && r.row.body == case.1 && r.row.target == UPKEEP)
            .collect();
        if ups.is_empty() {
            continue;
        }
        let name = format!("{}/{}", case.0, case.1);
        let strongest = PEERS
            .iter()
            .filter_map(|p| round_ratios(runs, case, UPKEEP, p, rps).map(|r| (*p, r)))
            .min_by(|a, b| a.1.0.total_cmp(&b.1.0));
        if case.0 == "keepalive"
            && let Some((peer, (r, v))) = strongest
        {
            out.push(Check {
                what: format!("{name}: req/s ≥ 1.2 × the strongest peer ({peer})"),
                measured: format!("{r:.2}× ({})", per_round(&v)),
                pass: r >= 1.2,
            });
            if let Some((r, v)) = round_ratios(runs, case, UPKEEP, peer, Run::cpu_us_per_req) {
                out.push(Check {
                    what: format!("{name}: CPU/req ≤ 0.8 × {peer}"),
                    measured: format!("{r:.2}× ({})", per_round(&v)),
                    pass: r <= 0.8,
                });
            }
        }
        if case.1 == "64k"
            && let Some((r, v)) = round_ratios(runs, case, UPKEEP, "direct", rps)
        {
            out.push(Check {
                what: format!("{name}: req/s ≥ 0.9 × direct to backend"),
                measured: format!("{r:.2}× ({})", per_round(&v)),
                pass: r >= 0.9,
            });
        }
        let clients = ups[0].row.conns;
        let worst = ups.iter().map(|r| r.conns_per_100k()).fold(0.0, f64::max);
        out.push(Check {
            what: format!("{name}: upstream conns per 100k requests ≤ 2 × {clients} clients"),
            measured: format!("{worst:.1} (worst round)"),
            pass: worst <= 2.0 * f64::from(clients),
        });
    }
    out
}

/// The splice comparison: for every case and [`SPLICE_PAIRS`] pair that both ran, the medians
/// of the per-round ratios splicing ÷ copying of req/s and of the proxy's CPU, user and system
/// µs per request. Empty when no pair ran.
pub fn splice_markdown(runs: &[Run]) -> String {
    let mut cases: Vec<Case> = Vec::new();
    for r in runs {
        let case = (r.row.scenario.clone(), r.row.body.clone());
        if !cases.contains(&case) {
            cases.push(case);
        }
    }
    let ratio = |case: &Case, a: &str, b: &str, f: fn(&Run) -> Option<f64>| {
        round_ratios(runs, case, a, b, f).map_or("-".to_string(), |(r, _)| format!("{r:.2}"))
    };
    let mut s = String::new();
    for case in &cases {
        for (splice, copy) in SPLICE_PAIRS {
            if round_ratios(runs, case, splice, copy, |r| Some(r.wrk.rps)).is_none() {
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {} | {splice} ÷ {copy} | {} | {} | {} | {} |",
                case.0,
                case.1,
                ratio(case, splice, copy, |r| Some(r.wrk.rps)),
                ratio(case, splice, copy, Run::cpu_us_per_req),
                ratio(case, splice, copy, Run::cpu_user_us_per_req),
                ratio(case, splice, copy, Run::cpu_sys_us_per_req),
            );
        }
    }
    if s.is_empty() {
        return s;
    }
    format!(
        "| scenario | body | splicing ÷ copying | req/s | proxy CPU µs/req | user µs/req | sys µs/req |\n\
         |---|---|---|---|---|---|---|\n{s}"
    )
}

/// The checks as a markdown list.
pub fn checks_markdown(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let mark = if c.pass { "met" } else { "**missed**" };
        let _ = writeln!(s, "- {mark}: {} — measured {}", c.what, c.measured);
    }
    s
}

pub mod chart;

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://127.0.0.1:19082/small
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.40ms    1.02ms  40.11ms   91.00%
    Req/Sec    26.80k     1.90k   30.12k    70.00%
  Latency Distribution
     50%    2.34ms
     75%    2.60ms
     90%    3.01ms
     99%  812.00us
  133372 requests in 5.00s, 30.27MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  26674.40
Transfer/sec:      6.05MB
";

    #[test]
    fn wrk_output_is_parsed() {
        let w = parse_wrk(WRK).unwrap();
        assert_eq!(w.requests, 133_372);
        assert!((w.rps - 26_674.40).abs() < 1e-9);
        assert!((w.p50_ms - 2.34).abs() < 1e-9);
        assert!((w.p99_ms - 0.812).abs() < 1e-9);
        assert_eq!(w.errors, 9);
        assert_eq!(
            parse_wrk("unable to connect to 127.0.0.1:1 Connection refused"),
            None
        );
        assert_eq!(millis("1.50s"), Some(1500.0));
    }

    fn row(round: u32, target: &str, cpu: Option<u64>, conns: u64) -> RunRow {
        RunRow {
            round,
            scenario: "keepalive".into(),
            body: "small".into(),
            target: target.into(),
            conns: 64,
            wrk_file: String::new(),
            cpu_ticks: cpu,
            clk_tck: 100,
            rss_kb: cpu.map(|_| 2048),
            upstream_conns: conns,
            tw_new: 0,
            tw_after: 0,
            duration_s: 5,
            backend_ticks: 50,
            wrk_ticks: 200,
            machine_busy_ticks: 600,
            machine_idle_ticks: 400,
            cpu_user_ticks: cpu.map(|c| c * 3 / 4),
            cpu_sys_ticks: cpu.map(|c| c - c * 3 / 4),
            spliced_bytes: None,
        }
    }

    fn run(round: u32, target: &str, rps: f64, cpu: Option<u64>, conns: u64) -> Run {
        Run {
            row: row(round, target, cpu, conns),
            wrk: Wrk {
                requests: (rps * 5.0) as u64,
                rps,
                p50_ms: 1.0,
                p99_ms: 2.0,
                errors: 0,
            },
        }
    }

    #[test]
    fn ratios_are_taken_per_round_then_medianed() {
        let runs = vec![
            run(0, "nginx-keep", 10_000.0, Some(100), 64),
            run(0, "upkeep", 30_000.0, Some(100), 64),
            run(1, "nginx-keep", 20_000.0, Some(100), 64),
            run(1, "upkeep", 30_000.0, Some(100), 64),
            run(2, "nginx-keep", 15_000.0, Some(100), 64),
            run(2, "upkeep", 60_000.0, Some(100), 64),
        ];
        let s = summarize(&runs);
        let (_, rows) = &s[0];
        let up = &rows.iter().find(|(t, _)| t == "upkeep").unwrap().1;
        // Per-round ratios 3.0, 1.5, 4.0 → median 3.0 (the ratio of medians would be 2.0).
        assert_eq!(up.rps_ratio, Some(3.0));
        assert_eq!(up.rps, 30_000.0);
        // 100 ticks = 1 s of CPU over 150,000 requests.
        assert!((up.cpu_us.unwrap() - 1e6 / 150_000.0).abs() < 1e-9);
        // 600 busy ticks - (100 + 50 + 200) ours = 250 ticks over 500 ticks of one CPU.
        assert_eq!(up.others_pct, Some(50.0));
        assert_eq!(up.idle_pct, Some(40.0));
        let table = markdown(&s);
        assert!(
            table.contains("| keepalive | small | 64 | upkeep | 30,000 (3.00) |"),
            "{table}"
        );
        let c = checks(&runs);
        assert!(
            c.iter()
                .any(|c| c.what.contains("1.2 × the strongest peer (nginx-keep)") && c.pass)
        );
        // 64 conns over 150k requests = 42.7 per 100k ≤ 128.
        assert!(c.iter().any(|c| c.what.contains("per 100k") && c.pass));
    }

    #[test]
    fn csv_round_trips_with_missing_proxy_columns() {
        let text = format!(
            "{CSV_HEADER}\n0,keepalive,small,direct,64,wrk/x.txt,-,100,-,65,0,12,5,40,200,700,300,-,-,-\n\
             0,keepalive,1m,upkeep,64,wrk/y.txt,250,100,4096,2,0,12,5,40,200,700,300,60,190,1073741824\n"
        );
        let rows = parse_csv(&text).unwrap();
        assert_eq!(rows[0].cpu_ticks, None);
        assert_eq!(rows[0].cpu_user_ticks, None);
        assert_eq!(rows[0].cpu_sys_ticks, None);
        assert_eq!(rows[0].spliced_bytes, None);
        assert_eq!(rows[0].upstream_conns, 65);
        assert_eq!(rows[1].cpu_ticks, Some(250));
        assert_eq!(rows[1].cpu_user_ticks, Some(60));
        assert_eq!(rows[1].cpu_sys_ticks, Some(190));
        assert_eq!(rows[1].spliced_bytes, Some(1 << 30));
        assert!(parse_csv("bad header\n").is_err());
        // The old row length under the new header (and the reverse) is refused.
        let short = format!(
            "{CSV_HEADER}\n0,keepalive,small,direct,64,wrk/x.txt,-,100,-,65,0,12,5,40,200,700,300\n"
        );
        assert!(
            parse_csv(&short)
                .unwrap_err()
                .contains("17 fields, expected 20")
        );
        let long = format!(
            "{CSV_HEADER_V1}\n0,keepalive,small,direct,64,wrk/x.txt,-,100,-,65,0,12,5,40,200,700,300,-,-,-\n"
        );
        assert!(
            parse_csv(&long)
                .unwrap_err()
                .contains("20 fields, expected 17")
        );
    }

    #[test]
    fn csv_from_before_the_cpu_split_is_read() {
        let text = format!(
            "{CSV_HEADER_V1}\n0,keepalive,small,upkeep,64,wrk/x.txt,120,100,2048,2,0,12,5,40,200,700,300\n"
        );
        let rows = parse_csv(&text).unwrap();
        assert_eq!(rows[0].cpu_ticks, Some(120));
        assert_eq!(
            (
                rows[0].cpu_user_ticks,
                rows[0].cpu_sys_ticks,
                rows[0].spliced_bytes
            ),
            (None, None, None)
        );
        assert!(CSV_HEADER.starts_with(CSV_HEADER_V1));
        // The committed results (whichever header they were written with) still parse.
        let committed = include_str!("../load/results/runs.csv");
        let rows = parse_csv(committed).unwrap();
        assert!(rows.iter().any(|r| r.target == "upkeep"));
    }

    #[test]
    fn user_and_system_cpu_and_spliced_bytes_are_per_request() {
        let mut runs = Vec::new();
        for round in 0..3 {
            // 200 ticks at 100 Hz = 2 s of CPU: 0.5 s user + 1.5 s system, over 100,000
            // requests (20,000 req/s for 5 s); 1 MiB spliced per request, the last round half.
            let mut r = run(round, "upkeep", 20_000.0, Some(200), 2);
            r.row.body = "1m".into();
            r.row.cpu_user_ticks = Some(50);
            r.row.cpu_sys_ticks = Some(150);
            let per_req = if round == 2 { 512 * 1024 } else { 1 << 20 };
            r.row.spliced_bytes = Some(per_req * r.wrk.requests);
            runs.push(r);
            let mut copy = run(round, "upkeep-copy", 10_000.0, Some(200), 2);
            copy.row.body = "1m".into();
            copy.row.spliced_bytes = Some(0);
            runs.push(copy);
            let mut direct = run(round, "direct", 30_000.0, None, 64);
            direct.row.body = "1m".into();
            runs.push(direct);
        }
        let s = summarize(&runs);
        let rows = &s[0].1;
        let get = |t: &str| &rows.iter().find(|(n, _)| n == t).unwrap().1;
        let up = get("upkeep");
        assert!((up.cpu_us.unwrap() - 20.0).abs() < 1e-9);
        assert!((up.cpu_user_us.unwrap() - 5.0).abs() < 1e-9);
        assert!((up.cpu_sys_us.unwrap() - 15.0).abs() < 1e-9);
        assert_eq!(up.spliced_kib, Some(1024.0));
        let copy = get("upkeep-copy");
        // 200 ticks split 150 + 50 by the helper, over 50,000 requests.
        assert!((copy.cpu_user_us.unwrap() - 30.0).abs() < 1e-9);
        assert!((copy.cpu_sys_us.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(copy.spliced_kib, Some(0.0));
        let direct = get("direct");
        assert_eq!(
            (direct.cpu_user_us, direct.cpu_sys_us, direct.spliced_kib),
            (None, None, None)
        );
        let table = markdown(&s);
        assert!(
            table.contains("| proxy CPU µs/req | user µs/req | sys µs/req |")
                && table.contains("| spliced KiB/req |\n"),
            "{table}"
        );
        assert!(
            table.contains("| upkeep | 20,000 | 1.00 | 2.00 | 20.0 | 5.0 | 15.0 |"),
            "{table}"
        );
        assert!(table.contains("| 1024.0 |\n"), "{table}");
        assert!(
            table.contains("| upkeep-copy | 10,000 | 1.00 | 2.00 | 40.0 | 30.0 | 10.0 |"),
            "{table}"
        );
        assert!(
            table.contains("| direct | 30,000 | 1.00 | 2.00 | - | - | - |"),
            "{table}"
        );
        // Every row has as many cells as the header.
        let cells = |l: &str| l.matches('|').count();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines.iter().all(|l| cells(l) == cells(lines[0])), "{table}");
        // Splicing ÷ copying, per round: req/s 2.00, CPU 20 / 40 µs, user 5 / 30, sys 15 / 10.
        let splice = splice_markdown(&runs);
        assert!(
            splice
                .contains("| keepalive | 1m | upkeep ÷ upkeep-copy | 2.00 | 0.50 | 0.17 | 1.50 |"),
            "{splice}"
        );
        assert!(!splice.contains("haproxy"), "{splice}");
        assert_eq!(splice_markdown(&runs[2..3]), "");
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), Some(2.5));
    }
}
