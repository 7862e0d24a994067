//! Softmax cross-entropy against integer labels, computed stably.

use super::Real;
use crate::backend::SoftmaxXent;
use crate::tensor::HostTensor;

/// For `logits (N, K)` and `labels (N)`, with `m_n = max_k x[n, k]` and
/// `lse_n = m_n + ln Σ_k e^(x[n, k] − m_n)`:
/// `loss = (1/N)·Σ_n (lse_n − x[n, label_n])` `(1)`;
/// `correct = #{n : first arg-max of x[n, ·] = label_n}` `(1)`;
/// `grad[n, k] = (e^(x[n, k] − lse_n) − [k = label_n]) / N` `(N, K)`.
pub fn softmax_cross_entropy<F: Real>(
    logits: &HostTensor<F>,
    labels: &[u32],
) -> SoftmaxXent<HostTensor<F>> {
    let [n_n, k_n] = logits.shape[..] else {
        panic!(
            "softmax_cross_entropy: logits must be (N, K), got {:?}",
            logits.shape
        );
    };
    assert_eq!(
        labels.len(),
        n_n,
        "softmax_cross_entropy: {} labels for {n_n} rows of logits",
        labels.len()
    );
    let batch = F::from_usize(n_n);
    let mut loss_sum = F::zero();
    let mut correct = 0usize;
    let mut grad = HostTensor::zeros(&[n_n, k_n]);
    for (n, &label) in labels.iter().enumerate() {
        let label = label as usize;
        assert!(
            label < k_n,
            "softmax_cross_entropy: label {label} of row {n} is not below the number of classes {k_n}"
        );
        let row = &logits.data[n * k_n..(n + 1) * k_n];
        // First arg-max: replace only on strictly greater.
        let mut arg = 0;
        for k in 1..k_n {
            if row[k] > row[arg] {
                arg = k;
            }
        }
        let max = row[arg];
        if arg == label {
            correct += 1;
        }
        let sum_exp: F = row.iter().map(|&v| (v - max).exp()).sum();
        let lse = max + sum_exp.ln();
        loss_sum += lse - row[label];
        for (k, &v) in row.iter().enumerate() {
            let p = (v - lse).exp();
            let onehot = if k == label { F::one() } else { F::zero() };
            grad.data[n * k_n + k] = (p - onehot) / batch;
        }
    }
    SoftmaxXent {
        loss: HostTensor::new(&[1], vec![loss_sum / batch]),
        correct: HostTensor::new(&[1], vec![F::from_usize(correct)]),
        grad,
    }
}
