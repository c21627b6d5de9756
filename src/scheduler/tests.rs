//! The stride scheduler's guarantees, with exact counts (it is deterministic).

use super::*;

fn cand(n: u128, programme: &str, priority: Priority, available: u64) -> Candidate {
    Candidate {
        batch: Uuid::from_u128(n),
        programme: programme.into(),
        priority,
        available,
    }
}

fn count(plan: &Plan, n: u128) -> u64 {
    plan.counts.get(&Uuid::from_u128(n)).copied().unwrap_or(0)
}

fn equal(_: &str) -> f64 {
    1.0
}

#[test]
fn a_flow_alone_gets_the_whole_credit() {
    let mut s = Scheduler::new();
    let plan = s.allocate(&[cand(1, "A", Priority::Normal, 10_000)], equal, 200);
    assert_eq!(plan.len(), 200);
    assert_eq!(count(&plan, 1), 200);
}

#[test]
fn a_small_batch_beside_a_big_one_gets_half_from_the_first_round_and_the_order_interleaves() {
    let mut s = Scheduler::new();
    let big = cand(1, "A", Priority::Normal, 1_000_000);
    let small = cand(2, "B", Priority::Normal, 50);
    let plan = s.allocate(&[big.clone(), small.clone()], equal, 40);
    assert_eq!((count(&plan, 1), count(&plan, 2)), (20, 20));
    // Interleaved: no run of more than one message of the same batch.
    assert!(
        plan.order.windows(2).all(|w| w[0] != w[1]),
        "{:?}",
        plan.order
    );
    // The small batch's last 30 rows go in the next round; what it cannot use goes to A.
    let plan = s.allocate(&[big, cand(2, "B", Priority::Normal, 30)], equal, 100);
    assert_eq!((count(&plan, 1), count(&plan, 2)), (70, 30));
}

#[test]
fn weights_one_and_three_share_exactly_one_to_three() {
    let mut s = Scheduler::new();
    let w = |p: &str| if p == "B" { 3.0 } else { 1.0 };
    let c = [
        cand(1, "A", Priority::Normal, 1_000_000),
        cand(2, "B", Priority::Normal, 1_000_000),
    ];
    let (mut a, mut b) = (0, 0);
    for _ in 0..50 {
        let plan = s.allocate(&c, w, 37);
        a += count(&plan, 1);
        b += count(&plan, 2);
    }
    assert_eq!(a + b, 50 * 37);
    // 1 : 3 within one message over 1 850.
    assert!((b as i64 - 3 * a as i64).abs() <= 4, "a {a}, b {b}");
}

#[test]
fn priorities_share_a_programme_and_never_take_another_programme_s_share() {
    let mut s = Scheduler::new();
    let c = [
        cand(1, "A", Priority::Low, 1_000_000),
        cand(2, "A", Priority::Urgent, 1_000_000),
        cand(3, "B", Priority::Low, 1_000_000),
    ];
    let plan = s.allocate(&c, equal, 180);
    // B keeps half; inside A the urgent batch gets 8 of every 9.
    assert_eq!(count(&plan, 3), 90);
    assert_eq!((count(&plan, 1), count(&plan, 2)), (10, 80));
}

#[test]
fn a_flow_that_joins_late_neither_banks_credit_nor_waits_for_the_others_history() {
    let mut s = Scheduler::new();
    let a = cand(1, "A", Priority::Normal, 1_000_000);
    for _ in 0..100 {
        s.allocate(std::slice::from_ref(&a), equal, 100);
    }
    // B joins after A ran 10 000 messages alone: from its first round it gets half, not all
    // (it did not bank credit while idle) and not nothing (A's history does not count).
    let plan = s.allocate(
        &[a.clone(), cand(2, "B", Priority::Normal, 1_000)],
        equal,
        100,
    );
    assert_eq!((count(&plan, 1), count(&plan, 2)), (50, 50));
    // B leaves and comes back: again half.
    s.allocate(std::slice::from_ref(&a), equal, 100);
    let plan = s.allocate(&[a, cand(3, "B", Priority::Normal, 1_000)], equal, 10);
    assert_eq!((count(&plan, 1), count(&plan, 3)), (5, 5));
}

#[test]
fn no_active_batch_waits_more_than_a_few_picks_even_among_many() {
    let mut s = Scheduler::new();
    let mut c: Vec<Candidate> = (0..20)
        .map(|i| cand(i, &format!("P{}", i % 5), Priority::Normal, 1_000_000))
        .collect();
    c.push(cand(99, "P0", Priority::Low, 1_000_000));
    let w = |p: &str| if p == "P0" { 10.0 } else { 1.0 };
    // Rounds of 20 messages (a fifth of a second at 100/s): every batch appears at least
    // once in every 3 consecutive rounds, the low-priority one included.
    let mut seen: Vec<HashMap<Uuid, u64>> = Vec::new();
    for _ in 0..30 {
        seen.push(s.allocate(&c, w, 20).counts.into_iter().collect());
    }
    for window in seen.windows(3) {
        for b in &c {
            assert!(
                window.iter().any(|r| r.contains_key(&b.batch)),
                "batch {} starved for 3 rounds",
                b.batch
            );
        }
    }
}

#[test]
fn a_credit_larger_than_the_work_publishes_the_work_and_stops() {
    let mut s = Scheduler::new();
    let plan = s.allocate(
        &[
            cand(1, "A", Priority::Normal, 3),
            cand(2, "B", Priority::High, 0),
        ],
        equal,
        1_000,
    );
    assert_eq!(plan.len(), 3);
    assert_eq!(count(&plan, 2), 0);
}

#[test]
fn priority_names_parse_case_insensitively_and_refuse_others() {
    for p in Priority::ALL {
        assert_eq!(Priority::parse(&p.as_str().to_uppercase()), Some(p));
    }
    assert!("soon".parse::<Priority>().is_err());
    assert_eq!(Priority::default(), Priority::Normal);
}
