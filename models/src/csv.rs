//! A generic CSV reader: any plant's export or public data set → [`Dataset`], by naming the
//! separator, the time column (dropped), the feature columns, the target / label column and
//! the group (unit) column. Blank lines are skipped; an empty target cell is "no lab value"
//! (NaN, skipped by training); any other unreadable cell is an error naming line and column.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::dataset::Dataset;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Separator {
    /// Guess from the first line: `;`, then `,`, then tab, else runs of whitespace.
    Auto,
    Char(char),
    /// Runs of spaces / tabs (fixed-width exports, C-MAPSS).
    Whitespace,
}

#[derive(Debug, Clone)]
pub struct CsvOptions {
    pub separator: Separator,
    /// The first non-blank line names the columns; otherwise they are `c1`, `c2`, … or `names`.
    pub header: bool,
    /// Column names for a file without a header.
    pub names: Option<Vec<String>>,
    /// Time stamp column: dropped from the features (rows must already be in time order).
    pub time: Option<String>,
    /// Feature columns, in order; `None`: every column that is not time, target, group or dropped.
    pub columns: Option<Vec<String>>,
    /// Columns to leave out of the default feature set.
    pub drop: Vec<String>,
    /// Target (lab value, RUL) or label (anomaly 0/1) column.
    pub target: Option<String>,
    /// Group (unit, run) column.
    pub group: Option<String>,
    /// Only these data rows (0-based, after the header), e.g. a chronological split.
    pub rows: Option<Range<usize>>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            separator: Separator::Auto,
            header: true,
            names: None,
            time: None,
            columns: None,
            drop: vec![],
            target: None,
            group: None,
            rows: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: empty file")]
    Empty { path: PathBuf },
    #[error("{path}: no column {name:?} (columns: {available})")]
    Column { path: PathBuf, name: String, available: String },
    #[error("{path}:{line}: column {column:?}: {text:?} is not a number")]
    Value { path: PathBuf, line: usize, column: String, text: String },
    #[error("{path}:{line}: {found} fields, the header has {expected}")]
    Ragged { path: PathBuf, line: usize, found: usize, expected: usize },
}

fn split(line: &str, sep: Separator) -> Vec<&str> {
    match sep {
        Separator::Whitespace | Separator::Auto => line.split_whitespace().collect(),
        Separator::Char(c) => line.split(c).map(|f| f.trim().trim_matches('"')).collect(),
    }
}

fn guess(line: &str) -> Separator {
    for c in [';', ',', '\t'] {
        if line.contains(c) {
            return Separator::Char(c);
        }
    }
    Separator::Whitespace
}

/// Reads `path` into a dataset.
pub fn read(path: &Path, opts: &CsvOptions) -> Result<Dataset, CsvError> {
    let text = std::fs::read_to_string(path).map_err(|source| CsvError::Io { path: path.to_path_buf(), source })?;
    parse(path, &text, opts)
}

/// Parses CSV text (`path` only names it in errors).
pub fn parse(path: &Path, text: &str, opts: &CsvOptions) -> Result<Dataset, CsvError> {
    let p = || path.to_path_buf();
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((_, first)) = lines.clone().next() else {
        return Err(CsvError::Empty { path: p() });
    };
    let sep = if opts.separator == Separator::Auto { guess(first) } else { opts.separator };
    let names: Vec<String> = if opts.header {
        lines.next();
        split(first, sep).into_iter().map(str::to_string).collect()
    } else if let Some(n) = &opts.names {
        n.clone()
    } else {
        (1..=split(first, sep).len()).map(|i| format!("c{i}")).collect()
    };
    let find = |name: &str| -> Result<usize, CsvError> {
        names.iter().position(|n| n == name).ok_or_else(|| CsvError::Column {
            path: p(),
            name: name.to_string(),
            available: names.join(", "),
        })
    };
    let time = opts.time.as_deref().map(find).transpose()?;
    let target = opts.target.as_deref().map(find).transpose()?;
    let group = opts.group.as_deref().map(find).transpose()?;
    let dropped = opts.drop.iter().map(|d| find(d)).collect::<Result<Vec<_>, _>>()?;
    let features: Vec<usize> = match &opts.columns {
        Some(cols) => cols.iter().map(|c| find(c)).collect::<Result<_, _>>()?,
        None => (0..names.len()).filter(|i| Some(*i) != time && Some(*i) != target && Some(*i) != group && !dropped.contains(i)).collect(),
    };
    let mut ds = Dataset {
        columns: features.iter().map(|&i| names[i].clone()).collect(),
        target_name: target.map(|i| names[i].clone()),
        target: target.map(|_| Vec::new()),
        groups: group.map(|_| Vec::new()),
        ..Dataset::default()
    };
    for (index, (line_no, line)) in lines.enumerate() {
        if let Some(r) = &opts.rows {
            if index < r.start {
                continue;
            }
            if index >= r.end {
                break;
            }
        }
        let line_no = line_no + 1;
        let fields = split(line, sep);
        if fields.len() != names.len() {
            return Err(CsvError::Ragged { path: p(), line: line_no, found: fields.len(), expected: names.len() });
        }
        let num = |i: usize| -> Result<f32, CsvError> {
            fields[i].parse::<f32>().map_err(|_| CsvError::Value {
                path: p(),
                line: line_no,
                column: names[i].clone(),
                text: fields[i].to_string(),
            })
        };
        ds.rows.push(features.iter().map(|&i| num(i)).collect::<Result<_, _>>()?);
        if let (Some(i), Some(t)) = (target, &mut ds.target) {
            t.push(if fields[i].is_empty() { f32::NAN } else { num(i)? });
        }
        if let (Some(i), Some(g)) = (group, &mut ds.groups) {
            g.push(fields[i].to_string());
        }
    }
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semicolon_file_with_time_label_and_dropped_column_reads_the_features_in_order() {
        let text = "datetime;a;b;anomaly;changepoint\n2020-01-01 00:00:00;1.5;2;0;0\n\n2020-01-01 00:00:01;1.0e-001;3;1;1\n";
        let opts = CsvOptions {
            time: Some("datetime".into()),
            target: Some("anomaly".into()),
            drop: vec!["changepoint".into()],
            ..Default::default()
        };
        let ds = parse(Path::new("x.csv"), text, &opts).unwrap();
        assert_eq!(ds.columns, vec!["a", "b"]);
        assert_eq!(ds.rows, vec![vec![1.5, 2.0], vec![0.1, 3.0]]);
        assert_eq!(ds.target, Some(vec![0.0, 1.0]));
    }

    #[test]
    fn headerless_whitespace_file_with_groups_and_a_row_range() {
        let text = "1 1 0.5\n1 2 0.6\n2 1 0.7\n";
        let opts = CsvOptions { header: false, group: Some("c1".into()), time: Some("c2".into()), rows: Some(1..3), ..Default::default() };
        let ds = parse(Path::new("x.txt"), text, &opts).unwrap();
        assert_eq!(ds.columns, vec!["c3"]);
        assert_eq!(ds.rows, vec![vec![0.6], vec![0.7]]);
        assert_eq!(ds.group_ranges(), vec![0..1, 1..2]);
    }

    #[test]
    fn a_bad_cell_is_reported_with_its_line_and_column() {
        let err = parse(Path::new("x.csv"), "a,b\n1,2\n3,oops\n", &CsvOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), "x.csv:3: column \"b\": \"oops\" is not a number");
        let err = parse(Path::new("x.csv"), "a,b\n1,2\n", &CsvOptions { target: Some("y".into()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("no column \"y\""), "{err}");
    }
}
