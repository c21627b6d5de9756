//! Fair shares of the one ABDM rate: which due work the relay publishes next.
//!
//! Every programme (benefit name) shares one ABDM client and its one rate. The relay that
//! schedules hands RabbitMQ only a few seconds of work at a time (`relay::broker`), so the
//! order in which it picks due work *is* the order in which ABDM sees it. This module makes
//! that pick: **two-level stride scheduling** (Waldspurger & Weihl 1995), first between
//! programmes by their weight, then between a programme's batches by their priority.
//!
//! Why stride scheduling: it is deterministic (the same inputs give the same picks, so the
//! tests assert exact counts), proportional over any window of a few picks (a batch of 50 rows
//! beside one of a million gets its half from the first round, not after the big one), needs
//! one number per flow (its *pass*), and lets a flow that was idle join at the current virtual
//! time (the smallest pass among the active flows, as Linux CFS's `min_vruntime`), so it can
//! neither bank credit while idle nor be made to wait behind flows that ran meanwhile. A flow
//! with weight `w` advances its pass by `1/w` per message, so two backlogged programmes with
//! weights 1 and 3 get messages 1 : 3, and a flow alone gets everything (work-conserving: no
//! rate is held back for flows that have nothing due). Nothing starves: every active flow's
//! pass falls behind the others' by at most one stride, so it is picked within a round.
//!
//! The state lives in the memory of the one relay that schedules (a leader, see
//! `relay::leader`); a new leader starts every flow at the same pass, which costs at most a
//! round of imbalance.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

/// A batch's priority within its programme's share.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Weight 1.
    Low,
    /// Weight 2 (the default).
    #[default]
    Normal,
    /// Weight 4.
    High,
    /// Weight 8.
    Urgent,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 4] = [Self::Low, Self::Normal, Self::High, Self::Urgent];

    /// The name stored in `batches.priority` and accepted by `--priority` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Urgent => "urgent",
        }
    }

    /// Parses a stored or given name (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// The batch's weight inside its programme: each step doubles it, so an urgent batch gets
    /// 8 of every 9 messages beside a low one, yet the low one still moves.
    pub fn weight(self) -> f64 {
        match self {
            Self::Low => 1.0,
            Self::Normal => 2.0,
            Self::High => 4.0,
            Self::Urgent => 8.0,
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| format!("unknown priority {s:?}: low, normal, high or urgent"))
    }
}

/// Due work of one batch, as the relay found it this round.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The batch.
    pub batch: Uuid,
    /// Its programme (benefit name).
    pub programme: String,
    /// Its priority.
    pub priority: Priority,
    /// Messages it could publish now (an upper bound for a file still being expanded).
    pub available: u64,
}

/// What one round publishes: the batches in the order picked (interleaved), and how many each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Messages per batch.
    pub counts: BTreeMap<Uuid, u64>,
    /// The picks in order (one entry per message).
    pub order: Vec<Uuid>,
}

impl Plan {
    /// Messages in the plan.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is to be published.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The stride scheduler's memory: one pass per programme and per batch.
#[derive(Debug, Default)]
pub struct Scheduler {
    programmes: HashMap<String, f64>,
    batches: HashMap<Uuid, f64>,
}

impl Scheduler {
    /// An empty scheduler (every flow starts at the same pass).
    pub fn new() -> Self {
        Self::default()
    }

    /// Picks up to `credit` messages among `candidates`. `weight` gives a programme's weight
    /// (values at or below zero count as 1). Flows absent from `candidates` are forgotten: if
    /// they come back they start at the current virtual time.
    pub fn allocate(
        &mut self,
        candidates: &[Candidate],
        weight: impl Fn(&str) -> f64,
        credit: u64,
    ) -> Plan {
        // Group by programme, keeping only batches with something to publish.
        let mut progs: BTreeMap<&str, Vec<(Uuid, f64, u64)>> = BTreeMap::new();
        for c in candidates.iter().filter(|c| c.available > 0) {
            progs.entry(c.programme.as_str()).or_default().push((
                c.batch,
                c.priority.weight(),
                c.available,
            ));
        }
        self.programmes
            .retain(|p, _| progs.contains_key(p.as_str()));
        let active: std::collections::HashSet<Uuid> = progs
            .values()
            .flat_map(|bs| bs.iter().map(|b| b.0))
            .collect();
        self.batches.retain(|b, _| active.contains(b));
        // Flows that join start at the current virtual time (the smallest pass of those that
        // stayed), so they neither bank credit nor wait behind flows that ran meanwhile.
        let vtime = min_pass(self.programmes.values());
        for p in progs.keys() {
            self.programmes.entry((*p).to_string()).or_insert(vtime);
        }
        for bs in progs.values() {
            let local = min_pass(bs.iter().filter_map(|b| self.batches.get(&b.0)));
            for b in bs {
                self.batches.entry(b.0).or_insert(local);
            }
        }
        let mut plan = Plan::default();
        let mut left: HashMap<Uuid, u64> = progs
            .values()
            .flat_map(|bs| bs.iter().map(|b| (b.0, b.2)))
            .collect();
        while (plan.order.len() as u64) < credit && !progs.is_empty() {
            // The programme with the smallest pass (ties: by name, for determinism).
            let p = *progs
                .keys()
                .min_by(|a, b| {
                    self.programmes[**a]
                        .total_cmp(&self.programmes[**b])
                        .then(a.cmp(b))
                })
                .expect("non-empty");
            let bs = progs.get_mut(p).expect("present");
            let i = (0..bs.len())
                .min_by(|x, y| {
                    self.batches[&bs[*x].0]
                        .total_cmp(&self.batches[&bs[*y].0])
                        .then(bs[*x].0.cmp(&bs[*y].0))
                })
                .expect("a programme in the map has a batch");
            let (batch, bw, _) = bs[i];
            plan.order.push(batch);
            *plan.counts.entry(batch).or_default() += 1;
            *self.batches.get_mut(&batch).expect("entered") += 1.0 / bw;
            let pw = weight(p);
            *self.programmes.get_mut(p).expect("entered") += 1.0 / if pw > 0.0 { pw } else { 1.0 };
            let n = left.get_mut(&batch).expect("entered");
            *n -= 1;
            if *n == 0 {
                bs.swap_remove(i);
                if bs.is_empty() {
                    progs.remove(p);
                }
            }
        }
        self.normalise();
        plan
    }

    /// Keeps the passes small (subtracts the smallest) so they never lose precision over a
    /// year of rounds; only differences matter.
    fn normalise(&mut self) {
        let base = min_pass(self.programmes.values());
        self.programmes.values_mut().for_each(|v| *v -= base);
        let base = min_pass(self.batches.values());
        self.batches.values_mut().for_each(|v| *v -= base);
    }
}

/// The smallest pass, 0 when there is none.
fn min_pass<'a>(passes: impl Iterator<Item = &'a f64>) -> f64 {
    passes.copied().reduce(f64::min).unwrap_or(0.0)
}

#[cfg(test)]
mod tests;
