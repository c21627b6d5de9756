//! When each active batch is expected to finish, given the scheduler's current shares.
//!
//! The relay that schedules writes each active batch's share of the fleet's rate (and the
//! calls/s that stands for) into `batch_shares` every few seconds. Dividing a batch's work by
//! its rate *now* would be too pessimistic for a big batch running beside a small one: once the
//! small one is done, its rate goes to the others. So the ETA here plays the sharing forward
//! (hierarchical processor sharing, the fluid model of the scheduler): every batch runs at its
//! current rate; when one finishes, its rate goes to the other batches of the same programme in
//! proportion to their rates (a programme keeps its share while it has work), or, when it was
//! the programme's last, to every remaining batch in proportion to its rate (which divides it
//! between programmes by their weights, then within each by priority). The model ignores
//! batches that will arrive later and rates that change (AIMD, side work), so an ETA is "if
//! nothing else changes", and is refreshed with every view.
//!
//! A batch without a fresh share (no scheduler has written one, or it stopped writing for
//! [`SHARE_FRESH_SECS`]) falls back to its own measured rate, as before the scheduler existed.

use std::collections::HashMap;

use uuid::Uuid;

use crate::store::batch_views::ShareRow;
use crate::store::{Store, StoreError};

/// A share row older than this (seconds) is not trusted: the relay that schedules rewrites
/// them every few seconds, so an older one means no scheduler runs.
pub const SHARE_FRESH_SECS: f64 = 60.0;

/// One batch as the fluid model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// The batch.
    pub batch: Uuid,
    /// Its programme (benefit name).
    pub programme: String,
    /// Calls/s it is scheduled at now.
    pub rate: f64,
    /// Jobs it has left.
    pub work: f64,
}

/// Seconds until each flow's work is done under hierarchical processor sharing (see the
/// module's doc); `None` for a flow that never gets a rate (every flow left has none).
pub fn finish_times(flows: &[Flow]) -> HashMap<Uuid, Option<f64>> {
    let n = flows.len();
    let mut rate: Vec<f64> = flows.iter().map(|f| f.rate.max(0.0)).collect();
    let mut work: Vec<f64> = flows.iter().map(|f| f.work.max(0.0)).collect();
    let mut done: Vec<Option<f64>> = vec![None; n];
    let mut left: Vec<bool> = vec![true; n];
    let mut now = 0.0f64;
    loop {
        // Flows with nothing left finish now.
        let finishing: Vec<usize> = (0..n).filter(|&i| left[i] && work[i] <= 1e-9).collect();
        if finishing.is_empty() {
            let step = (0..n)
                .filter(|&i| left[i] && rate[i] > 0.0)
                .map(|i| work[i] / rate[i])
                .fold(f64::INFINITY, f64::min);
            if !step.is_finite() {
                break;
            }
            for i in (0..n).filter(|&i| left[i]) {
                work[i] = (work[i] - rate[i] * step).max(0.0);
            }
            now += step;
            // The flow that set the step may be left with a rounding error above the epsilon.
            for i in (0..n).filter(|&i| left[i] && rate[i] > 0.0) {
                if work[i] / rate[i] <= step * 1e-9 {
                    work[i] = 0.0;
                }
            }
            continue;
        }
        for &i in &finishing {
            left[i] = false;
            done[i] = Some(now);
        }
        for &i in &finishing {
            let freed = std::mem::take(&mut rate[i]);
            let siblings: Vec<usize> = (0..n)
                .filter(|&j| left[j] && flows[j].programme == flows[i].programme)
                .collect();
            let takers = if siblings.is_empty() {
                (0..n).filter(|&j| left[j]).collect()
            } else {
                siblings
            };
            share_out(&mut rate, &takers, freed);
        }
        if !left.iter().any(|&l| l) {
            break;
        }
    }
    flows.iter().zip(done).map(|(f, d)| (f.batch, d)).collect()
}

/// Gives `freed` calls/s to `takers` in proportion to their rates (equally when none has one).
fn share_out(rate: &mut [f64], takers: &[usize], freed: f64) {
    if takers.is_empty() || freed <= 0.0 {
        return;
    }
    let total: f64 = takers.iter().map(|&j| rate[j]).sum();
    for &j in takers {
        rate[j] += if total > 0.0 {
            freed * rate[j] / total
        } else {
            freed / takers.len() as f64
        };
    }
}

/// What an ETA is based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtaBasis {
    /// The scheduler's share of the rate, with the other active batches' work accounted for.
    Scheduled,
    /// The batch's own rate over the last minute (no fresh share is known).
    Measured,
}

impl EtaBasis {
    /// `scheduled` or `measured` (the JSON answers' `eta_basis`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Measured => "measured",
        }
    }
}

