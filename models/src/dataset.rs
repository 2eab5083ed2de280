//! A table for training and evaluation: feature columns, an optional target and an optional
//! group (unit / run) per row. Rows of one group are contiguous and in time order.

use std::ops::Range;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    /// Feature column names, in the order of each row's values.
    pub columns: Vec<String>,
    /// One `Vec` of `columns.len()` values per row, oldest first.
    pub rows: Vec<Vec<f32>>,
    /// Name of the target / label column, if any.
    pub target_name: Option<String>,
    /// Target per row: anomaly label (0/1), lab value, or remaining useful life.
    pub target: Option<Vec<f32>>,
    /// Group (unit, run, batch) per row; `None`: one group.
    pub groups: Option<Vec<String>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row ranges of the groups, in order of appearance (one range if there is no group).
    #[allow(clippy::single_range_in_vec_init)]
    pub fn group_ranges(&self) -> Vec<Range<usize>> {
        let Some(groups) = &self.groups else {
            // One range holding every row (not the rows as a list).
            return if self.rows.is_empty() { vec![] } else { vec![0..self.rows.len()] };
        };
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..=groups.len() {
            if i == groups.len() || groups[i] != groups[start] {
                out.push(start..i);
                start = i;
            }
        }
        out
    }

    /// Index of a feature column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// The rows in `range` as a new dataset (same columns).
    pub fn slice(&self, range: Range<usize>) -> Dataset {
        Dataset {
            columns: self.columns.clone(),
            rows: self.rows[range.clone()].to_vec(),
            target_name: self.target_name.clone(),
            target: self.target.as_ref().map(|t| t[range.clone()].to_vec()),
            groups: self.groups.as_ref().map(|g| g[range].to_vec()),
        }
    }

    /// Appends another table with the same columns (its groups are renamed `prefix`+group so
    /// that units of two files never merge).
    pub fn append(&mut self, other: &Dataset, prefix: &str) {
        let n = self.rows.len();
        self.rows.extend(other.rows.iter().cloned());
        if let (Some(t), Some(o)) = (&mut self.target, &other.target) {
            t.extend_from_slice(o);
        }
        let mine = self.groups.take().unwrap_or_else(|| vec![String::new(); n]);
        let theirs = other.groups.clone().unwrap_or_else(|| vec![String::new(); other.rows.len()]);
        self.groups = Some(mine.into_iter().chain(theirs.into_iter().map(|g| format!("{prefix}{g}"))).collect());
    }

    /// SHA-256 (hex) of the column names, the target name and every value: names the
    /// training data in the manifest.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        for c in &self.columns {
            h.update(c.as_bytes());
            h.update([0]);
        }
        if let Some(t) = &self.target_name {
            h.update(t.as_bytes());
        }
        h.update([1]);
        for (i, row) in self.rows.iter().enumerate() {
            for v in row {
                h.update(v.to_le_bytes());
            }
            if let Some(t) = &self.target {
                h.update(t[i].to_le_bytes());
            }
            if let Some(g) = &self.groups {
                h.update(g[i].as_bytes());
                h.update([0]);
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}
