//! Exchanges and queues, declared idempotently.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::{AmqpContext, QueueError};
use crate::config::RabbitSettings;
use crate::jobs::kind::JobKind;

/// Names of everything abha-bulk uses on RabbitMQ.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Durable topic exchange of job envelopes (routing key = kind).
    pub exchange: String,
    /// Dead-letter exchange (fanout).
    pub dead_letter_exchange: String,
    /// Dead-letter queue.
    pub dead_letter_queue: String,
    /// Prefix of the queue names.
    pub queue_prefix: String,
    /// Deliveries before RabbitMQ dead-letters a message.
    pub delivery_limit: u32,
    /// One quorum queue per kind (`<prefix>.<kind>`) instead of one shared work queue
    /// (`<prefix>.work`) bound to every kind's routing key. Shared is the default because
    /// RabbitMQ applies a prefetch per consumer on quorum queues (no channel-wide limit): a
    /// worker consuming nine queues could hold nine times `worker.in_flight` unacked messages,
    /// starving the other replicas and burning delivery counts when it dies. Per kind is for
    /// deployments that run worker groups per kind (`abha-bulk worker --kinds`).
    pub per_kind: bool,
}

impl Topology {
    /// From the `[rabbitmq]` settings.
    pub fn from_settings(s: &RabbitSettings) -> Self {
        let t = Self::named(&s.exchange, &s.queue_prefix, s.delivery_limit);
        if s.queue_per_kind { t.per_kind() } else { t }
    }

    /// With explicit names (tests use a unique prefix each).
    pub fn named(exchange: &str, queue_prefix: &str, delivery_limit: u32) -> Self {
        Self {
            exchange: exchange.to_string(),
            dead_letter_exchange: format!("{exchange}.dlx"),
            dead_letter_queue: format!("{queue_prefix}.dead-letter"),
            queue_prefix: queue_prefix.to_string(),
            delivery_limit,
            per_kind: false,
        }
    }

    /// The same names with one queue per kind.
    pub fn per_kind(mut self) -> Self {
        self.per_kind = true;
        self
    }

    /// The quorum queue that carries `kind`: `<prefix>.<kind>` per kind, else `<prefix>.work`.
    pub fn queue(&self, kind: JobKind) -> String {
        if self.per_kind {
            format!("{}.{}", self.queue_prefix, kind.as_str())
        } else {
            format!("{}.work", self.queue_prefix)
        }
    }

    /// The job queues (one, or one per kind), without the dead-letter queue.
    pub fn job_queues(&self) -> Vec<String> {
        let mut q: Vec<String> = JobKind::ALL.iter().map(|k| self.queue(*k)).collect();
        q.dedup();
        q
    }

    /// The queues to consume for `kinds`, each once.
    pub fn queues_for(&self, kinds: &[JobKind]) -> Vec<String> {
        let mut q: Vec<String> = kinds.iter().map(|k| self.queue(*k)).collect();
        q.sort();
        q.dedup();
        q
    }

    /// Every queue, the dead-letter queue last.
    pub fn all_queues(&self) -> Vec<String> {
        let mut q = self.job_queues();
        q.push(self.dead_letter_queue.clone());
        q
    }

    /// Declares everything (idempotent: same arguments every time).
    pub async fn declare(&self, ch: &Channel) -> Result<(), QueueError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        ch.exchange_declare(
            self.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .ctx("declaring the job exchange")?;
        ch.exchange_declare(
            self.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .ctx("declaring the dead-letter exchange")?;
        let qopts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut dlq_args = FieldTable::default();
        dlq_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(self.dead_letter_queue.as_str().into(), qopts, dlq_args)
            .await
            .ctx("declaring the dead-letter queue")?;
        ch.queue_bind(
            self.dead_letter_queue.as_str().into(),
            self.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .ctx("binding the dead-letter queue")?;
        for kind in JobKind::ALL {
            let name = self.queue(kind);
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(self.delivery_limit.min(i32::MAX as u32) as i32),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(self.dead_letter_exchange.as_str().into()),
            );
            ch.queue_declare(name.as_str().into(), qopts, args)
                .await
                .ctx("declaring a job queue")?;
            // The shared queue gets one binding per kind: a routing key that names no kind
            // stays unroutable, so a producer's mandatory publish of it fails at once.
            ch.queue_bind(
                name.as_str().into(),
                self.exchange.as_str().into(),
                kind.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .ctx("binding a job queue")?;
        }
        Ok(())
    }

    /// Ready messages per queue (passive declare). Declares the topology first (idempotent):
    /// a process that reads depths before any worker declared the queues would otherwise get
    /// `NOT_FOUND - no queue` and a closed channel.
    pub async fn depths(&self, ch: &Channel) -> Result<Vec<(String, u32)>, QueueError> {
        self.declare(ch).await?;
        let mut out = Vec::new();
        for q in self.all_queues() {
            let info = ch
                .queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .ctx("reading a queue's depth")?;
            out.push((q, info.message_count()));
        }
        Ok(out)
    }

    /// Deletes every queue and exchange (tests clean up with it).
    pub async fn delete(&self, ch: &Channel) -> Result<(), QueueError> {
        for q in self.all_queues() {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
                .ctx("deleting a queue")?;
        }
        for e in [&self.exchange, &self.dead_letter_exchange] {
            ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .ctx("deleting an exchange")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_layout_has_one_work_queue_and_per_kind_one_each() {
        let shared = Topology::named("x.jobs", "x", 20);
        assert_eq!(shared.queue(JobKind::BenefitLink), "x.work");
        assert_eq!(shared.queue(JobKind::ChildCreate), "x.work");
        assert_eq!(shared.all_queues(), vec!["x.work", "x.dead-letter"]);
        assert_eq!(shared.queues_for(&JobKind::ALL), vec!["x.work"]);
        let per_kind = shared.per_kind();
        assert_eq!(per_kind.queue(JobKind::BenefitLink), "x.benefit-link");
        assert_eq!(per_kind.job_queues().len(), JobKind::ALL.len());
        assert_eq!(
            per_kind.queues_for(&[JobKind::BenefitLink, JobKind::BenefitLink]),
            vec!["x.benefit-link"]
        );
    }
}
