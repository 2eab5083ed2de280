//! Normalisation: per input, or per operating regime (k-means on a few inputs).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::manifest::{Normalization, Regimes};

/// A standard deviation below this is treated as a flat signal (scale 1, so it stays 0).
const FLAT_STD: f64 = 1e-6;

/// Mean and standard deviation of each column of `rows`.
pub fn fit(rows: &[&[f32]], cols: usize) -> Normalization {
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0.0f64; cols];
    for r in rows {
        for (m, v) in mean.iter_mut().zip(r.iter()) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0f64; cols];
    for r in rows {
        for ((s, v), m) in var.iter_mut().zip(r.iter()).zip(&mean) {
            *s += (*v as f64 - m).powi(2);
        }
    }
    let std = var.iter().map(|s| (s / n).sqrt()).map(|s| if s < FLAT_STD { 1.0 } else { s }).map(|s| s as f32).collect();
    Normalization { mean: mean.into_iter().map(|m| m as f32).collect(), std }
}

/// True if the column's fitted standard deviation marks it flat.
pub fn std_raw(rows: &[&[f32]], col: usize) -> f64 {
    let n = rows.len().max(1) as f64;
    let mean = rows.iter().map(|r| r[col] as f64).sum::<f64>() / n;
    (rows.iter().map(|r| (r[col] as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

impl Normalization {
    pub fn apply(&self, row: &[f32], out: &mut Vec<f32>) {
        out.extend(row.iter().zip(&self.mean).zip(&self.std).map(|((v, m), s)| (v - m) / s));
    }
}

impl Regimes {
    /// The regime of a raw row: nearest centroid in the scaled `by` columns.
    pub fn regime_of(&self, row: &[f32]) -> usize {
        let mut best = (0, f32::INFINITY);
        for (k, c) in self.centroids.iter().enumerate() {
            let d: f32 = self.by.iter().zip(c).zip(&self.by_scale).map(|((&i, cv), s)| ((row[i] - cv) / s).powi(2)).sum();
            if d < best.1 {
                best = (k, d);
            }
        }
        best.0
    }

    /// Normalises a raw row with its regime's statistics.
    pub fn apply(&self, row: &[f32], out: &mut Vec<f32>) {
        self.stats[self.regime_of(row)].apply(row, out);
    }

    /// Clusters the rows on the `by` columns into `k` regimes (k-means, farthest-point start,
    /// seeded) and fits each regime's normalisation of all columns.
    pub fn fit(rows: &[&[f32]], cols: usize, by: Vec<usize>, k: usize, seed: u64) -> Regimes {
        let by_scale: Vec<f32> = by.iter().map(|&i| std_raw(rows, i).max(FLAT_STD) as f32).collect();
        let point = |r: &[f32]| -> Vec<f32> { by.iter().zip(&by_scale).map(|(&i, s)| r[i] / s).collect() };
        let points: Vec<Vec<f32>> = rows.iter().map(|r| point(r)).collect();
        let dist = |a: &[f32], b: &[f32]| -> f32 { a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum() };
        let mut rng = StdRng::seed_from_u64(seed);
        let k = k.max(1).min(points.len().max(1));
        let mut centres: Vec<Vec<f32>> = Vec::new();
        if !points.is_empty() {
            centres.push(points[rng.gen_range(0..points.len())].clone());
            while centres.len() < k {
                let far = points
                    .iter()
                    .map(|p| centres.iter().map(|c| dist(p, c)).fold(f32::INFINITY, f32::min))
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                centres.push(points[far].clone());
            }
        }
        let mut assign = vec![0usize; points.len()];
        for _ in 0..50 {
            let mut changed = false;
            for (a, p) in assign.iter_mut().zip(&points) {
                let best = centres.iter().enumerate().min_by(|x, y| dist(p, x.1).total_cmp(&dist(p, y.1))).map(|(i, _)| i).unwrap_or(0);
                changed |= *a != best;
                *a = best;
            }
            for (c, centre) in centres.iter_mut().enumerate() {
                let members: Vec<&Vec<f32>> = points.iter().zip(&assign).filter(|(_, &a)| a == c).map(|(p, _)| p).collect();
                if !members.is_empty() {
                    for d in 0..centre.len() {
                        centre[d] = members.iter().map(|m| m[d]).sum::<f32>() / members.len() as f32;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let stats = (0..centres.len())
            .map(|c| {
                let members: Vec<&[f32]> = rows.iter().zip(&assign).filter(|(_, &a)| a == c).map(|(r, _)| *r).collect();
                fit(&members, cols)
            })
            .collect();
        let centroids = centres.iter().map(|c| c.iter().zip(&by_scale).map(|(v, s)| v * s).collect()).collect();
        Regimes { by, by_scale, centroids, stats }
    }
}
