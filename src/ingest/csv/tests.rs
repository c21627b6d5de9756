//! Tests of the CSV ingest: encodings, delimiters, row numbering, header mapping, rejections.

use super::*;
use crate::pii::verhoeff;

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 10).unwrap()
}

fn aadhaar(body: &str) -> String {
    format!("{body}{}", verhoeff::check_digit(body))
}

fn ingest(kind: JobKind, data: &[u8]) -> CsvIngest<&[u8]> {
    CsvIngest::new(data, kind, today()).expect("header accepted")
}

/// All results, panicking on an I/O error.
fn collect(kind: JobKind, data: &[u8]) -> (Vec<CsvRow>, Vec<Rejection>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for r in ingest(kind, data) {
        match r.expect("no I/O error") {
            RowResult::Accepted(row) => ok.push(row),
            RowResult::Rejected(rej) => bad.push(rej),
        }
    }
    (ok, bad)
}

fn numbers(rows: &[CsvRow]) -> Vec<u64> {
    rows.iter().map(|r| r.row_number).collect()
}

#[test]
fn bom_crlf_and_quoted_cells() {
    let data = "\u{FEFF}abha_number,external_ref\r\n\
                91-1234-5678-9012,\"ref, with \"\"quotes\"\"\r\nand a new line\"\r\n\
                91123456789013,plain\r\n";
    let (ok, bad) = collect(JobKind::BenefitLink, data.as_bytes());
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(numbers(&ok), [1, 2]);
    assert_eq!(
        ok[0].external_ref.as_deref(),
        Some("ref, with \"quotes\"\r\nand a new line")
    );
    assert_eq!(ok[1].external_ref.as_deref(), Some("plain"));
    assert_eq!(ok[1].job.subject(), "91-1234-5678-9013");
}

#[test]
fn aliases_and_warnings() {
    let data = "Ref,ABHA Number,Comments\nA1,91-1234-5678-9012,hello\n";
    let ing = ingest(JobKind::BenefitLookup, data.as_bytes());
    assert_eq!(ing.warnings().len(), 1);
    assert!(ing.warnings()[0].contains("'Comments'"));
    let rows: Vec<_> = ing.map(Result::unwrap).collect();
    let [RowResult::Accepted(row)] = rows.as_slice() else {
        panic!("{rows:?}")
    };
    assert_eq!(row.external_ref.as_deref(), Some("A1"));
    assert_eq!(row.job.subject(), "91-1234-5678-9012");

    let data = "Aadhaar No,Name,DOB,Sex,LGD State Code,lgd_district_code,Phone,PIN\n";
    assert!(CsvIngest::new(data.as_bytes(), JobKind::AbhaCreateDemo, today()).is_ok());
}

#[test]
fn missing_columns_named() {
    let data = "name,dob,Notes\nRavi Kumar,01-01-1990,x\n";
    let err = CsvIngest::new(data.as_bytes(), JobKind::AbhaCreateDemo, today())
        .err()
        .expect("missing columns");
    let IngestError::MissingColumns { missing, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        missing,
        &["aadhaar", "gender", "state_code", "district_code"]
    );
    let msg = err.to_string();
    assert!(msg.contains("'Notes'"), "{msg}");
    assert!(msg.contains("uid"), "hint at aliases: {msg}");

    let err = CsvIngest::new(
        "external_ref\nA\n".as_bytes(),
        JobKind::BenefitLink,
        today(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("abha_number or aadhaar"), "{err}");

    // A headerless file: the first line (data) is not echoed.
    let err = CsvIngest::new(
        "91-1234-5678-9012,Ravi Kumar\n".as_bytes(),
        JobKind::BenefitLookup,
        today(),
    )
    .err()
    .unwrap();
    let msg = err.to_string();
    assert!(!msg.contains("5678") && !msg.contains("Ravi"), "{msg}");
    assert!(msg.contains("header row missing"), "{msg}");
}

#[test]
fn file_level_errors() {
    let empty = CsvIngest::new(&b""[..], JobKind::AbhaFind, today());
    assert!(matches!(empty, Err(IngestError::Empty)));
    let bom_only = CsvIngest::new(&b"\xEF\xBB\xBF\r\n\n"[..], JobKind::AbhaFind, today());
    assert!(matches!(bom_only, Err(IngestError::Empty)));
    let no_header = CsvIngest::new(&b",,\n1,2,3\n"[..], JobKind::AbhaFind, today());
    assert!(matches!(no_header, Err(IngestError::NoHeader { .. })));
    let dup = CsvIngest::new(&b"mobile,Phone\n"[..], JobKind::AbhaFind, today());
    let Err(IngestError::DuplicateColumn { field, columns }) = dup else {
        panic!("expected a duplicate column error")
    };
    assert_eq!(field, "mobile");
    assert_eq!(columns, ["'mobile'", "'Phone'"]);
}

#[test]
fn wrong_cell_count_rejects_row() {
    let data = "mobile,external_ref\n9876543210\n9876543211,r2,extra\n9876543212,r3\n";
    let (ok, bad) = collect(JobKind::AbhaFind, data.as_bytes());
    assert_eq!(numbers(&ok), [3]);
    assert_eq!(bad.len(), 2);
    assert_eq!(bad[0].row_number, 1);
    assert_eq!(bad[0].column, "*");
    assert!(bad[0].reason.contains("1 cells but the header has 2"));
    assert_eq!(bad[1].row_number, 2);
    assert!(bad[1].reason.contains("3 cells"));
    assert_eq!(bad[1].external_ref.as_deref(), Some("r2"));
}

#[test]
fn a_nul_byte_rejects_only_its_row_and_utf16_is_named() {
    let mut data = b"child_name,parent_x_token,child_dob,child_gender,external_ref\n".to_vec();
    data.extend_from_slice(b"Asha,tok1,01-01-2020,F,a\n");
    data.extend_from_slice(b"Rena,tok2,01-01-2020,F,b\0c\n");
    data.extend_from_slice(b"Meena,tok3,01-01-2020,F,d\n");
    let (ok, bad) = collect(JobKind::ChildCreate, &data);
    assert_eq!(numbers(&ok), [1, 3]);
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].row_number, 2);
    assert_eq!(bad[0].column, "external_ref");
    assert!(bad[0].reason.contains("NUL"), "{}", bad[0].reason);
    let utf16: Vec<u8> = "\u{FEFF}mobile\r\n9876543210\r\n"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let err = CsvIngest::new(&utf16[..], JobKind::AbhaFind, today()).err();
    assert!(
        matches!(err, Some(IngestError::WrongEncoding("UTF-16LE"))),
        "{err:?}"
    );
    assert!(err.unwrap().to_string().contains("UTF-16LE"));
}

