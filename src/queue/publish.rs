//! Publishing with publisher confirms and the mandatory flag.

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use super::envelope::Envelope;
use super::{AmqpContext, QueueError, Topology};
use crate::jobs::kind::JobKind;
use crate::store::outbox::OutboxRow;

/// Header that carries why a message was dead-lettered by a worker.
pub const REJECT_REASON_HEADER: &str = "x-abha-reject-reason";

/// A confirm-mode channel for publishing.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    topology: Topology,
}

impl Publisher {
    /// Opens a channel in confirm mode.
    pub async fn open(conn: &Connection, topology: Topology) -> Result<Self, QueueError> {
        let channel = conn
            .create_channel()
            .await
            .ctx("opening a publish channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .ctx("enabling publisher confirms")?;
        Ok(Self { channel, topology })
    }

    /// Closes the channel (before its connection is closed, so the broker sees a clean close).
    pub async fn close(&self) {
        let _ = self.channel.close(200, "done".into()).await;
    }

    /// True while the channel is usable.
    pub fn is_connected(&self) -> bool {
        self.channel.status().connected()
    }

    /// Ready messages in the job queues (passive declares on this channel: one round trip per
    /// queue, no redeclaration). The scheduling relay reads it before each round.
    pub async fn ready_messages(&self) -> Result<u64, QueueError> {
        let mut total = 0u64;
        for q in self.topology.job_queues() {
            let info = self
                .channel
                .queue_declare(
                    q.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..lapin::options::QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .ctx("reading a job queue's depth")?;
            total += u64::from(info.message_count());
        }
        Ok(total)
    }

    /// Publishes stored-job envelopes (persistent, mandatory) and waits for every confirm.
    pub async fn publish_jobs(&self, rows: &[OutboxRow]) -> Result<(), QueueError> {
        let mut pending = Vec::with_capacity(rows.len());
        for row in rows {
            let kind = JobKind::parse(&row.kind).unwrap_or(JobKind::BenefitSearch);
            let body = Envelope::stored_bytes(kind, row.job_id);
            let confirm = self
                .channel
                .basic_publish(
                    self.topology.exchange.as_str().into(),
                    row.kind.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into())
                        .with_message_id(row.job_id.to_string().into()),
                )
                .await
                .ctx("publishing a job")?;
            pending.push(confirm);
        }
        let (mut nacked, mut returned) = (0, 0);
        for confirm in pending {
            match confirm.await.ctx("waiting for a confirm")? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_)) => returned += 1,
                Confirmation::Nack(_) => nacked += 1,
                Confirmation::NotRequested => nacked += 1,
            }
        }
        if nacked > 0 {
            return Err(QueueError::NotConfirmed {
                count: nacked,
                reason: "nack",
            });
        }
        if returned > 0 {
            return Err(QueueError::NotConfirmed {
                count: returned,
                reason: "unroutable: is the topology declared?",
            });
        }
        Ok(())
    }

    /// Publishes a raw message (an external producer's envelope, tests) to the job exchange.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) -> Result<(), QueueError> {
        self.confirmed(
            &self.topology.exchange.clone(),
            routing_key,
            body,
            FieldTable::default(),
        )
        .await
    }

    /// Sends a refused message to the dead-letter exchange with the reason in a header; the
    /// body is [`Envelope::redacted`] (no identifiers), not the message itself.
    pub async fn dead_letter(&self, body: &[u8], reason: &str) -> Result<(), QueueError> {
        let body = Envelope::redacted(body);
        let mut headers = FieldTable::default();
        headers.insert(
            REJECT_REASON_HEADER.into(),
            AMQPValue::LongString(reason.into()),
        );
        self.confirmed(
            &self.topology.dead_letter_exchange.clone(),
            "",
            &body,
            headers,
        )
        .await
    }

    async fn confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), QueueError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_headers(headers),
            )
            .await
            .ctx("publishing")?
            .await
            .ctx("waiting for a confirm")?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(QueueError::NotConfirmed {
                count: 1,
                reason: "unroutable: is the topology declared?",
            }),
            _ => Err(QueueError::NotConfirmed {
                count: 1,
                reason: "nack",
            }),
        }
    }
}
