//! The repair of abha-bulk's own state that every reconciliation does first: a run must not
//! compare against, or queue fixes behind, jobs that are stuck (an expired lease, a lost
//! message, a wrong batch counter).

use crate::jobs::kind::JobKind;
use crate::queue::Topology;
use crate::store::Store;

/// Repairs abha-bulk's own state: expired leases; jobs whose message was lost get a new outbox
/// row (only for kinds whose queue is empty); outbox rows due but never published are
/// published when no relay schedules (else the relay publishes them in fair order); batch
/// counters. Returns (leases, outbox rows
/// published, batches).
pub async fn repair(store: &Store, amqp_url: Option<&str>, topology: &Topology) -> (u64, u64, u64) {
    let leases = store.requeue_expired_leases().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "lease repair failed");
        0
    });
    let mut lost = 0;
    if let Some(url) = amqp_url
        && let Ok(conn) = crate::queue::connect(url).await
    {
        // First, before this run publishes anything: a queued job with no outbox row whose
        // queue is empty has lost its message. (A message waiting in a non-empty queue may be
        // its own, however old: a large backlog drains slowly. With the shared work queue,
        // "empty" means no job of any kind waits.) The new outbox rows go out below.
        if let Ok(ch) = conn.create_channel().await {
            if let Ok(depths) = topology.depths(&ch).await {
                for kind in JobKind::ALL {
                    let queue = topology.queue(kind);
                    if depths.iter().any(|(q, n)| *q == queue && *n == 0) {
                        let _ = store.repair_lost_messages(kind, 600).await;
                    }
                }
            }
            let _ = ch.close(200, "reconcile repair".into()).await;
        }
        // Due rows are the scheduling relay's to publish, in fair order and only as fast as
        // the bounded broker takes them; publish here only when no relay schedules (none
        // holds the lock: the fleet is down), or this run would flood the work queue.
        let relay_down = match store.try_scheduler_lock().await {
            Ok(Some(_lock)) => true,
            Ok(None) => false,
            Err(_) => false,
        };
        if !relay_down {
            tracing::debug!("a relay schedules: due outbox rows are left to it");
        } else if let Ok(publisher) =
            crate::queue::publish::Publisher::open(&conn, topology.clone()).await
        {
            // Everything due now, in rounds; bounded so a huge backlog is left to the relay.
            for _ in 0..200 {
                let round = store
                    .publish_due(
                        500,
                        std::time::Duration::from_secs(60),
                        crate::store::recheck::REPUBLISH_AFTER,
                        |rows| {
                            let publisher = &publisher;
                            async move { publisher.publish_jobs(&rows).await }
                        },
                    )
                    .await;
                match round {
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => lost += n as u64,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "publishing stale outbox rows failed");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the outbox failed");
                        break;
                    }
                }
            }
            publisher.close().await;
        }
        let _ = conn.close(200, "reconcile repair".into()).await;
    }
    let batches = store.repair_batch_counters().await.unwrap_or(0);
    (leases, lost, batches)
}
