//! The soak's records, and the accounting at its end: what each function
//! must have done with each record, against what the reader saw.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use crate::{Fault, Injected};

/// The header carrying a record's number, which outputs and dead letters
/// keep (runnel copies the input's headers).
pub const SEQ: &str = "soak-seq";

/// The filter keeps records whose `v` is at least 1, and dead-letters those
/// without a number `v` (or that are not JSON).
pub const FILTER_CONFIG: [(&str, &str); 3] =
    [("field", "v"), ("min", "1"), ("on-missing", "error")];

/// The three deployments' functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Function {
    /// The identity map: every record out.
    Map,
    /// The threshold filter: `v >= 1` out, `v == 0` dropped, not JSON to
    /// the dead letters.
    Filter,
    /// The echo scorer: every record whose value is UTF-8 out, with the
    /// model as a prefix; the others to the dead letters.
    Scorer,
}

impl Function {
    pub fn name(self) -> &'static str {
        match self {
            Function::Map => "map",
            Function::Filter => "filter",
            Function::Scorer => "scorer",
        }
    }

    pub fn module(self) -> &'static str {
        use runnel_tests::guests;
        match self {
            Function::Map => guests::IDENTITY_MAP,
            Function::Filter => guests::THRESHOLD_FILTER,
            Function::Scorer => guests::ECHO_SCORER,
        }
    }

    /// Where record `n` must go: to the output, to the dead letters, or
    /// nowhere (filtered out).
    pub fn route(self, n: u64) -> Route {
        match self {
            Function::Map => Route::Output,
            _ if not_json(n) => Route::DeadLetter,
            Function::Filter if n.is_multiple_of(10) => Route::Dropped,
            _ => Route::Output,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Output,
    DeadLetter,
    Dropped,
}

/// Every 7th record's value is neither JSON nor UTF-8.
fn not_json(n: u64) -> bool {
    n % 7 == 3
}

/// Record `n`'s key and value. Keys repeat (64 of them), as a keyed stream's do.
pub fn record(n: u64) -> (String, Vec<u8>) {
    let key = format!("k{}", n % 64);
    let value = if not_json(n) {
        let mut v = b"\xff\xfe not json ".to_vec();
        v.extend_from_slice(n.to_string().as_bytes());
        v
    } else {
        format!("{{\"n\":{n},\"v\":{}}}", n % 10).into_bytes()
    };
    (key, value)
}

/// A record's number: from its header, or from the JSON in its value (the
/// scorer's outputs carry only the function's headers).
pub fn seq_of(header: Option<&str>, value: Option<&[u8]>) -> Option<u64> {
    if let Some(h) = header {
        return h.parse().ok();
    }
    let value = value?;
    let json = &value[value.iter().position(|&b| b == b'{')?..];
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()?
        .get("n")?
        .as_u64()
}

/// A record the soak produced: where it landed once acknowledged (`None`:
/// its delivery failed, though it may have been written).
#[derive(Debug, Clone)]
pub struct Sent {
    pub landed: Option<(i32, i64)>,
}

/// A record the reader saw on an output or dead-letter topic.
#[derive(Debug, Clone)]
pub struct Observed {
    pub at: Duration,
    pub function: Function,
    /// On the dead-letter topic.
    pub dead: bool,
    pub seq: Option<u64>,
    pub version: Option<u32>,
    /// `runnel-error-kind`, on a dead letter.
    pub kind: Option<String>,
}

/// How many (function, record) pairs that must have arrived have not.
pub fn missing(
    sent: &BTreeMap<u64, Sent>,
    observed: &[Observed],
    functions: &[(String, Function)],
) -> usize {
    let seen: BTreeSet<(Function, bool, u64)> = observed
        .iter()
        .filter_map(|o| Some((o.function, o.dead, o.seq?)))
        .collect();
    functions
        .iter()
        .map(|(_, f)| {
            sent.iter()
                .filter(|(_, s)| s.landed.is_some())
                .filter(|&(&n, _)| match f.route(n) {
                    Route::Output => !seen.contains(&(*f, false, n)),
                    Route::DeadLetter => !seen.contains(&(*f, true, n)),
                    Route::Dropped => false,
                })
                .count()
        })
        .sum()
}

#[derive(Debug, Default)]
pub struct Report {
    pub text: String,
    pub failures: Vec<String>,
}

/// Every record accounted for, per function, and the faults' effects.
pub fn account(
    sent: &BTreeMap<u64, Sent>,
    observed: &[Observed],
    functions: &[(String, Function)],
    injected: &[Injected],
    produced_until: Duration,
) -> Report {
    let mut r = Report::default();
    let acked = sent.values().filter(|s| s.landed.is_some()).count();
    let _ = writeln!(
        r.text,
        "\nrecords produced: {} ({acked} acknowledged, {} not acknowledged)",
        sent.len(),
        sent.len() - acked
    );
    let _ = writeln!(
        r.text,
        "\n{:<8} {:>9} {:>8} {:>5} {:>6} {:>9} {:>8} {:>5} {:>6} {:>8} {:>7} {:>8}",
        "function",
        "want out",
        "out",
        "lost",
        "dups",
        "want dlq",
        "dlq",
        "lost",
        "dups",
        "dropped",
        "wrong",
        "v-moves"
    );

    // The duplicate arrivals, for the per-fault table.
    let mut duplicate_times: Vec<Duration> = Vec::new();
    for (name, f) in functions {
        let mine: Vec<&Observed> = observed.iter().filter(|o| o.function == *f).collect();
        let mut first: BTreeMap<(bool, u64), &Observed> = BTreeMap::new();
        let (mut dups, mut dlq_dups) = (0usize, 0usize);
        let mut wrong: Vec<String> = Vec::new();
        for o in &mine {
            let Some(n) = o.seq else {
                wrong.push(format!(
                    "an {} without a record number",
                    if o.dead { "dead letter" } else { "output" }
                ));
                continue;
            };
            if !sent.contains_key(&n) {
                wrong.push(format!("record {n} came out but was never produced"));
                continue;
            }
            let want = f.route(n);
            let ok = match (o.dead, want) {
                (false, Route::Output) => true,
                (true, Route::DeadLetter) => o.kind.as_deref() == Some("error"),
                _ => false,
            };
            if !ok {
                wrong.push(format!(
                    "record {n} went to the {} (kind {:?}) but the function routes it {:?}",
                    if o.dead { "dead letters" } else { "output" },
                    o.kind,
                    want
                ));
            }
            if first.insert((o.dead, n), o).is_some() {
                duplicate_times.push(o.at);
                if o.dead {
                    dlq_dups += 1;
                } else {
                    dups += 1;
                }
            }
        }
        let (mut want_out, mut want_dlq, mut dropped, mut lost, mut lost_dlq) = (0, 0, 0, 0, 0);
        let mut lost_examples = Vec::new();
        for (&n, s) in sent {
            if s.landed.is_none() {
                continue; // not promised: may or may not have been written
            }
            match f.route(n) {
                Route::Output => {
                    want_out += 1;
                    if !first.contains_key(&(false, n)) {
                        lost += 1;
                        lost_examples.push(n);
                    }
                }
                Route::DeadLetter => {
                    want_dlq += 1;
                    if !first.contains_key(&(true, n)) {
                        lost_dlq += 1;
                        lost_examples.push(n);
                    }
                }
                Route::Dropped => dropped += 1,
            }
        }
        let moves = version_moves(sent, &first);
        let outs = first.keys().filter(|(d, _)| !d).count();
        let dlqs = first.len() - outs;
        let _ = writeln!(
            r.text,
            "{:<8} {want_out:>9} {outs:>8} {lost:>5} {dups:>6} {want_dlq:>9} {dlqs:>8} {lost_dlq:>5} {dlq_dups:>6} {dropped:>8} {:>7} {moves:>8}",
            f.name(),
            wrong.len()
        );
        if lost + lost_dlq > 0 {
            lost_examples.truncate(10);
            r.failures.push(format!(
                "{name} ({}) lost {lost} outputs and {lost_dlq} dead letters, e.g. records {lost_examples:?}",
                f.name()
            ));
        }
        if !wrong.is_empty() {
            r.failures.push(format!(
                "{name} ({}): {} records where the function would not put them, e.g. {}",
                f.name(),
                wrong.len(),
                wrong[..wrong.len().min(3)].join("; ")
            ));
        }
    }
    let _ = writeln!(
        r.text,
        "(dups: arrivals after the first; wrong: an output or dead letter the function would not make; v-moves: a record run by an older version than one before it in its partition, when a partition moves to a node that has not swapped yet)"
    );

    // Per fault kind: how many, the duplicates that arrived after one (the
    // latest fault before each), and the longest time without any output
    // of the map in the minute after one.
    let mut arrivals: BTreeMap<i32, Vec<Duration>> = BTreeMap::new();
    for o in observed
        .iter()
        .filter(|o| o.function == Function::Map && !o.dead)
    {
        if let Some((p, _)) = o.seq.and_then(|n| sent.get(&n)?.landed) {
            arrivals.entry(p).or_default().push(o.at);
        }
    }
    for a in arrivals.values_mut() {
        a.sort();
    }
    let mut by_kind: BTreeMap<Fault, (usize, usize, Duration)> = BTreeMap::new();
    for (i, f) in injected.iter().enumerate() {
        let end = injected
            .get(i + 1)
            .map_or(f.at + Duration::from_secs(60), |g| {
                g.at.max(f.at + Duration::from_secs(5))
            })
            .min(f.at + Duration::from_secs(60))
            .min(produced_until);
        let e = by_kind.entry(f.fault).or_default();
        e.0 += 1;
        if end > f.at {
            for a in arrivals.values() {
                e.2 = e.2.max(largest_gap(a, f.at, end));
            }
        }
    }
    for t in &duplicate_times {
        if let Some(f) = injected.iter().rev().find(|f| f.at <= *t) {
            by_kind.entry(f.fault).or_default().1 += 1;
        }
    }
    let _ = writeln!(
        r.text,
        "\n{:<22} {:>8} {:>11} {:>16}",
        "fault", "injected", "duplicates", "largest gap (s)"
    );
    for (kind, (count, dups, gap)) in &by_kind {
        let _ = writeln!(
            r.text,
            "{:<22} {count:>8} {dups:>11} {:>16.1}",
            kind.name(),
            gap.as_secs_f64()
        );
    }
    let _ = writeln!(
        r.text,
        "(duplicates: counted against the latest fault before each arrived; largest gap: the longest time an input partition went without a map output, in the minute after the fault or until the next one)"
    );
    r
}

/// The longest time in `[from, to]` with no arrival.
fn largest_gap(arrivals: &[Duration], from: Duration, to: Duration) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for &a in arrivals.iter().filter(|&&a| a > from && a <= to) {
        gap = gap.max(a - last);
        last = a;
    }
    gap.max(to - last)
}

/// Records run by an older version than a record before them in their
/// input partition (first arrivals only).
fn version_moves(sent: &BTreeMap<u64, Sent>, first: &BTreeMap<(bool, u64), &Observed>) -> usize {
    let mut by_partition: BTreeMap<i32, Vec<(i64, u32)>> = BTreeMap::new();
    for (&(dead, n), o) in first {
        let (Some((p, offset)), Some(v), false) =
            (sent.get(&n).and_then(|s| s.landed), o.version, dead)
        else {
            continue;
        };
        by_partition.entry(p).or_default().push((offset, v));
    }
    by_partition
        .values_mut()
        .map(|records| {
            records.sort();
            let mut highest = 0;
            let mut moves = 0;
            for &(_, v) in records.iter() {
                if v < highest {
                    moves += 1;
                }
                highest = highest.max(v);
            }
            moves
        })
        .sum()
}
