//! Sample CSV files of every job kind that succeed against a sandbox's own world.
//!
//! The population gives valid identifiers without asking, but some rows also need world state
//! that only calls would create: a de-link needs a link, a child update needs a child. The
//! writer seeds that state directly into the sandbox while it writes the rows, so the files
//! and the world always match. What a row of each kind holds, seeds and gets wrong is the
//! kind's own ([`crate::jobs::kind::Kind::sample_row`]); this file splits the rows between
//! the kinds, adds the mix's mistakes, unknowns and duplicates, writes the files, and lends
//! the sandbox's state to the kinds as a [`SampleWorld`]. Used by `abha-bulk demo` (demo-like mistakes, unknown
//! beneficiaries and duplicates) and by `abha-bulk sandbox --write-samples` (all valid by
//! default), which the chaos run and newcomers use.
//!
//! Deterministic: the same population, seed, rows, mix and benefit give the same files and
//! the same seeded world (X-tokens expire at a UTC day boundary, so files written on the same
//! day are byte-identical).

use std::path::{Path, PathBuf};

use chrono::{NaiveDate, Utc};
use rand::{Rng, RngExt, SeedableRng};

use super::State;
use crate::jobs::kind::JobKind;
use crate::jobs::sample::{Person, SampleRow, SampleWorld, chance};
use crate::pii::{Aadhaar, AbhaNumber, Mobile};

/// What a sample holds besides rows that succeed (percentages of rows).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SampleMix {
    /// Rows with one typical mistake (rejected by `submit` with row, column and reason).
    pub invalid_percent: f64,
    /// Valid rows whose beneficiary ABDM does not know (ABDM-1114).
    pub unknown_percent: f64,
    /// De-link rows whose ABHA was never linked (ABDM-1139).
    pub never_linked_percent: f64,
    /// Rows repeating the previous row exactly (`submit` runs them once).
    pub duplicate_percent: f64,
}

impl SampleMix {
    /// Every row valid and successful: what `--write-samples` writes by default.
    pub const VALID: Self = Self {
        invalid_percent: 0.0,
        unknown_percent: 0.0,
        never_linked_percent: 0.0,
        duplicate_percent: 0.0,
    };
    /// The demo's mix: about 5 % invalid rows, 2 % unknown, 10 % of de-links never linked,
    /// 0.5 % duplicates.
    pub const DEMO: Self = Self {
        invalid_percent: 5.0,
        unknown_percent: 2.0,
        never_linked_percent: 10.0,
        duplicate_percent: 0.5,
    };
}

/// Errors writing samples.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A file could not be written.
    #[error("writing sample {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The population cannot give every kind its own beneficiaries.
    #[error(
        "a population of {population} is too small for {rows} sample rows (needs at least {needed}; raise --population)"
    )]
    PopulationTooSmall {
        /// Population size.
        population: u64,
        /// Rows asked for.
        rows: usize,
        /// Smallest population that fits.
        needed: u64,
    },
}

/// One sample file written.
#[derive(Debug, Clone)]
pub struct SampleFile {
    /// Job kind of every row.
    pub kind: JobKind,
    /// The file.
    pub path: PathBuf,
    /// Rows in it (header excluded).
    pub rows: usize,
}

/// When the sample's X-tokens expire: the UTC midnight at least 24 h away, so a file stays
/// usable for a day and files written on the same day are identical.
pub fn x_token_expiry(now_unix: i64) -> i64 {
    (now_unix.div_euclid(86_400) + 2) * 86_400
}

/// Rows per kind for `rows` rows in all: each kind's share is its
/// [`JobKind::sample_weight`] over the sum of all weights, rounded half up.
pub fn rows_per_kind(rows: usize) -> Vec<(JobKind, usize)> {
    let total: u64 = JobKind::ALL
        .iter()
        .map(|k| u64::from(k.sample_weight()))
        .sum();
    JobKind::ALL
        .iter()
        .map(|k| {
            let scaled = rows as u64 * u64::from(k.sample_weight());
            (*k, ((2 * scaled + total) / (2 * total.max(1))) as usize)
        })
        .collect()
}

