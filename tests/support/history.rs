//! A Jepsen/Elle-style history for the randomized fault checker (`tests/fault_checker.rs`):
//! client tasks and the nemesis record [`Event`]s while the run goes on, and [`check`] looks
//! for stale reads afterwards, as a pure function over the history.
//!
//! Times are nanoseconds since the run's start, on the monotonic clock ([`Recorder::now`]).
//!
//! **The rule.** A read `r` of key `k` is a violation if some acknowledged invalidation `a` of
//! `k` carried a newer version than `r` returned (`a.version > r.version`) and `r` began more
//! than `bound` after `a` was acknowledged (`a.at + bound < r.start`): the read started after
//! the invalidation had been given time to reach every instance and still returned an older
//! version.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One thing that happened during a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A read through one instance returned `version` of `key`.
    Read {
        instance: usize,
        key: usize,
        version: u64,
        start: u64,
        end: u64,
        /// Where the value came from (`Local`, `Redis`, `Loader`, `Stale`).
        origin: &'static str,
        /// Whether the reading instance used Redis when the read began (its breaker closed).
        redis_in_use: bool,
        /// One of the reads made after the last fault healed and the caches settled.
        final_read: bool,
    },
    /// A read that had not returned after the checker's hang limit.
    Hung {
        instance: usize,
        key: usize,
        start: u64,
        end: u64,
    },
    /// A mutation began: the origin now holds these versions, and the instance is about to
    /// invalidate them (by key, or by `tag`).
    Mutate {
        instance: usize,
        keys: Vec<(usize, u64)>,
        tag: Option<String>,
        at: u64,
    },
    /// The invalidation of `key` at `version` returned on `instance` (`outcome`: how Redis
    /// took it, `Applied` or `Journaled`).
    Ack {
        instance: usize,
        key: usize,
        version: u64,
        at: u64,
        outcome: &'static str,
    },
    /// The nemesis injected a fault.
    FaultStart {
        id: u64,
        kind: &'static str,
        detail: String,
        at: u64,
    },
    /// The nemesis healed fault `id`.
    FaultEnd {
        id: u64,
        kind: &'static str,
        at: u64,
    },
    /// Anything else worth seeing in a history (a snapshot taken, a promotion seen).
    Note { text: String, at: u64 },
}

impl Event {
    /// When it happened (a read's start).
    pub fn at(&self) -> u64 {
        match self {
            Event::Read { start, .. } | Event::Hung { start, .. } => *start,
            Event::Mutate { at, .. }
            | Event::Ack { at, .. }
            | Event::FaultStart { at, .. }
            | Event::FaultEnd { at, .. }
            | Event::Note { at, .. } => *at,
        }
    }

    /// One line for a report.
    pub fn describe(&self) -> String {
        match self {
            Event::Read {
                instance,
                key,
                version,
                start,
                end,
                origin,
                redis_in_use,
                final_read,
            } => format!(
                "{} read   i{instance} k{key} -> v{version} ({origin}, {:.1} ms{}{})",
                ms(*start),
                (end - start) as f64 / 1e6,
                if *redis_in_use { "" } else { ", redis off" },
                if *final_read { ", final" } else { "" }
            ),
            Event::Hung {
                instance,
                key,
                start,
                end,
            } => format!(
                "{} HUNG   i{instance} k{key} for {:.0} ms",
                ms(*start),
                (end - start) as f64 / 1e6
            ),
            Event::Mutate {
                instance,
                keys,
                tag,
                at,
            } => {
                let keys: Vec<String> = keys.iter().map(|(k, v)| format!("k{k}=v{v}")).collect();
                let by = tag
                    .as_ref()
                    .map_or_else(|| "key".to_owned(), |t| format!("tag {t}"));
                format!(
                    "{} mutate i{instance} {} (invalidate by {by})",
                    ms(*at),
                    keys.join(" ")
                )
            }
            Event::Ack {
                instance,
                key,
                version,
                at,
                outcome,
            } => format!(
                "{} ack    i{instance} k{key} v{version} ({outcome})",
                ms(*at)
            ),
            Event::FaultStart {
                id,
                kind,
                detail,
                at,
            } => format!("{} FAULT  #{id} {kind} {detail}", ms(*at)),
            Event::FaultEnd { id, kind, at } => format!("{} HEALED #{id} {kind}", ms(*at)),
            Event::Note { text, at } => format!("{} note   {text}", ms(*at)),
        }
    }
}

