//! The console's views of the fair scheduler and of failures: a batch's share of the rate with
//! a chart of its last hour, its failed rows grouped by code with what to do about them, and
//! the programme's active batches in order of expected completion.
//!
//! The chart is an inline SVG drawn here from numbers only (no script, no library, nothing
//! the Content-Security-Policy would have to allow); every text is escaped by [`esc`].

use uuid::Uuid;

use super::esc;
use crate::api::ApiState;
use crate::api::problem::Problem;
use crate::report::{BatchStatus, EtaBasis, Plan, format_duration, ordinal, percent};
use crate::store::batch_views::{FailureGroup, MinuteRates};
use crate::store::batches::BatchInfo;

/// Minutes the rate chart covers.
pub const CHART_MINUTES: i32 = 60;
/// Failure groups shown (the report lists every row).
const GROUPS_SHOWN: i64 = 20;
/// Width and height of the chart, px.
const CHART_W: f64 = 240.0;
const CHART_H: f64 = 48.0;

/// An inline SVG sparkline of `values` (oldest first), scaled to its own peak: an area under
/// a line. Only numbers go into it.
pub fn sparkline(values: &[f64]) -> String {
    let peak = values.iter().copied().fold(0.0f64, f64::max);
    let n = values.len().max(2) - 1;
    let point = |i: usize, v: f64| {
        let x = CHART_W * i as f64 / n as f64;
        let y = if peak > 0.0 {
            CHART_H - 2.0 - (CHART_H - 4.0) * v.max(0.0) / peak
        } else {
            CHART_H - 2.0
        };
        format!("{x:.1},{y:.1}")
    };
    let line: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| point(i, v))
        .collect();
    let line = line.join(" ");
    let last_x = CHART_W * (values.len().max(1) - 1) as f64 / n as f64;
    format!(
        r#"<svg id="rate-chart" class="spark" viewBox="0 0 {CHART_W} {CHART_H}" width="{CHART_W}" height="{CHART_H}" role="img" aria-labelledby="rate-chart-title"><title id="rate-chart-title">Messages published per second, each minute of the last hour</title><polygon class="spark-area" points="0,{CHART_H} {line} {last_x:.1},{CHART_H}"/><polyline class="spark-line" points="{line}"/></svg>"#
    )
}

/// The "Share of the rate" card of a batch page: share, calls/s, priority, position, and the
/// chart of the last hour beside them.
pub fn share_card(s: &BatchStatus, minutes: &MinuteRates) -> String {
    let b = &s.batch;
    let (share, detail) = match (&s.planned, s.share()) {
        (Some(p), Some((share, rate))) => (
            percent(share),
            format!(
                "of the ABDM rate: {rate:.1} calls/s now, priority {prio}. {place}; the ETA \
                 counts the work of every active batch, of every programme.",
                prio = esc(&s.priority),
                place = place(p.programme_position, s.programme_active, &p.programme),
            ),
        ),
        (Some(p), None) => (
            "unknown".to_string(),
            format!(
                "No scheduler has reported a share for this batch in the last minute, so the \
                 ETA comes from its own rate. Priority {prio}. {place}.",
                prio = esc(&s.priority),
                place = place(p.programme_position, s.programme_active, &p.programme),
            ),
        ),
        (None, _) => (
            "none".to_string(),
            format!(
                "The batch is {state}: it takes no share of the rate. Priority {prio}.",
                state = esc(&b.state),
                prio = esc(&s.priority),
            ),
        ),
    };
    let chart = if minutes.published > 0 {
        let now = minutes.per_sec.last().copied().unwrap_or(0.0);
        let peak = minutes.per_sec.iter().copied().fold(0.0f64, f64::max);
        format!(
            r#"<figure class="chart">{svg}<div class="spark-axis"><span>an hour ago</span><span>now</span></div><figcaption id="rate-chart-caption">Published per second, last hour: now {now:.1}/s, peak {peak:.1}/s ({published} messages)</figcaption></figure>"#,
            svg = sparkline(&minutes.per_sec),
            published = minutes.published,
        )
    } else {
        r#"<p id="no-rate-chart" class="hint chart">Nothing was published for this batch in the last hour (the scheduler records what it publishes per minute).</p>"#.to_string()
    };
    format!(
        r#"<section class="card" id="share-card">
<h2>Share of the rate</h2>
<div class="share-row">
<div><p class="big" id="share">{share}</p><p id="share-text">{detail}</p></div>
{chart}
</div>
</section>"#
    )
}

/// "Expected to finish 2nd of PMJAY's 3 active batches", or "PMJAY's only active batch"
/// (escaped).
fn place(position: usize, of: usize, programme: &str) -> String {
    if of <= 1 {
        format!("It is {}'s only active batch", esc(programme))
    } else {
        format!(
            "Expected to finish {} of {}'s {of} active batches",
            ordinal(position),
            esc(programme)
        )
    }
}

/// The failed and dead rows of a batch by code: count, what ABDM said, what to do.
pub async fn failures(st: &ApiState, batch: Uuid) -> Result<String, Problem> {
    let groups = st.store.failures_by_code(batch, GROUPS_SHOWN).await?;
    Ok(failures_table(&groups))
}

