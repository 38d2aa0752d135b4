//! A fixed-bucket latency histogram, in Prometheus' shape (cumulative
//! buckets in seconds, a sum and a count).

use serde::Serialize;

/// Upper bounds of the buckets, in seconds (`+Inf` is implied).
pub const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

#[derive(Debug, Clone, Default, Serialize)]
pub struct Histogram {
    /// Observations at or under each bound of [`BUCKETS`] (not cumulative).
    pub counts: [u64; BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    /// `(le, cumulative count)` pairs, ending with `+Inf`.
    pub fn cumulative(&self) -> Vec<(String, u64)> {
        let mut total = 0;
        let mut out: Vec<(String, u64)> = BUCKETS
            .iter()
            .zip(self.counts)
            .map(|(b, c)| {
                total += c;
                (b.to_string(), total)
            })
            .collect();
        out.push(("+Inf".to_owned(), self.count));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_with_the_count() {
        let mut h = Histogram::default();
        for s in [0.00005, 0.002, 0.002, 3.0] {
            h.observe(s);
        }
        let c = h.cumulative();
        assert_eq!(c[0], ("0.0001".to_owned(), 1));
        assert_eq!(c[4], ("0.0025".to_owned(), 3));
        assert_eq!(c.last(), Some(&("+Inf".to_owned(), 4)));
        assert!((h.sum - 3.00405).abs() < 1e-9);
    }
}
