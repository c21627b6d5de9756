//! Prints the figures: per fault, outcomes, bounds, and one closing line.

use crate::measure::{self, Bound, Figures, Recovery};

/// Prints everything; the closing line says PASS or FAIL.
pub fn print(mode: &str, f: &Figures, bounds: &[Bound]) {
    println!("\nfaults (t = seconds after the last submit):");
    println!(
        "  {:<26} {:>7} {:>9} {:>13}  recovered after",
        "fault", "t", "lasted", "rate before"
    );
    for w in &f.windows {
        let r = measure::recovery_of(f, w);
        println!(
            "  {:<26} {:>6.0}s {:>8.1}s {:>10.1}/s  {}",
            w.action.name(),
            w.start - f.t0,
            w.end - w.start,
            measure::rate_before(&f.finished, w),
            r
        );
    }
    let kills: Vec<f64> = f
        .windows
        .iter()
        .filter(|w| matches!(w.action, crate::schedule::Action::KillWorker(_)))
        .filter_map(|w| match measure::recovery_of(f, w) {
            Recovery::Secs(s) => Some(s),
            _ => None,
        })
        .collect();
    if kills.len() > 1 {
        let mut sorted = kills.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "  worker kills: {} measured, recovery median {:.0} s, max {:.0} s",
            sorted.len(),
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1]
        );
    }

    println!("\njobs by final state and last code:");
    for (state, code, n) in &f.outcomes {
        let code = if code.is_empty() { "-" } else { code };
        println!("  {state:<10} {code:<14} {n:>7}");
    }
    let (api, jobs, allowed) = measure::calls_per_row(f);
    let injected: u64 = f.calls.faults.values().sum();
    println!(
        "\nABDM traffic: {api} ABHA API requests for {jobs} jobs; {} sessions, {} certificate fetches (not counted per row); \
         {injected} faults injected {:?}; {} calls cut by worker kills; {} look-first lists after lost child creations; \
         allowance {allowed:.4} per row",
        f.calls.received.get("session").copied().unwrap_or(0),
        f.calls.received.get("certificate").copied().unwrap_or(0),
        f.calls.faults,
        f.cut_by_kills,
        measure::look_first_lists(f)
    );
    let answers: Vec<String> = f
        .calls
        .answers
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("answers by code: {}", answers.join(", "));
    let extra: Vec<String> = measure::extra_calls(f)
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("requests beyond one per job: {}", extra.join(", "));
    let sessions: Vec<String> = f
        .calls
        .session_answers
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("session answers: {}", sessions.join(", "));
    let reached: Vec<String> = f
        .calls
        .requests
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("requests that reached a handler: {}", reached.join(", "));
    let attempts: Vec<String> = f
        .attempts
        .iter()
        .map(|(op, disposition, n)| format!("{op}/{disposition} {n}"))
        .collect();
    println!(
        "attempts the workers recorded ({}): {}",
        f.attempts.iter().map(|(_, _, n)| n).sum::<i64>(),
        attempts.join(", ")
    );
    if f.unplanned_exits.is_empty() {
        println!("unplanned process exits: none");
    } else {
        println!(
            "unplanned process exits (restarted by the driver): {:?}",
            f.unplanned_exits
        );
    }
    println!(
        "RabbitMQ: {} messages dead-lettered; {} channels closed for an unacknowledged delivery (consumer_timeout)",
        f.dead_letters
            .map_or_else(|| "(not read)".to_string(), |n| n.to_string()),
        f.consumer_timeouts
    );
    println!("releases at the end: {}", f.releases);
    println!(
        "{} jobs final {:.0} s after the last submit",
        f.progress.done(),
        f.elapsed
    );

    println!("\nbounds:");
    for b in bounds {
        println!(
            "  {:<42} {:>22}  {:<10} {}",
            b.name,
            b.measured,
            b.limit,
            if b.ok { "ok" } else { "BROKEN" }
        );
    }
    let broken: Vec<&str> = bounds
        .iter()
        .filter(|b| !b.ok)
        .map(|b| b.name.as_str())
        .collect();
    if broken.is_empty() {
        println!("\nchaos {mode}: PASS, all {} bounds held", bounds.len());
    } else {
        println!(
            "\nchaos {mode}: FAIL, {} of {} bounds broken: {}",
            broken.len(),
            bounds.len(),
            broken.join("; ")
        );
    }
}