/// One active batch in the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Programme (benefit name).
    pub programme: String,
    /// `low`, `normal`, `high` or `urgent`.
    pub priority: String,
    /// Fraction of the fleet's rate the scheduler gives it now, when fresh.
    pub share: Option<f64>,
    /// The calls/s that share stands for, when fresh.
    pub rate: Option<f64>,
    /// Jobs it has left to publish, by the scheduler's count, when fresh.
    pub backlog: Option<i64>,
    /// Jobs still open (queued, running, retrying).
    pub open: i64,
    /// Seconds until done, when it can be told.
    pub eta_secs: Option<f64>,
    /// What `eta_secs` is based on (`None`: no ETA).
    pub basis: Option<EtaBasis>,
    /// 1-based order of expected completion among all active batches.
    pub position: usize,
    /// 1-based order of expected completion among its programme's active batches.
    pub programme_position: usize,
}

/// The expected completion of every active batch.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// By batch.
    pub batches: HashMap<Uuid, Planned>,
    /// Active batches in all.
    pub active: usize,
    /// Active batches per programme.
    pub per_programme: HashMap<String, usize>,
}

impl Plan {
    /// Reads the shares of the active batches and plays them forward. `known_open` gives the
    /// open jobs of batches the caller has just counted (the scheduler's backlog is a few
    /// seconds old and leaves out what is already in RabbitMQ). A batch without a fresh share
    /// gets its ETA from its own rate, which costs two queries: only for batches of the
    /// programmes `measure` accepts (the others then have no ETA and come last).
    pub async fn load(
        store: &Store,
        known_open: &HashMap<Uuid, i64>,
        measure: impl Fn(&str) -> bool,
    ) -> Result<Self, StoreError> {
        let rows = store.active_shares().await?;
        let mut measured = HashMap::new();
        for r in rows.iter().filter(|r| !fresh(r) && measure(&r.programme)) {
            let open = match known_open.get(&r.batch) {
                Some(&o) => o,
                None => store.open_jobs(r.batch).await?,
            };
            let rate = store.batch_rate(r.batch).await?.per_sec();
            measured.insert(r.batch, (open, rate));
        }
        Ok(Self::from_rows(&rows, known_open, &measured))
    }