/// Writes one file per kind into `dir` (`<kind>.csv`), splitting `rows` by the kinds' sample
/// weights ([`rows_per_kind`]), each kind on its own beneficiaries, and seeds the sandbox
/// with what the rows need.
pub fn write_samples(
    sandbox: &State,
    dir: &Path,
    rows: usize,
    benefit: &str,
    mix: SampleMix,
    rng: &mut impl Rng,
) -> Result<Vec<SampleFile>, SampleError> {
    let per_kind = rows_per_kind(rows);
    let widest = per_kind.iter().map(|(_, n)| *n as u64).max().unwrap_or(0);
    // Each kind starts on a round index, so rows of two kinds never share a beneficiary
    // (a link and a de-link of the same ABHA would race).
    let stride = (widest / 1_000 + 1) * 1_000;
    let needed = stride * per_kind.len() as u64;
    let population = sandbox.population().size();
    if needed > population {
        return Err(SampleError::PopulationTooSmall {
            population,
            rows,
            needed,
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| SampleError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let expires = x_token_expiry(Utc::now().timestamp());
    let mut files = Vec::new();
    for (n, (kind, count)) in per_kind.into_iter().enumerate() {
        let spec = SampleSpec {
            kind,
            rows: count,
            base: n as u64 * stride,
            benefit,
            mix,
            x_token_expires: expires,
        };
        let path = write_sample(dir, &spec, sandbox, rng)?;
        files.push(SampleFile {
            kind,
            path,
            rows: count,
        });
    }
    Ok(files)
}

/// [`write_samples`] with the generator seeded from the sandbox's own seed: what
/// `abha-bulk sandbox --write-samples` runs.
pub fn write_samples_seeded(
    sandbox: &State,
    dir: &Path,
    rows: usize,
    benefit: &str,
    mix: SampleMix,
) -> Result<Vec<SampleFile>, SampleError> {
    let seed = sandbox.population().seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5a3b_1e00);
    write_samples(sandbox, dir, rows, benefit, mix, &mut rng)
}

/// One kind's file.
#[derive(Debug, Clone)]
pub struct SampleSpec<'a> {
    /// Kind.
    pub kind: JobKind,
    /// Rows.
    pub rows: usize,
    /// Index of the first beneficiary (keeps kinds on distinct people).
    pub base: u64,
    /// Benefit the de-link rows are seeded as linked to.
    pub benefit: &'a str,
    /// Mistakes, unknowns and duplicates.
    pub mix: SampleMix,
    /// Expiry of the parents' X-tokens (unix seconds).
    pub x_token_expires: i64,
}

/// Writes the sample file of one kind (`dir/<kind>.csv`, complete once it exists: it is
/// written beside and renamed); returns its path.
pub fn write_sample(
    dir: &Path,
    spec: &SampleSpec<'_>,
    sandbox: &State,
    rng: &mut impl Rng,
) -> Result<PathBuf, SampleError> {
    let path = dir.join(format!("{}.csv", spec.kind.as_str()));
    let tmp = dir.join(format!(".{}.csv.partial", spec.kind.as_str()));
    let io = |source: std::io::Error| SampleError::Io {
        path: path.clone(),
        source,
    };
    let mut w = csv::Writer::from_path(&tmp).map_err(|e| io(e.into()))?;
    w.write_record(spec.kind.sample_header())
        .map_err(|e| io(e.into()))?;
    let mut previous: Option<Vec<String>> = None;
    for i in 0..spec.rows {
        if let Some(prev) = previous
            .as_ref()
            .filter(|_| rng.random_bool(chance(spec.mix.duplicate_percent)))
        {
            w.write_record(prev).map_err(|e| io(e.into()))?;
            continue;
        }
        let mut rec = row(spec, i, sandbox, rng);
        if rng.random_bool(chance(spec.mix.invalid_percent)) {
            spec.kind.corrupt_sample(&mut rec, rng);
        }
        w.write_record(&rec).map_err(|e| io(e.into()))?;
        previous = Some(rec);
    }
    w.flush().map_err(io)?;
    drop(w);
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(path)
}

/// Row `i` of a kind: the person and the unknown-beneficiary draw are common to every kind,
/// the cells (and the world state they need) are the kind's.
fn row(spec: &SampleSpec<'_>, i: usize, sandbox: &State, rng: &mut impl Rng) -> Vec<String> {
    let index = spec.base + i as u64;
    let person = SampleWorld::person(sandbox, index);
    let unknown = rng.random_bool(chance(spec.mix.unknown_percent));
    let abha = if unknown {
        SampleWorld::abha(sandbox, sandbox.population().size() + 5_000_000 + index)
    } else {
        person.abha.clone()
    };
    let row = SampleRow {
        world: sandbox,
        i,
        index,
        person,
        abha,
        unknown,
        reference: format!("DEMO-{}-{i:06}", spec.kind.as_str()),
        benefit: spec.benefit,
        never_linked_percent: spec.mix.never_linked_percent,
        x_token_expires: spec.x_token_expires,
    };
    spec.kind.sample_row(&row, rng)
}

/// The sandbox's population and world, as the kinds' sample rows see them.
impl SampleWorld for State {
    fn size(&self) -> u64 {
        self.population().size()
    }

    fn person(&self, index: u64) -> Person {
        self.population().person(index)
    }

    fn abha(&self, index: u64) -> AbhaNumber {
        self.population().abha(index)
    }

    fn mobile(&self, index: u64) -> Mobile {
        self.population().mobile(index)
    }

    fn unknown_aadhaar(&self, k: u64) -> Aadhaar {
        self.population().unknown_aadhaar(k)
    }

    fn x_token(&self, abha: &AbhaNumber, expires_unix: i64) -> String {
        self.population().x_token(abha, expires_unix)
    }

    fn seed_link(&self, benefit: &str, abha: &AbhaNumber) {
        self.set_linked(benefit, &abha.digits(), true);
    }

    fn seed_child(
        &self,
        parent: &AbhaNumber,
        name: &str,
        dob: NaiveDate,
        gender: &str,
    ) -> AbhaNumber {
        State::seed_child(self, parent, name, dob, gender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{KeySource, Sandbox, SandboxConfig};

    async fn sandbox() -> Sandbox {
        Sandbox::start(SandboxConfig {
            key: KeySource::Pem(
                std::fs::read_to_string("tests/fixtures/test-key-2048.pem").expect("key"),
            ),
            population: 20_000,
            ..SandboxConfig::default()
        })
        .await
        .expect("sandbox")
    }

    fn read_all(files: &[SampleFile]) -> Vec<String> {
        files
            .iter()
            .map(|f| std::fs::read_to_string(&f.path).expect("sample"))
            .collect()
    }

    #[tokio::test]
    async fn samples_are_deterministic_and_seed_the_world() {
        let (a, b) = (sandbox().await, sandbox().await);
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let fa = write_samples_seeded(a.state(), da.path(), 900, "PMJAY", SampleMix::VALID)
            .expect("samples");
        let fb = write_samples_seeded(b.state(), db.path(), 900, "PMJAY", SampleMix::VALID)
            .expect("samples");
        assert_eq!(fa.len(), 9);
        assert_eq!(fa.iter().map(|f| f.rows).sum::<usize>(), 900);
        assert_eq!(read_all(&fa), read_all(&fb));
        // Every de-link row's ABHA (or Aadhaar's person) is linked in the world.
        let delink = fa
            .iter()
            .find(|f| f.kind == JobKind::BenefitDelink)
            .unwrap();
        let mut r = csv::Reader::from_path(&delink.path).unwrap();
        let pop = a.state().population();
        for rec in r.records() {
            let rec = rec.unwrap();
            let digits = if rec[1].is_empty() {
                let aadhaar = crate::pii::Aadhaar::parse(&rec[2]).unwrap();
                pop.abha(pop.aadhaar_index(&aadhaar).unwrap()).digits()
            } else {
                crate::pii::AbhaNumber::parse(&rec[1]).unwrap().digits()
            };
            assert!(a.state().is_linked("PMJAY", &digits));
        }
        a.shutdown().await;
        b.shutdown().await;
    }

    /// Each kind's own sample rows: the valid ones pass `submit`'s validation, the corrupted
    /// ones do not.
    #[tokio::test]
    async fn every_kind_writes_valid_rows_and_invalid_ones_when_asked() {
        use crate::ingest::csv::{CsvIngest, RowResult};
        let s = sandbox().await;
        for (mix, valid) in [
            (SampleMix::VALID, true),
            (
                SampleMix {
                    invalid_percent: 100.0,
                    ..SampleMix::VALID
                },
                false,
            ),
        ] {
            let d = tempfile::tempdir().unwrap();
            let files =
                write_samples(s.state(), d.path(), 450, "PMJAY", mix, &mut rand::rng()).unwrap();
            for f in &files {
                let file = std::fs::File::open(&f.path).unwrap();
                let today = Utc::now().date_naive();
                let rows = CsvIngest::new(std::io::BufReader::new(file), f.kind, today).unwrap();
                let mut n = 0;
                for row in rows {
                    n += 1;
                    let accepted = matches!(row.unwrap(), RowResult::Accepted(_));
                    assert_eq!(accepted, valid, "{}", f.kind);
                }
                assert_eq!(n, f.rows, "{}", f.kind);
            }
        }
        s.shutdown().await;
    }

    #[tokio::test]
    async fn too_small_a_population_is_refused() {
        let s = sandbox().await;
        let d = tempfile::tempdir().unwrap();
        let e = write_samples_seeded(s.state(), d.path(), 100_000, "PMJAY", SampleMix::VALID)
            .unwrap_err();
        assert!(matches!(e, SampleError::PopulationTooSmall { .. }));
        s.shutdown().await;
    }

    #[test]
    fn x_tokens_expire_at_a_day_boundary_a_day_away() {
        let now = 1_764_000_123;
        let exp = x_token_expiry(now);
        assert_eq!(exp % 86_400, 0);
        assert!(exp - now >= 86_400 && exp - now < 2 * 86_400);
    }
}