#[test]
fn non_utf8_rejects_only_its_row() {
    let mut data = b"child_name,parent_x_token,child_dob,child_gender\n".to_vec();
    data.extend_from_slice(b"Asha,tok1,01-01-2020,F\n");
    data.extend_from_slice(b"R\xE9na,tok2,01-01-2020,F\n");
    data.extend_from_slice(b"Meena,tok3,01-01-2020,F\n");
    let (ok, bad) = collect(JobKind::ChildCreate, &data);
    assert_eq!(numbers(&ok), [1, 3]);
    assert_eq!(
        bad,
        [Rejection {
            row_number: 2,
            external_ref: None,
            column: "child_name".into(),
            reason: NOT_UTF8.into(),
        }]
    );
}

#[test]
fn several_field_errors_joined() {
    let data = "aadhaar,name,dob,gender,state_code,district_code\n\
                123,Ravi Kumar,01-01-1990,Q,9,143\n";
    let (_, bad) = collect(JobKind::AbhaCreateDemo, data.as_bytes());
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].column, "aadhaar");
    assert_eq!(
        bad[0].reason,
        "aadhaar: Aadhaar number must be 12 digits; gender: gender must be M, F or O"
    );
    let long = "x".repeat(101);
    let data = format!("mobile,external_ref\n9876543210,{long}\n");
    let (_, bad) = collect(JobKind::AbhaFind, data.as_bytes());
    assert_eq!(bad[0].column, "external_ref");
    assert!(bad[0].reason.contains("at most 100"));
}

#[test]
fn empty_rows_skipped_but_counted() {
    let data =
        "mobile,external_ref\n\n9876543210,a\n,\n  ,  \n\r\n9876543211,\"b\nc\"\n\n9876543212,d";
    let (ok, bad) = collect(JobKind::AbhaFind, data.as_bytes());
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(numbers(&ok), [2, 6, 8]);
    // The same with CRLF and a trailing empty line.
    let crlf = data.replace('\n', "\r\n") + "\r\n";
    let (ok, _) = collect(JobKind::AbhaFind, crlf.as_bytes());
    assert_eq!(numbers(&ok), [2, 6, 8]);
}

#[test]
fn row_numbers_with_leading_blanks_and_final_quoted_newline() {
    let data = "\n\r\nmobile;external_ref\n9876543210;\"a\n\nb\"\n\n9876543211;\"c\nd\"";
    let (ok, bad) = collect(JobKind::AbhaFind, data.as_bytes());
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(numbers(&ok), [1, 3]);
    assert_eq!(ok[1].external_ref.as_deref(), Some("c\nd"));
    // Debug output of a row is masked.
    assert!(!format!("{:?}", ok[0]).contains("987654"));
}

