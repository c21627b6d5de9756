//! Opening an upload before the CSV reader sees it: a UTF-16/32 file is refused by name, a
//! UTF-8 byte-order mark is skipped, the delimiter is chosen from the first line, and every
//! byte read is counted (for progress and for where the last record ends).

use std::io::{self, Chain, Cursor, Read};

use super::csv::IngestError;

/// How far into the file the first line is looked for to choose the delimiter.
const SNIFF_LIMIT: usize = 64 * 1024;

/// The name of a UTF-16/32 encoding recognised by its byte-order mark or by NUL bytes between
/// ASCII characters of the first line.
fn wide_encoding(prefix: &[u8]) -> Option<&'static str> {
    if prefix.starts_with(&[0xFF, 0xFE, 0, 0]) {
        return Some("UTF-32LE");
    }
    if prefix.starts_with(&[0, 0, 0xFE, 0xFF]) {
        return Some("UTF-32BE");
    }
    if prefix.starts_with(&[0xFF, 0xFE]) {
        return Some("UTF-16LE");
    }
    if prefix.starts_with(&[0xFE, 0xFF]) {
        return Some("UTF-16BE");
    }
    let head = &prefix[..prefix.len().min(64)];
    if head.len() >= 4 && head[1] == 0 && head[3] == 0 && head[0] != 0 {
        return Some("UTF-16LE");
    }
    if head.len() >= 4 && head[0] == 0 && head[2] == 0 && head[1] != 0 {
        return Some("UTF-16BE");
    }
    None
}

/// Passes bytes through, counting them. (The file's SHA-256 is taken by `submit` before
/// the batch exists, so it is not computed again here.)
pub(super) struct CountingReader<R> {
    inner: R,
    /// Bytes read so far.
    pub(super) bytes: u64,
    /// The input has ended.
    pub(super) eof: bool,
    /// The last byte read (does the file end with a line break?).
    pub(super) last_byte: Option<u8>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            if !buf.is_empty() {
                self.eof = true;
            }
        } else {
            self.bytes += n as u64;
            self.last_byte = Some(buf[n - 1]);
        }
        Ok(n)
    }
}

/// What the CSV reader reads: the sniffed prefix (after any BOM), then the rest of the input.
pub(super) type Source<R> = Chain<Cursor<Vec<u8>>, CountingReader<R>>;

/// An input ready for the CSV reader.
pub(super) struct Opened<R> {
    /// The bytes to parse.
    pub(super) source: Source<R>,
    /// Bytes of a UTF-8 BOM skipped at the start (not seen by the CSV reader).
    pub(super) bom_len: u64,
    /// `,`, `;` or tab.
    pub(super) delimiter: u8,
}

/// The first complete line of `prefix` that is not blank, if any.
fn first_line(prefix: &[u8]) -> Option<&[u8]> {
    let complete = &prefix[..prefix.iter().rposition(|&b| b == b'\n')?];
    complete
        .split(|&b| b == b'\n')
        .find(|line| !line.trim_ascii().is_empty())
}

/// Chooses the delimiter from the first line: `,` unless the line has none and has `;` or
/// tabs.
fn sniff_delimiter(first_line: &[u8]) -> u8 {
    if first_line.contains(&b',') {
        return b',';
    }
    let semis = first_line.iter().filter(|&&b| b == b';').count();
    let tabs = first_line.iter().filter(|&&b| b == b'\t').count();
    match (semis, tabs) {
        (0, 0) => b',',
        (s, t) if s >= t => b';',
        _ => b'\t',
    }
}

/// Reads the first line (or a bounded prefix) to refuse a wide encoding or an empty file,
/// skip a BOM and choose the delimiter.
pub(super) fn open<R: Read>(reader: R) -> Result<Opened<R>, IngestError> {
    let mut src = CountingReader {
        inner: reader,
        bytes: 0,
        eof: false,
        last_byte: None,
    };
    let mut prefix = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = src.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        prefix.extend_from_slice(&chunk[..n]);
        if first_line(&prefix).is_some() || prefix.len() >= SNIFF_LIMIT {
            break;
        }
    }
    if let Some(encoding) = wide_encoding(&prefix) {
        return Err(IngestError::WrongEncoding(encoding));
    }
    let bom_len = if prefix.starts_with(&[0xEF, 0xBB, 0xBF]) {
        3
    } else {
        0
    };
    let body = &prefix[bom_len..];
    if body.iter().all(u8::is_ascii_whitespace) && src.eof {
        return Err(IngestError::Empty);
    }
    let delimiter = sniff_delimiter(first_line(body).unwrap_or(body));
    let mut cursor = Cursor::new(prefix);
    cursor.set_position(bom_len as u64);
    Ok(Opened {
        source: cursor.chain(src),
        bom_len: bom_len as u64,
        delimiter,
    })
}