/// `t` (ns since the start) as `+12.345s`.
pub fn ms(t: u64) -> String {
    format!("+{:.3}s", t as f64 / 1e9)
}

/// The shared, append-only history of one run. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    t0: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// A history whose clock starts now.
    pub fn new() -> Self {
        Recorder {
            t0: Instant::now(),
            events: Arc::default(),
        }
    }

    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// `instant` as nanoseconds since the start.
    pub fn at(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.t0).as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn push(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }

    pub fn note(&self, text: impl Into<String>) {
        self.push(Event::Note {
            text: text.into(),
            at: self.now(),
        });
    }

    /// A copy of the history so far, in time order.
    pub fn snapshot(&self) -> Vec<Event> {
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        events.sort_by_key(Event::at);
        events
    }
}

/// A fault as the history tells it: from its start to its heal (`None`: never healed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpan {
    pub id: u64,
    pub kind: &'static str,
    pub detail: String,
    pub start: u64,
    pub end: Option<u64>,
}

impl FaultSpan {
    /// Whether the fault was active at some moment of `[from, to]`.
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        self.start <= to && self.end.map_or(true, |end| end >= from)
    }

    pub fn describe(&self) -> String {
        let end = self.end.map_or_else(|| "never".to_owned(), ms);
        format!(
            "#{} {} {} [{} .. {}]",
            self.id,
            self.kind,
            self.detail,
            ms(self.start),
            end
        )
    }
}

/// The faults of a history, in the order they started.
pub fn fault_spans(history: &[Event]) -> Vec<FaultSpan> {
    let mut spans: Vec<FaultSpan> = Vec::new();
    for event in history {
        match event {
            Event::FaultStart {
                id,
                kind,
                detail,
                at,
            } => spans.push(FaultSpan {
                id: *id,
                kind,
                detail: detail.clone(),
                start: *at,
                end: None,
            }),
            Event::FaultEnd { id, at, .. } => {
                if let Some(span) = spans.iter_mut().find(|s| s.id == *id) {
                    span.end = Some(*at);
                }
            }
            _ => {}
        }
    }
    spans.sort_by_key(|s| s.start);
    spans
}

/// A stale read: see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub instance: usize,
    pub key: usize,
    pub read_version: u64,
    pub read_start: u64,
    pub read_end: u64,
    pub origin: &'static str,
    pub redis_in_use: bool,
    pub final_read: bool,
    /// The earliest acknowledged invalidation the read should have seen.
    pub ack_instance: usize,
    pub ack_version: u64,
    pub ack_at: u64,
    pub ack_outcome: &'static str,
    /// How long after that acknowledgement the read began.
    pub late: Duration,
    /// The latest acknowledged invalidation, past the bound, of a version newer than the read
    /// (the same as the earliest when there was only one): the tightest window on the cause.
    pub latest_ack_instance: usize,
    pub latest_ack_version: u64,
    pub latest_ack_at: u64,
    /// Faults active at some moment between the latest acknowledgement and the read's end.
    pub faults: Vec<FaultSpan>,
    /// The last fault healed before the latest acknowledgement (a cause can come before it:
    /// an invalidation half-applied, a value resurrected).
    pub preceding_fault: Option<FaultSpan>,
    /// The read began more than the bound after every fault had healed: the stale value
    /// outlived the fault, not just the invalidation.
    pub after_heal: bool,
}

impl Violation {
    /// Whether the read breaks the promise of a healthy system: the reader was using Redis,
    /// no fault was active between an invalidation applied to Redis and the read, and the
    /// read began more than the bound after it.
    pub fn breaks_the_healthy_promise(&self) -> bool {
        self.redis_in_use && self.faults.is_empty() && self.ack_outcome == "Applied"
    }

