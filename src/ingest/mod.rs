//! Turning uploads into validated jobs: [`csv`] streams a CSV file into accepted rows and
//! rejections with row, column and reason; `sniff` opens the input (encoding, BOM,
//! delimiter) and `header` maps its header row to the kind's fields.

pub mod csv;
mod header;
mod sniff;
