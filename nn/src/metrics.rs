//! Classification metrics: top-k accuracy and averaged loss.

use crate::error::{Error, Result};
use crate::tensor::{class_index, Float, Tensor};

/// How many rows of `scores` (`[N, C]`) have their target class among the
/// `k` highest scores. Ties are broken toward the lower class index.
pub fn top_k_correct<F: Float>(scores: &Tensor<F>, targets: &Tensor<F>, k: usize) -> Result<usize> {
    if scores.ndim() != 2 || targets.ndim() != 1 || targets.len() != scores.shape()[0] {
        return Err(Error::ShapeMismatch {
            op: format!("top-{k} accuracy"),
            lhs: scores.shape().to_vec(),
            rhs: targets.shape().to_vec(),
        });
    }
    let classes = scores.shape()[1];
    let mut correct = 0;
    for (row, &t) in scores.outer_iter().zip(targets.iter()) {
        let t = class_index(&format!("top-{k} accuracy"), t, classes)?;
        let target_score = row[t];
        // rank = number of classes that beat the target (strictly higher, or equal with a lower index)
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(c, &s)| s > target_score || (s == target_score && c < t))
            .count();
        if rank < k {
            correct += 1;
        }
    }
    Ok(correct)
}

/// Results of evaluating a model on a dataset.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// Mean loss over samples.
    pub loss: f64,
    /// Top-1 accuracy in [0, 1].
    pub top1: f64,
    /// Top-5 accuracy in [0, 1].
    pub top5: f64,
    /// Number of samples evaluated.
    pub samples: usize,
}

impl std::fmt::Display for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loss {:.4}, top-1 {:.2}%, top-5 {:.2}% ({} samples)",
            self.loss,
            self.top1 * 100.0,
            self.top5 * 100.0,
            self.samples
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_counts_ranks_with_ties() {
        let s = Tensor::from_shape_vec(
            ndarray::IxDyn(&[3, 3]),
            vec![0.1f32, 0.7, 0.2, 0.5, 0.5, 0.0, 0.3, 0.3, 0.4],
        )
        .unwrap();
        let t = Tensor::from_shape_vec(ndarray::IxDyn(&[3]), vec![1.0f32, 1.0, 0.0]).unwrap();
        assert_eq!(top_k_correct(&s, &t, 1).unwrap(), 1); // row 1: tie lost to class 0
        assert_eq!(top_k_correct(&s, &t, 2).unwrap(), 3);
        let bad = Tensor::from_shape_vec(ndarray::IxDyn(&[3]), vec![1.0f32, 1.0, 7.0]).unwrap();
        assert!(top_k_correct(&s, &bad, 1).is_err());
    }
}
