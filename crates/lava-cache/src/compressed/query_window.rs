//! The rolling window of a layer's last `w` queries, kept for re-scoring.
//!
//! Decode appends one query row per step. Concatenating it onto the `w` kept
//! rows and slicing the oldest off copied `2w` rows per layer and step; here the
//! new rows wait as parts and are folded into the kept rows only when the held
//! rows reach `2w` or a re-score needs the window ([`QueryWindow::settle`]), so
//! a decode step copies about 3 rows amortized. The window a re-score sees is
//! the same: the last `min(w, pushed)` rows, oldest first.

use burn::tensor::{backend::Backend, Tensor};

/// Query rows `[H_q, rows, D]`, oldest first, split into parts.
#[derive(Debug, Clone)]
pub(super) struct QueryWindow<B: Backend> {
    parts: Vec<Tensor<B, 3>>,
}

impl<B: Backend> Default for QueryWindow<B> {
    fn default() -> Self {
        Self { parts: Vec::new() }
    }
}

impl<B: Backend> QueryWindow<B> {
    /// Rows held, over all parts.
    fn rows(&self) -> usize {
        self.parts.iter().map(|q| q.dims()[1]).sum()
    }

    /// Appends `q` (`[H_q, t, D]`); keeps at least the last `w` rows.
    pub(super) fn push(&mut self, q: Tensor<B, 3>, w: usize) {
        self.parts.push(q);
        if self.rows() >= 2 * w.max(1) {
            self.settle(w);
        }
    }

    /// Folds the parts into one tensor of the last `min(w, rows)` rows.
    pub(super) fn settle(&mut self, w: usize) {
        let rows = self.rows();
        if self.parts.is_empty() || (self.parts.len() == 1 && rows <= w) {
            return;
        }
        let all = Tensor::cat(std::mem::take(&mut self.parts), 1);
        let [h_q, len, d] = all.dims();
        let keep = w.min(len);
        self.parts = vec![if keep == len { all } else { all.slice([0..h_q, len - keep..len, 0..d]) }];
    }

    /// The settled window (`None` if nothing was pushed or it is not settled).
    pub(super) fn settled(&self) -> Option<&Tensor<B, 3>> {
        match self.parts.as_slice() {
            [q] => Some(q),
            _ => None,
        }
    }

    /// Elements held, parts included.
    pub(super) fn elems(&self) -> usize {
        self.parts.iter().map(|q| q.dims().iter().product::<usize>()).sum()
    }

    /// A window holding `q` (`[H_q, r, D]`, settled).
    pub(super) fn of(q: Tensor<B, 3>) -> Self {
        Self { parts: vec![q] }
    }

    pub(super) fn clear(&mut self) {
        self.parts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use burn_ndarray::NdArray;

    type B = NdArray<f32>;

    /// `[2, t, 3]` rows numbered from `first` (row `i` of head `h` holds `100h + first + i`).
    fn rows(first: usize, t: usize) -> Tensor<B, 3> {
        let v: Vec<f32> = (0..2).flat_map(|h| (0..t).flat_map(move |i| [(100 * h + first + i) as f32; 3])).collect();
        Tensor::from_data(TensorData::new(v, [2, t, 3]), &Default::default())
    }

    #[test]
    fn the_settled_window_is_the_last_w_rows_pushed() {
        for w in [1, 4, 6] {
            for pattern in [vec![1usize; 40], vec![3, 1, 1, 7, 1, 2, 20, 1, 1, 1], vec![2; 9], vec![13]] {
                let mut q = QueryWindow::<B>::default();
                let mut pushed = 0;
                for &t in &pattern {
                    q.push(rows(pushed, t), w);
                    pushed += t;
                    // Fewer than 2w rows at rest.
                    assert!(q.elems() < 2 * w * 2 * 3, "w {w}: {} elems held", q.elems());
                    let mut settled = q.clone();
                    settled.settle(w);
                    let got = settled.settled().expect("settled").clone();
                    let keep = w.min(pushed);
                    assert_eq!(got.dims(), [2, keep, 3]);
                    let want: Vec<f32> = (0..2).flat_map(|h| (pushed - keep..pushed).flat_map(move |i| [(100 * h + i) as f32; 3])).collect();
                    assert_eq!(got.into_data().to_vec::<f32>().expect("f32"), want, "w {w} pattern {pattern:?} after {pushed}");
                }
                q.clear();
                assert_eq!(q.elems(), 0);
                assert!(q.settled().is_none());
            }
        }
    }
}