#[test]
fn semicolon_and_tab_delimited() {
    let aad = aadhaar("23456789012");
    let data = format!("Aadhaar;External Ref\n{aad};\"a;b\"\n");
    let (ok, bad) = collect(JobKind::BenefitSearch, data.as_bytes());
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(ok[0].external_ref.as_deref(), Some("a;b"));
    assert_eq!(ok[0].job.subject(), aad);
    let data = format!("aadhaar\texternal_ref\n{aad}\tx,y\n");
    let (ok, bad) = collect(JobKind::BenefitSearch, data.as_bytes());
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(ok[0].external_ref.as_deref(), Some("x,y"));
}

#[test]
fn bytes_of_whole_file() {
    let data = "\u{FEFF}mobile\r\n9876543210\r\n9876543211\r\n".as_bytes();
    let mut ing = ingest(JobKind::AbhaFind, data);
    assert_eq!(ing.by_ref().count(), 2);
    assert_eq!(ing.bytes_read(), data.len() as u64);
}

/// Produces a large CSV on the fly, so the test itself holds no file.
struct Generated {
    rows: u64,
    next: u64,
    pending: Vec<u8>,
    bytes: u64,
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            if self.next > self.rows {
                return Ok(0);
            }
            let line = if self.next == 0 {
                "abha_number,external_ref\n".to_string()
            } else if self.next % 1000 == 0 {
                format!("91-0000-{:04}-12,bad-{}\n", self.next % 10_000, self.next)
            } else {
                format!(
                    "91-{:04}-{:04}-{:04},ref-{}\n",
                    self.next / 100_000_000,
                    self.next / 10_000 % 10_000,
                    self.next % 10_000,
                    self.next
                )
            };
            self.bytes += line.len() as u64;
            self.pending = line.into_bytes();
            self.next += 1;
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

#[test]
fn large_file_streams() {
    let mut gen_reader = Generated {
        rows: 100_000,
        next: 0,
        pending: Vec::new(),
        bytes: 0,
    };
    let mut ing = CsvIngest::new(&mut gen_reader, JobKind::BenefitLookup, today()).unwrap();
    let (mut ok, mut bad, mut last) = (0u64, 0u64, 0u64);
    for r in ing.by_ref() {
        match r.unwrap() {
            RowResult::Accepted(row) => {
                ok += 1;
                assert_eq!(row.row_number, last + 1);
                last = row.row_number;
            }
            RowResult::Rejected(rej) => {
                bad += 1;
                assert_eq!(rej.row_number % 1000, 0);
                assert_eq!(rej.column, "abha_number");
                last = rej.row_number;
            }
        }
    }
    assert_eq!((ok, bad, last), (99_900, 100, 100_000));
    let bytes = ing.bytes_read();
    drop(ing);
    assert_eq!(bytes, gen_reader.bytes);
}

#[test]
fn io_error_mid_file_is_reported() {
    struct Failing(Vec<u8>);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }
    let ing = CsvIngest::new(
        Failing(b"mobile\n9876543210\n98765".to_vec()),
        JobKind::AbhaFind,
        today(),
    )
    .unwrap();
    let items: Vec<_> = ing.collect();
    assert!(matches!(items.last(), Some(Err(IngestError::Io(_)))));
}

#[test]
fn example_files_have_no_rejections() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for kind in JobKind::ALL {
        let path = dir.join(format!("{kind}.csv"));
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let ing = CsvIngest::new(file, kind, today()).unwrap();
        assert!(ing.warnings().is_empty(), "{kind}: {:?}", ing.warnings());
        let mut accepted = 0;
        for r in ing {
            match r.unwrap() {
                RowResult::Accepted(row) => {
                    accepted += 1;
                    assert!(row.external_ref.is_some(), "{kind} row {}", row.row_number);
                }
                RowResult::Rejected(rej) => panic!("{kind}: {rej:?}"),
            }
        }
        assert!((5..=10).contains(&accepted), "{kind}: {accepted} rows");
    }
}

#[test]
fn docs_cover_every_kind_and_column() {
    let docs = include_str!("../../../docs/csv-formats.md");
    for kind in JobKind::ALL {
        let heading = format!("## {kind}");
        let start = docs
            .find(&heading)
            .unwrap_or_else(|| panic!("no section {heading}"));
        let section = &docs[start..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        for c in kind.columns() {
            assert!(
                section.contains(&format!("`{}`", c.name)),
                "{kind}: {}",
                c.name
            );
            for a in c.aliases {
                assert!(section.contains(a), "{kind}: alias {a}");
            }
        }
    }
    for a in EXTERNAL_REF.aliases {
        assert!(docs.contains(a), "external_ref alias {a}");
    }
}

#[test]
fn external_ref_aliases_do_not_clash() {
    for kind in JobKind::ALL {
        for c in kind.columns() {
            for n in std::iter::once(&EXTERNAL_REF.name).chain(EXTERNAL_REF.aliases) {
                assert!(!c.matches(n), "{kind}: {n}");
            }
        }
    }
}