    /// Whether the read breaks the promise after a fault: the reader was using Redis and the
    /// read began more than the bound (given to [`check`]) after every fault had healed.
    pub fn breaks_the_promise_after_heal(&self) -> bool {
        self.redis_in_use && self.after_heal
    }

    /// The fault this violation is counted under in summaries: the first one active between
    /// the latest acknowledgement and the read, else the last one before, else `none`.
    pub fn attributed_to(&self) -> &'static str {
        self.faults
            .first()
            .or(self.preceding_fault.as_ref())
            .map_or("none", |f| f.kind)
    }

    pub fn describe(&self) -> String {
        const SHOWN: usize = 3;
        let mut faults: Vec<String> = self
            .faults
            .iter()
            .take(SHOWN)
            .map(FaultSpan::describe)
            .collect();
        if self.faults.len() > SHOWN {
            faults.push(format!("{} more", self.faults.len() - SHOWN));
        }
        let faults = if faults.is_empty() {
            "none".to_owned()
        } else {
            faults.join("; ")
        };
        let before = self
            .preceding_fault
            .as_ref()
            .map_or_else(|| "none".to_owned(), FaultSpan::describe);
        let latest = if self.latest_ack_at == self.ack_at {
            String::new()
        } else {
            format!(
                "; latest newer ack: i{} v{} at {}, {} ms before",
                self.latest_ack_instance,
                self.latest_ack_version,
                ms(self.latest_ack_at),
                (self.read_start - self.latest_ack_at) / 1_000_000
            )
        };
        format!(
            "i{} read k{} -> v{} at {} ({}{}{}{}), {} ms after i{} acked v{} at {} ({}){latest}; faults since: {}; last before: {}",
            self.instance,
            self.key,
            self.read_version,
            ms(self.read_start),
            self.origin,
            if self.redis_in_use { "" } else { ", redis off" },
            if self.final_read { ", final read" } else { "" },
            if self.after_heal { ", after heal" } else { "" },
            self.late.as_millis(),
            self.ack_instance,
            self.ack_version,
            ms(self.ack_at),
            self.ack_outcome,
            faults,
            before
        )
    }
}

struct AckRef {
    at: u64,
    version: u64,
    instance: usize,
    outcome: &'static str,
}

/// The stale reads of `history` under `bound`; see the module docs. Pure: the same history
/// gives the same answer.
pub fn check(history: &[Event], bound: Duration) -> Vec<Violation> {
    let bound = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    // Per key: acks in time order, with the running maximum of their versions.
    let mut acks: BTreeMap<usize, Vec<AckRef>> = BTreeMap::new();
    for event in history {
        if let Event::Ack {
            instance,
            key,
            version,
            at,
            outcome,
        } = event
        {
            acks.entry(*key).or_default().push(AckRef {
                at: *at,
                version: *version,
                instance: *instance,
                outcome,
            });
        }
    }
    let mut running_max: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (key, list) in &mut acks {
        list.sort_by_key(|a| a.at);
        let mut max = 0;
        running_max.insert(
            *key,
            list.iter()
                .map(|a| {
                    max = max.max(a.version);
                    max
                })
                .collect(),
        );
    }
    let spans = fault_spans(history);
    let mut violations = Vec::new();
    for event in history {
        let Event::Read {
            instance,
            key,
            version,
            start,
            end,
            origin,
            redis_in_use,
            final_read,
        } = event
        else {
            continue;
        };
        let (Some(list), Some(max)) = (acks.get(key), running_max.get(key)) else {
            continue;
        };
        // Acks with `at + bound < start`: a prefix of the list.
        let due = list.partition_point(|a| a.at.saturating_add(bound) < *start);
        if due == 0 || max[due - 1] <= *version {
            continue;
        }
        let Some(ack) = list[..due].iter().find(|a| a.version > *version) else {
            continue;
        };
        let latest = list[..due]
            .iter()
            .rev()
            .find(|a| a.version > *version)
            .unwrap_or(ack);
        let faults: Vec<FaultSpan> = spans
            .iter()
            .filter(|s| s.overlaps(latest.at, *end))
            .cloned()
            .collect();
        let preceding_fault = spans
            .iter()
            .rfind(|s| s.end.is_some_and(|e| e < latest.at))
            .cloned();
        let after_heal = !spans.iter().any(|s| {
            s.start <= *start && s.end.map_or(true, |e| e.saturating_add(bound) >= *start)
        });
        violations.push(Violation {
            instance: *instance,
            key: *key,
            read_version: *version,
            read_start: *start,
            read_end: *end,
            origin,
            redis_in_use: *redis_in_use,
            final_read: *final_read,
            ack_instance: ack.instance,
            ack_version: ack.version,
            ack_at: ack.at,
            ack_outcome: ack.outcome,
            late: Duration::from_nanos(start - ack.at),
            latest_ack_instance: latest.instance,
            latest_ack_version: latest.version,
            latest_ack_at: latest.at,
            faults,
            preceding_fault,
            after_heal,
        });
    }
    violations
}

