//! Elementwise activations and their derivatives.

use super::Real;
use crate::geometry::Activation;
use crate::tensor::HostTensor;

/// How an elementwise op walks its elements: in order on the calling thread
/// ([`InOrder`], the reference), or in runs over the CPU training path's
/// pool (`fast::OverThePool`). Each element's value is the same either way.
pub(super) trait Elementwise {
    /// `f(v)` for every `v` of `input`, in order.
    fn map<F: Real>(input: &[F], f: impl Fn(F) -> F + Sync) -> Vec<F>;
    /// `f(a[i], b[i])` for every `i` (`a` and `b` of one length), in order.
    fn zip_map<F: Real>(a: &[F], b: &[F], f: impl Fn(F, F) -> F + Sync) -> Vec<F>;
}

/// The reference's walk: one element after another on the calling thread.
pub(super) struct InOrder;

impl Elementwise for InOrder {
    fn map<F: Real>(input: &[F], f: impl Fn(F) -> F + Sync) -> Vec<F> {
        input.iter().map(|&v| f(v)).collect()
    }

    fn zip_map<F: Real>(a: &[F], b: &[F], f: impl Fn(F, F) -> F + Sync) -> Vec<F> {
        a.iter().zip(b).map(|(&a, &b)| f(a, b)).collect()
    }
}

/// `max(x, 0)`, as `x <= 0 → 0` rather than `x > 0 → x` so that a NaN
/// passes through, as in PyTorch.
pub(super) fn relu<F: Real>(x: F) -> F {
    if x <= F::zero() { F::zero() } else { x }
}

/// `x > 0 ? x : slope·x`.
pub(super) fn leaky_relu<F: Real>(slope: F, x: F) -> F {
    if x > F::zero() { x } else { slope * x }
}

/// `1 / (1 + e^(−x))` without overflow: for `x < 0` it is computed as
/// `e^x / (1 + e^x)`, so the exponential never exceeds 1.
pub(super) fn sigmoid<F: Real>(x: F) -> F {
    if x >= F::zero() {
        F::one() / (F::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (F::one() + e)
    }
}

/// `f'` at one element, from the input `x` (relu, leaky relu) or the output `y`
/// (sigmoid, tanh).
fn derivative<F: Real>(act: Activation, x: F, y: F) -> F {
    match act {
        Activation::Relu => {
            if x > F::zero() {
                F::one()
            } else {
                F::zero()
            }
        }
        Activation::LeakyRelu { negative_slope } => {
            if x > F::zero() {
                F::one()
            } else {
                F::from_f32(negative_slope)
            }
        }
        Activation::Sigmoid => y * (F::one() - y),
        Activation::Tanh => F::one() - y * y,
    }
}

/// `y = f(x)` elementwise, same shape as `x`: relu `max(x, 0)`, leaky relu
/// `x > 0 ? x : slope·x`, sigmoid `1/(1 + e^(−x))` (stable for large `|x|`), tanh.
pub fn activation_forward<F: Real>(act: Activation, x: &HostTensor<F>) -> HostTensor<F> {
    activation_forward_with::<InOrder, F>(act, x)
}

/// [`activation_forward`], walking the elements by `E`.
pub(super) fn activation_forward_with<E: Elementwise, F: Real>(
    act: Activation,
    x: &HostTensor<F>,
) -> HostTensor<F> {
    let data = match act {
        Activation::Relu => E::map(&x.data, relu),
        Activation::LeakyRelu { negative_slope } => {
            let slope = F::from_f32(negative_slope);
            E::map(&x.data, |v| leaky_relu(slope, v))
        }
        Activation::Sigmoid => E::map(&x.data, sigmoid),
        Activation::Tanh => E::map(&x.data, |v| v.tanh()),
    };
    HostTensor::new(&x.shape, data)
}

/// `dx = dy·f'` elementwise, all of one shape: relu `f' = x > 0 ? 1 : 0` (0 at
/// `x = 0`), leaky relu `x > 0 ? 1 : slope`, sigmoid `y(1 − y)`, tanh `1 − y²`
/// (the last two from the forward output `y`).
pub fn activation_backward<F: Real>(
    act: Activation,
    x: &HostTensor<F>,
    y: &HostTensor<F>,
    dy: &HostTensor<F>,
) -> HostTensor<F> {
    activation_backward_with::<InOrder, F>(act, x, y, dy)
}

/// [`activation_backward`], walking the elements by `E`.
pub(super) fn activation_backward_with<E: Elementwise, F: Real>(
    act: Activation,
    x: &HostTensor<F>,
    y: &HostTensor<F>,
    dy: &HostTensor<F>,
) -> HostTensor<F> {
    assert_eq!(
        x.shape,
        dy.shape,
        "activation_backward ({}): x has shape {:?} but dy has {:?}",
        act.name(),
        x.shape,
        dy.shape
    );
    assert_eq!(
        y.shape,
        dy.shape,
        "activation_backward ({}): y has shape {:?} but dy has {:?}",
        act.name(),
        y.shape,
        dy.shape
    );
    // One loop per activation over the one input its derivative reads (x for
    // relu and leaky relu, y for sigmoid and tanh): each compiles without a
    // branch on `act` per element, and reads a third less memory.
    fn times_derivative<E: Elementwise, F: Real>(
        input: &[F],
        dy: &[F],
        derivative: impl Fn(F) -> F + Sync,
    ) -> Vec<F> {
        E::zip_map(input, dy, |v, d| d * derivative(v))
    }
    let zero = F::zero();
    let data = match act {
        Activation::Relu => {
            times_derivative::<E, F>(&x.data, &dy.data, |v| derivative(Activation::Relu, v, zero))
        }
        Activation::LeakyRelu { negative_slope } => {
            times_derivative::<E, F>(&x.data, &dy.data, |v| {
                derivative(Activation::LeakyRelu { negative_slope }, v, zero)
            })
        }
        Activation::Sigmoid => times_derivative::<E, F>(&y.data, &dy.data, |v| {
            derivative(Activation::Sigmoid, zero, v)
        }),
        Activation::Tanh => {
            times_derivative::<E, F>(&y.data, &dy.data, |v| derivative(Activation::Tanh, zero, v))
        }
    };
    HostTensor::new(&dy.shape, data)
}