    /// The plan of `rows` (see [`Plan::load`]); `measured` holds (open jobs, own rate) of rows
    /// without a fresh share (one missing there has no ETA).
    pub fn from_rows(
        rows: &[ShareRow],
        known_open: &HashMap<Uuid, i64>,
        measured: &HashMap<Uuid, (i64, f64)>,
    ) -> Self {
        let mut flows = Vec::new();
        for r in rows.iter().filter(|r| fresh(r)) {
            let backlog = r.backlog.unwrap_or(0);
            let open = known_open.get(&r.batch).copied().unwrap_or(backlog);
            flows.push(Flow {
                batch: r.batch,
                programme: r.programme.clone(),
                rate: r.rate.unwrap_or(0.0),
                work: open.max(backlog) as f64,
            });
        }
        let scheduled = finish_times(&flows);
        let mut planned: Vec<(Uuid, Planned)> = rows
            .iter()
            .map(|r| {
                let (open, eta, basis) = if fresh(r) {
                    let backlog = r.backlog.unwrap_or(0);
                    let open = known_open.get(&r.batch).copied().unwrap_or(backlog);
                    let eta = scheduled.get(&r.batch).copied().flatten();
                    (open, eta, eta.map(|_| EtaBasis::Scheduled))
                } else {
                    let eta = match measured.get(&r.batch) {
                        Some(&(0, _)) => Some(0.0),
                        Some(&(open, rate)) => (rate > 0.0).then(|| open as f64 / rate),
                        None => None,
                    };
                    let open = measured.get(&r.batch).map_or(0, |m| m.0);
                    (open, eta, eta.map(|_| EtaBasis::Measured))
                };
                let (share, rate, backlog) = if fresh(r) {
                    (r.share, r.rate, r.backlog)
                } else {
                    (None, None, None)
                };
                let p = Planned {
                    programme: r.programme.clone(),
                    priority: r.priority.clone(),
                    share,
                    rate,
                    backlog,
                    open,
                    eta_secs: eta,
                    basis,
                    position: 0,
                    programme_position: 0,
                };
                (r.batch, p)
            })
            .collect();
        // Expected completion first; a batch whose end cannot be told goes last; ties by age
        // (`rows` come oldest first and the sort is stable).
        planned.sort_by(|(_, a), (_, b)| match (a.eta_secs, b.eta_secs) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        let mut per_programme: HashMap<String, usize> = HashMap::new();
        for (i, (_, p)) in planned.iter_mut().enumerate() {
            p.position = i + 1;
            let n = per_programme.entry(p.programme.clone()).or_default();
            *n += 1;
            p.programme_position = *n;
        }
        Self {
            active: planned.len(),
            batches: planned.into_iter().collect(),
            per_programme,
        }
    }

    /// Active batches of a programme.
    pub fn programme_size(&self, programme: &str) -> usize {
        self.per_programme.get(programme).copied().unwrap_or(0)
    }
}

fn fresh(r: &ShareRow) -> bool {
    r.age_secs.is_some_and(|a| a <= SHARE_FRESH_SECS) && r.rate.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn flow(n: u128, programme: &str, rate: f64, work: f64) -> Flow {
        Flow {
            batch: id(n),
            programme: programme.into(),
            rate,
            work,
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn a_finished_batch_gives_its_rate_to_its_programme_first() {
        // R = 100: programme A (50/s) has a 6 000-row batch; B (50/s) a 50-row batch and a
        // 2 000-row one at 25/s each.
        let t = finish_times(&[
            flow(1, "A", 50.0, 6000.0),
            flow(2, "B", 25.0, 50.0),
            flow(3, "B", 25.0, 2000.0),
        ]);
        // The small one: 50 / 25 = 2 s.
        assert!(close(t[&id(2)], 2.0), "{t:?}");
        // Then B's big one runs at 50/s: 50 done by 2 s, 1 950 left → 39 s more.
        assert!(close(t[&id(3)], 41.0), "{t:?}");
        // A: 2 050 done by 41 s at 50/s, then alone at 100/s: 3 950 / 100 = 39.5 s more.
        assert!(close(t[&id(1)], 80.5), "{t:?}");
    }

    #[test]
    fn a_programme_emptied_frees_its_share_for_the_others_by_weight() {
        // Weights 1 : 3 over R = 100 (A 25/s, B 75/s); C (another programme) shares none now.
        let t = finish_times(&[
            flow(1, "A", 25.0, 25.0),
            flow(2, "B", 75.0, 750.0),
            flow(3, "C", 0.0, 10.0),
        ]);
        assert!(close(t[&id(1)], 1.0));
        // A's 25/s goes to B (C has no rate to weigh by): B at 100/s, 675 left → 6.75 s more.
        assert!(close(t[&id(2)], 7.75), "{t:?}");
        // C gets everything once B is done: 10 / 100.
        assert!(close(t[&id(3)], 7.85), "{t:?}");
    }

    #[test]
    fn nothing_left_is_done_now_and_no_rate_at_all_is_never() {
        let t = finish_times(&[flow(1, "A", 10.0, 0.0), flow(2, "B", 0.0, 5.0)]);
        assert_eq!(t[&id(1)], Some(0.0));
        // B gets A's 10/s at once.
        assert!(close(t[&id(2)], 0.5));
        let t = finish_times(&[flow(1, "A", 0.0, 5.0)]);
        assert_eq!(t[&id(1)], None);
        assert!(finish_times(&[]).is_empty());
    }

    fn row(n: u128, programme: &str, rate: Option<f64>, backlog: i64, age: f64) -> ShareRow {
        ShareRow {
            batch: id(n),
            programme: programme.into(),
            priority: "normal".into(),
            share: rate.map(|r| r / 100.0),
            rate,
            backlog: Some(backlog),
            age_secs: Some(age),
        }
    }

    #[test]
    fn positions_follow_expected_completion_and_stale_shares_fall_back() {
        let rows = [
            row(1, "A", Some(50.0), 6000, 2.0),
            row(2, "B", Some(50.0), 50, 2.0),
            // Stale: its own measured rate (4/s, 40 open → 10 s).
            row(3, "B", Some(99.0), 1, SHARE_FRESH_SECS + 1.0),
            // No share and no measured rate: no ETA, last.
            row(4, "C", None, 0, 0.0),
        ];
        let known = HashMap::from([(id(2), 60)]);
        let measured = HashMap::from([(id(3), (40, 4.0)), (id(4), (7, 0.0))]);
        let p = Plan::from_rows(&rows, &known, &measured);
        let b = |n| &p.batches[&id(n)];
        // The open count the caller knows wins over the older backlog: 60 / 50.
        assert!(close(b(2).eta_secs, 1.2));
        assert_eq!(b(2).basis, Some(EtaBasis::Scheduled));
        assert_eq!(b(3).basis, Some(EtaBasis::Measured));
        assert!(close(b(3).eta_secs, 10.0));
        assert_eq!(
            (b(3).share, b(3).rate),
            (None, None),
            "stale shares are not shown"
        );
        assert_eq!((b(4).eta_secs, b(4).basis), (None, None));
        let order: Vec<usize> = (1..=4).map(|n| b(n).position).collect();
        assert_eq!(order, [3, 1, 2, 4]);
        assert_eq!((b(2).programme_position, b(3).programme_position), (1, 2));
        assert_eq!(
            (p.active, p.programme_size("B"), p.programme_size("Z")),
            (4, 2, 0)
        );
    }
}