/// Per fault kind (see [`Violation::attributed_to`]): how many violations, the latest one
/// (ms), how many were final reads, and how many came from each origin.
pub fn summarize(violations: &[Violation]) -> String {
    #[derive(Default)]
    struct Row {
        count: usize,
        max_late_ms: u128,
        finals: usize,
        after_heal: usize,
        after_heal_redis_on: usize,
        redis_off: usize,
        origins: BTreeMap<&'static str, usize>,
        outcomes: BTreeMap<&'static str, usize>,
    }
    let mut rows: BTreeMap<&'static str, Row> = BTreeMap::new();
    for v in violations {
        let row = rows.entry(v.attributed_to()).or_default();
        row.count += 1;
        row.max_late_ms = row.max_late_ms.max(v.late.as_millis());
        row.finals += usize::from(v.final_read);
        row.after_heal += usize::from(v.after_heal);
        row.after_heal_redis_on += usize::from(v.after_heal && v.redis_in_use);
        row.redis_off += usize::from(!v.redis_in_use);
        *row.origins.entry(v.origin).or_default() += 1;
        *row.outcomes.entry(v.ack_outcome).or_default() += 1;
    }
    let mut out = String::new();
    for (kind, row) in rows {
        let _ = writeln!(
            out,
            "  {kind}: {} violations, max {} ms late; {} began past the bound after every fault had healed ({} of them with the reader on Redis), {} final reads, {} with the reader's Redis off; origins {:?}, acks {:?}",
            row.count, row.max_late_ms, row.after_heal, row.after_heal_redis_on, row.finals, row.redis_off, row.origins, row.outcomes
        );
    }
    out
}

/// The events around a violation: faults, and the mutations, acks and reads of its key
/// from `before` ahead of its latest ack to `after` past its read (at most `limit` lines; reads of
/// the key by other instances are left out when there are too many).
pub fn context(
    history: &[Event],
    v: &Violation,
    before: Duration,
    after: Duration,
    limit: usize,
) -> String {
    let from = v
        .latest_ack_at
        .saturating_sub(u64::try_from(before.as_nanos()).unwrap_or(u64::MAX));
    let to = v
        .read_end
        .saturating_add(u64::try_from(after.as_nanos()).unwrap_or(u64::MAX));
    let relevant = |e: &Event, all_reads: bool| match e {
        Event::FaultStart { .. } | Event::FaultEnd { .. } | Event::Note { .. } => true,
        Event::Mutate { keys, .. } => keys.iter().any(|(k, _)| *k == v.key),
        Event::Ack { key, .. } | Event::Hung { key, .. } => *key == v.key,
        Event::Read { key, instance, .. } => {
            *key == v.key && (all_reads || *instance == v.instance)
        }
    };
    let pick = |all_reads: bool| -> Vec<&Event> {
        history
            .iter()
            .filter(|e| (from..=to).contains(&e.at()) && relevant(e, all_reads))
            .collect()
    };
    let mut lines = pick(true);
    if lines.len() > limit {
        lines = pick(false);
    }
    let skipped = lines.len().saturating_sub(limit);
    // Keep the end, where the stale read is.
    let mut out = String::new();
    if skipped > 0 {
        let _ = writeln!(out, "    ... {skipped} earlier events");
    }
    for e in lines.iter().skip(skipped) {
        let _ = writeln!(out, "    {}", e.describe());
    }
    out
}