/// See [`failures`].
pub fn failures_table(groups: &[FailureGroup]) -> String {
    if groups.is_empty() {
        return r#"<p id="no-failures">No row has failed.</p>"#.to_string();
    }
    let rows: String = groups
        .iter()
        .map(|g| {
            let code = g.code.as_deref();
            let said = g
                .message
                .clone()
                .unwrap_or_else(|| "no message recorded".into());
            let dead = if g.dead > 0 {
                format!(
                    r#"<br><span class="hint">{} out of retries</span>"#,
                    g.dead
                )
            } else {
                String::new()
            };
            format!(
                "<tr><td class=\"code\"><code>{code}</code></td><td class=\"num\">{rows}{dead}</td><td>{said}</td><td>{action}</td></tr>\n",
                code = esc(code.unwrap_or("none")),
                rows = g.rows,
                said = esc(&said),
                action = esc(crate::abdm::messages::operator_action(code)),
            )
        })
        .collect();
    format!(
        r#"<table id="failures"><thead><tr><th>Code</th><th class="num">Rows</th><th>What ABDM said</th><th>What to do</th></tr></thead>
<tbody>
{rows}</tbody></table>"#
    )
}

/// The programme's active batches (those `batches` holds, already limited to the key's
/// programmes) in order of expected completion within each programme.
pub fn active_table(batches: &[BatchInfo], plan: &Plan) -> String {
    let mut active: Vec<(&BatchInfo, &crate::report::Planned)> = batches
        .iter()
        .filter_map(|b| plan.batches.get(&b.id).map(|p| (b, p)))
        .collect();
    if active.is_empty() {
        return r#"<p id="no-active">No batch is running.</p>"#.to_string();
    }
    active.sort_by(|(a, p), (b, q)| {
        (&a.benefit, p.programme_position).cmp(&(&b.benefit, q.programme_position))
    });
    let rows: String = active
        .iter()
        .map(|(b, p)| {
            let eta = match (p.eta_secs, p.basis) {
                (_, _) if p.open == 0 => "done".to_string(),
                (Some(e), Some(EtaBasis::Scheduled)) => format_duration(e),
                (Some(e), _) => format!("{} (own rate)", format_duration(e)),
                (None, _) => "unknown".to_string(),
            };
            format!(
                r#"<tr><td class="num">{pos} of {n}</td><td><a href="/console/batches/{id}">{created}</a></td><td>{kind}</td><td>{benefit}</td><td>{prio}</td><td class="num">{open}</td><td class="num">{share}</td><td>{eta}</td></tr>
"#,
                pos = p.programme_position,
                n = plan.programme_size(&p.programme),
                id = b.id,
                created = b.created_at.format("%Y-%m-%d %H:%M UTC"),
                kind = esc(&b.kind),
                benefit = esc(&b.benefit),
                prio = esc(&p.priority),
                open = p.open,
                share = p.share.map(percent).unwrap_or_else(|| "?".into()),
                eta = esc(&eta),
            )
        })
        .collect();
    format!(
        r#"<table id="active"><thead><tr><th class="num">Position</th><th>Uploaded</th><th>Kind</th><th>Benefit</th><th>Priority</th><th class="num">Rows left</th><th class="num">Share</th><th>ETA</th></tr></thead>
<tbody>
{rows}</tbody></table>
<p class="hint">Position: the order in which the programme's running batches are expected to finish at their current shares of the ABDM rate. A share of ? means no scheduler has reported one; the ETA then comes from the batch's own rate.</p>"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sparkline_scales_to_its_peak_and_holds_only_numbers() {
        let svg = sparkline(&[0.0, 5.0, 10.0]);
        assert!(svg.starts_with("<svg id=\"rate-chart\""), "{svg}");
        // The peak touches the top margin, zero the bottom one.
        assert!(
            svg.contains("points=\"0.0,46.0 120.0,24.0 240.0,2.0\""),
            "{svg}"
        );
        let flat = sparkline(&[0.0; 60]);
        assert!(flat.contains(" 240.0,46.0\""), "{flat}");
        let one = sparkline(&[3.0]);
        assert!(one.contains("0.0,2.0"), "{one}");
    }

    #[test]
    fn failures_are_grouped_escaped_and_say_what_to_do() {
        let html = failures_table(&[
            FailureGroup {
                code: Some("ABDM-1114".into()),
                rows: 12,
                dead: 0,
                message: Some("user <not> found".into()),
            },
            FailureGroup {
                code: Some("timeout".into()),
                rows: 3,
                dead: 3,
                message: None,
            },
        ]);
        assert!(html.contains("<code>ABDM-1114</code></td><td class=\"num\">12</td>"));
        assert_eq!(
            place(1, 1, "<P>"),
            "It is &lt;P&gt;'s only active batch",
            "escaped"
        );
        assert!(place(2, 3, "PMJAY").starts_with("Expected to finish 2nd of PMJAY's 3"));
        assert!(html.contains("user &lt;not&gt; found"), "{html}");
        assert!(html.contains("3 out of retries"));
        assert!(html.contains("Retry failed rows"));
        assert!(failures_table(&[]).contains("No row has failed"));
    }
}
