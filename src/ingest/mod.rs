//! Turning uploads into validated jobs: [`csv`] streams a CSV file into accepted rows and
//! rejections with row, column and reason.

pub mod csv;
