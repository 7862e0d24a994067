//! Fully connected layer from the definition, with the weight stored `(O, I)`
//! as in PyTorch.

use super::Real;
use crate::backend::ParamGrads;
use crate::tensor::HostTensor;

/// Checks `x (N, I)` and `w (O, I)`, returns `(N, I, O)`.
fn dims<F>(what: &str, x: &HostTensor<F>, w: &HostTensor<F>) -> (usize, usize, usize) {
    let [n, i] = x.shape[..] else {
        panic!("{what}: input x must be (N, I), got {:?}", x.shape);
    };
    let [o, wi] = w.shape[..] else {
        panic!("{what}: weight w must be (O, I), got {:?}", w.shape);
    };
    assert_eq!(
        wi, i,
        "{what}: weight w {:?} has {wi} inputs, x {:?} has {i} features",
        w.shape, x.shape
    );
    (n, i, o)
}

/// `Y[n, o] = Σ_i X[n, i]·W[o, i] + b[o]`, i.e. `Y = X·Wᵀ + b`:
/// `x (N, I)`, `w (O, I)`, `b (O)` → `(N, O)`.
pub fn linear_forward<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    b: &HostTensor<F>,
) -> HostTensor<F> {
    let (n_n, i_n, o_n) = dims("linear_forward", x, w);
    assert_eq!(
        b.shape,
        [o_n],
        "linear_forward: bias b has shape {:?}, expected [{o_n}]",
        b.shape
    );
    let mut y = HostTensor::zeros(&[n_n, o_n]);
    for n in 0..n_n {
        for o in 0..o_n {
            let mut acc = b.data[o];
            for i in 0..i_n {
                acc += x.data[n * i_n + i] * w.data[o * i_n + i];
            }
            y.data[n * o_n + o] = acc;
        }
    }
    y
}

/// Gradients of [`linear_forward`] given `dy (N, O)`:
/// `dX = dY·W` `(N, I)`, `dW = dYᵀ·X` `(O, I)`, `db = Σ_n dY[n, ·]` `(O)`.
pub fn linear_backward<F: Real>(
    x: &HostTensor<F>,
    w: &HostTensor<F>,
    dy: &HostTensor<F>,
) -> ParamGrads<HostTensor<F>> {
    let (n_n, i_n, o_n) = dims("linear_backward", x, w);
    assert_eq!(
        dy.shape,
        [n_n, o_n],
        "linear_backward: output gradient dy has shape {:?}, expected [{n_n}, {o_n}]",
        dy.shape
    );
    // dX[n, i] = Σ_o dY[n, o]·W[o, i]
    let mut dx = HostTensor::zeros(&[n_n, i_n]);
    for n in 0..n_n {
        for i in 0..i_n {
            let mut acc = F::zero();
            for o in 0..o_n {
                acc += dy.data[n * o_n + o] * w.data[o * i_n + i];
            }
            dx.data[n * i_n + i] = acc;
        }
    }
    // dW[o, i] = Σ_n dY[n, o]·X[n, i]
    let mut dw = HostTensor::zeros(&[o_n, i_n]);
    for o in 0..o_n {
        for i in 0..i_n {
            let mut acc = F::zero();
            for n in 0..n_n {
                acc += dy.data[n * o_n + o] * x.data[n * i_n + i];
            }
            dw.data[o * i_n + i] = acc;
        }
    }
    // db[o] = Σ_n dY[n, o]
    let mut db = HostTensor::zeros(&[o_n]);
    for o in 0..o_n {
        let mut acc = F::zero();
        for n in 0..n_n {
            acc += dy.data[n * o_n + o];
        }
        db.data[o] = acc;
    }
    ParamGrads { dx, dw, db }
}
