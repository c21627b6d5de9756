//! # abha-bulk
//!
//! Runs ABDM ABHA V3 Benefit API operations in bulk: search, link and de-link beneficiaries'
//! ABHA numbers to a programme, patch profiles, create child ABHAs and ABHAs by demographic
//! authentication, for hundreds of thousands of people at a time, at a rate ABDM tolerates.
//!
//! # Layout
//!
//! | module | holds |
//! |---|---|
//! | [`cli`] | the `abha-bulk` commands: their dispatch; `args` (the clap definitions), `commands`, `status`, `api_cmd`, `ops`, `tour_cmd`, `output` |
//! | [`config`] | typed settings (enums, addresses, durations), layered loading (defaults → `<env>.toml` → env) and validation, secrets (`secrecy`) |
//! | [`pii`] | identifier types (Aadhaar, ABHA number, mobile, name, X-token) with masked output; `names` (name validation) |
//! | [`abdm`] | the ABDM V3 client: a small `client` façade over `transport` (headers, gate, retries of one call), `certificate` (public-key cache), `trace` (`CallTrace`, `AttemptRecord`), `session`, `crypto` (public key only), `error`; operations in `benefit`, `profile`, `child`, `enrol` |
//! | [`sandbox`] | the embedded ABDM simulator (axum) used by the demo, tests and benchmarks: its private `key`, `settings_for_sandbox`, and `routes/` (`guard`, `errors`, one file per API area, `admin`) |
//! | [`jobs`] | the kind registry ([`jobs::kind`]) and one module per kind (columns, payload, validation, ABDM call, outcomes, sample rows); shared column specs ([`jobs::columns`]), field parsers ([`jobs::fields`]), outcome mapping ([`jobs::execute`]), what sample rows are made from ([`jobs::sample`]: the world the sandbox lends them) |
//! | [`lifecycle`] | the data lifecycle (DPDP Act): the retention `Sweeper` run by the relay's housekeeping, and `erase` (erasure on request: identifier files → keyed hashes → erased rows) |
//! | [`ingest`] | streaming CSV → validated rows and rejections |
//! | [`store`] | Postgres: vault, batches, submits, claims, outcomes, jobs, outbox, rate budget, circuit breaker, API keys, webhooks, reconcile runs and their per-ABHA rows |
//! | [`queue`] | RabbitMQ topology, job envelope v1, confirmed publishing |
//! | [`ratelimit`] | governor + AIMD on the shared rate; `global`: the Postgres token bucket replicas lease blocks from, and when a leased token may still be spent ([`ratelimit::Leased`]) |
//! | [`breaker`] | the ABDM circuit breaker shared by every replica (outages, refused secrets, a failure ratio over a window: `window`; what a result says: `signal`) and a replica's own hold while ABDM refuses its clock |
//! | [`submit`] | CSV file → batch of jobs with outbox rows, in constant memory |
//! | [`scheduler`] | fair shares of the one rate: two-level stride scheduling (programmes by weight, their batches by priority) |
//! | [`relay`] | outbox → RabbitMQ; [`relay::housekeeping`]: lease expiry, batch closing, gauges |
//! | [`worker`] | consume (through the [`worker::source`] seam: RabbitMQ or an in-memory queue) → claim → rate limit → ABDM → record → ack; graceful shutdown. `mod.rs`: settings, connection, consume loop; `job`: one delivery's path; `claims`, `gate`, `outcomes`, `group`, `classify`, `support` |
//! | [`report`] | status, per-row CSV report, formula escaping; [`report::schedule`]: each active batch's share, position and ETA from the scheduler's shares |
//! | [`reconcile`] | nightly roster vs ABDM comparison (`reconcile.rs`: the passes of a resumable run), `roster` (streamed in chunks, staged, looked up), `sweep` (the service's earlier links), `check` (one lookup, the gate: own pace + the fleet's budget), `write` (the report in roster order), `repair` of the service's own state, `fixes` (the link/de-link batches of `--apply`), `output` (progress, CSV) |
//! | [`api`] | `abha-bulk serve`: the programme API (keys per programme, upload, status, report), `guard` (failed-auth throttle, upload slots), `console` (server-side sessions), `webhooks` (the sender task beside the relay, `destination` checks) |
//! | [`http`] | `/metrics`, `/healthz`, `/readyz` |
//! | [`demo`] | the whole pipeline in one process on a generated sample |
//! | [`tour`] | one real call of every operation against ABDM or the sandbox, printed |
//! | [`telemetry`] | tracing subscriber (human/JSON) and the Prometheus registry; `build`: the release and commit of this binary (`--version`, `abha_build_info`) |

pub mod abdm;
pub mod api;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod ingest;
pub mod jobs;
pub mod lifecycle;
pub mod pii;
pub mod queue;
pub mod ratelimit;
pub mod reconcile;
pub mod relay;
pub mod report;
pub mod sandbox;
pub mod scheduler;
pub mod store;
pub mod submit;
pub mod telemetry;
pub mod tour;
pub mod worker;
