//! A host tensor: a shape and its elements in row-major order.

use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use rayon::iter::{IndexedParallelIterator, ParallelIterator};
use rayon::slice::ParallelSliceMut;

/// A dense row-major tensor in host memory, generic over the element type so the
/// CPU reference can run in `f32` (to compare with the GPU) or `f64` (for
/// finite-difference gradient checks).
///
/// Cloning shares the elements until one of the clones is written (see
/// [`Elements`]): layers keep their inputs for the backward pass by cloning
/// them, which on the CPU path would otherwise copy every activation.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor<F> {
    /// Extent of each dimension, outermost first (NCHW for images).
    pub shape: Vec<usize>,
    /// `shape.iter().product()` elements, row-major.
    pub data: Elements<F>,
}

/// A tensor's elements: a `Vec` shared between clones, copied on the first
/// write through a shared one (so clones keep value semantics). Reads and
/// writes go through `Deref`/`DerefMut` to the `Vec`.
#[derive(Debug)]
pub struct Elements<F>(Arc<Vec<F>>);

impl<F> Elements<F> {
    /// The elements as a `Vec`, copied only when a clone still shares them.
    pub fn into_vec(self) -> Vec<F>
    where
        F: Clone,
    {
        Arc::unwrap_or_clone(self.0)
    }
}

impl<F> Clone for Elements<F> {
    fn clone(&self) -> Self {
        Elements(Arc::clone(&self.0))
    }
}

impl<F> Deref for Elements<F> {
    type Target = Vec<F>;

    fn deref(&self) -> &Vec<F> {
        &self.0
    }
}

impl<F: Clone> DerefMut for Elements<F> {
    fn deref_mut(&mut self) -> &mut Vec<F> {
        Arc::make_mut(&mut self.0)
    }
}

impl<F> From<Vec<F>> for Elements<F> {
    fn from(values: Vec<F>) -> Self {
        Elements(Arc::new(values))
    }
}

impl<F: PartialEq> PartialEq for Elements<F> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<F: PartialEq> PartialEq<Vec<F>> for Elements<F> {
    fn eq(&self, other: &Vec<F>) -> bool {
        *self.0 == *other
    }
}

impl<F: PartialEq, const N: usize> PartialEq<[F; N]> for Elements<F> {
    fn eq(&self, other: &[F; N]) -> bool {
        self.0[..] == other[..]
    }
}

impl<F: Clone> IntoIterator for Elements<F> {
    type Item = F;
    type IntoIter = std::vec::IntoIter<F>;

    fn into_iter(self) -> Self::IntoIter {
        self.into_vec().into_iter()
    }
}

impl<'a, F: Clone> IntoIterator for &'a mut Elements<F> {
    type Item = &'a mut F;
    type IntoIter = std::slice::IterMut<'a, F>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl<'a, F> IntoIterator for &'a Elements<F> {
    type Item = &'a F;
    type IntoIter = std::slice::Iter<'a, F>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Elements from which [`HostTensor::zeros`] fills in parallel: below this a
/// thread hand-off costs more than the fill.
const PARALLEL_FILL_MIN: usize = 1 << 16;

impl<F: Copy + Default + Send + Sync> HostTensor<F> {
    /// A tensor of `shape` filled with `F::default()` (zero for floats).
    ///
    /// Large tensors are filled by every core: the CPU path allocates its op
    /// outputs each step, and the allocator's zero fill of reused memory ran
    /// on the calling thread while the pool waited.
    pub fn zeros(shape: &[usize]) -> Self {
        let len = shape.iter().product();
        let data = if len < PARALLEL_FILL_MIN {
            vec![F::default(); len]
        } else {
            let mut data = Vec::with_capacity(len);
            let spare = &mut data.spare_capacity_mut()[..len];
            spare
                .par_chunks_mut(PARALLEL_FILL_MIN)
                .for_each(|chunk| chunk.fill(MaybeUninit::new(F::default())));
            // SAFETY: the loop above initialised all `len` elements, and
            // `len` is within the capacity.
            unsafe { data.set_len(len) };
            data
        };
        Self {
            shape: shape.to_vec(),
            data: data.into(),
        }
    }
}

/// A task's part of a tensor that [`HostTensor::written_in_parallel`] makes:
/// consecutive pieces, each zeroed only when the iterator reaches it, so
/// that it is still in cache when the task writes it (zeroing a whole large
/// tensor first sent every value to memory twice).
pub struct ZeroedPieces<'a, F> {
    rest: &'a mut [MaybeUninit<F>],
    piece: usize,
}

impl<'a, F: Copy + Default> Iterator for ZeroedPieces<'a, F> {
    type Item = &'a mut [F];

    fn next(&mut self) -> Option<&'a mut [F]> {
        if self.rest.is_empty() {
            return None;
        }
        let len = self.piece.min(self.rest.len());
        let (piece, rest) = std::mem::take(&mut self.rest).split_at_mut(len);
        self.rest = rest;
        piece.fill(MaybeUninit::new(F::default()));
        // SAFETY: every element of `piece` was initialised just above, and
        // `MaybeUninit<F>` has `F`'s layout.
        Some(unsafe { &mut *(piece as *mut [MaybeUninit<F>] as *mut [F]) })
    }
}

impl<F: Copy + Default + Send + Sync> HostTensor<F> {
    /// A tensor of `shape` written on the cores: task `i` gets elements
    /// `i·task_len ..` (up to `task_len` of them) as [`ZeroedPieces`] of
    /// `piece_len`, and returns a value; the values come back in task order.
    /// Every element is zero until its task writes it (pieces a task leaves
    /// are zeroed after it), as with [`HostTensor::zeros`], but each piece
    /// is zeroed on the thread that writes it, just before.
    pub fn written_in_parallel<R: Send>(
        shape: &[usize],
        task_len: usize,
        piece_len: usize,
        task: impl Fn(usize, &mut ZeroedPieces<'_, F>) -> R + Sync + Send,
    ) -> (Self, Vec<R>) {
        let len = shape.iter().product();
        let mut data = Vec::with_capacity(len);
        let results = data.spare_capacity_mut()[..len]
            .par_chunks_mut(task_len.max(1))
            .enumerate()
            .map(|(i, part)| {
                let mut pieces = ZeroedPieces {
                    rest: part,
                    piece: piece_len.max(1),
                };
                let result = task(i, &mut pieces);
                pieces.for_each(drop);
                result
            })
            .collect();
        // SAFETY: the tasks' parts cover all `len` elements, and every piece
        // of them was initialised, by the task or after it.
        unsafe { data.set_len(len) };
        let tensor = Self {
            shape: shape.to_vec(),
            data: data.into(),
        };
        (tensor, results)
    }
}

impl<F: Copy + Send + Sync> HostTensor<F> {
    /// A tensor of `shape` whose consecutive runs of `run` elements are
    /// `values(i)` for run `i`, each value written once (no zero fill
    /// first), tasks of `runs_per_task` runs over the cores.
    ///
    /// # Panics
    /// When `values(i)` yields fewer than `run` values (before the tensor
    /// exists, so no element is left unwritten).
    pub fn from_runs<I: Iterator<Item = F>>(
        shape: &[usize],
        run: usize,
        runs_per_task: usize,
        values: impl Fn(usize) -> I + Sync + Send,
    ) -> Self {
        let len = shape.iter().product();
        let (run, runs_per_task) = (run.max(1), runs_per_task.max(1));
        let mut data = Vec::with_capacity(len);
        data.spare_capacity_mut()[..len]
            .par_chunks_mut(run * runs_per_task)
            .enumerate()
            .for_each(|(task, part)| {
                for (j, out) in part.chunks_mut(run).enumerate() {
                    let mut written = 0;
                    for (slot, v) in out.iter_mut().zip(values(task * runs_per_task + j)) {
                        *slot = MaybeUninit::new(v);
                        written += 1;
                    }
                    assert_eq!(
                        written,
                        out.len(),
                        "run {} is short",
                        task * runs_per_task + j
                    );
                }
            });
        // SAFETY: every run was written in full above (a short one panics
        // before this point).
        unsafe { data.set_len(len) };
        Self {
            shape: shape.to_vec(),
            data: data.into(),
        }
    }
}

impl<F> HostTensor<F> {
    /// Wraps `data` as a tensor of `shape`.
    ///
    /// # Panics
    /// When `data.len()` is not the product of `shape`: that is a bug in the caller.
    pub fn new(shape: &[usize], data: Vec<F>) -> Self {
        let data = Elements::from(data);
        let len: usize = shape.iter().product();
        assert_eq!(
            data.len(),
            len,
            "tensor data has {} elements, shape {:?} needs {}",
            data.len(),
            shape,
            len
        );
        Self {
            shape: shape.to_vec(),
            data,
        }
    }

    /// The same elements (shared, not copied) as a tensor of `shape`.
    ///
    /// # Panics
    /// When `shape` holds a different number of elements.
    pub fn reshaped(&self, shape: &[usize]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.len(),
            "reshape of {:?} to {shape:?}",
            self.shape
        );
        Self {
            shape: shape.to_vec(),
            data: self.data.clone(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Converts every element with `f` (e.g. `f32` → `f64` for gradient checks).
    pub fn map<G>(&self, f: impl Fn(&F) -> G) -> HostTensor<G> {
        HostTensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(f).collect::<Vec<G>>().into(),
        }
    }
}

/// Formats a shape as `2x3x5x7`.
pub fn shape_string(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_hold_their_values_in_order() {
        // 2 × 3 × 2: six runs of 2, three per task.
        let t = HostTensor::<f32>::from_runs(&[2, 3, 2], 2, 3, |run| {
            (0..2).map(move |j| (10 * run + j) as f32)
        });
        assert_eq!(
            t.data,
            [0., 1., 10., 11., 20., 21., 30., 31., 40., 41., 50., 51.]
        );
    }

    #[test]
    #[should_panic(expected = "run 1 is short")]
    fn a_short_run_panics_before_the_tensor_exists() {
        HostTensor::<f32>::from_runs(&[4], 2, 1, |run| (0..2 - run).map(|v| v as f32));
    }

    #[test]
    fn tasks_write_their_pieces_and_what_they_leave_is_zero() {
        // 3 × 7 = 21 elements in tasks of 8 (the last has 5), pieces of 3.
        let (t, sums) = HostTensor::<f32>::written_in_parallel(&[3, 7], 8, 3, |task, pieces| {
            let mut written = 0;
            // Task 1 writes only its first piece; the rest stays zero.
            for (p, piece) in pieces.take(if task == 1 { 1 } else { 3 }).enumerate() {
                assert!(piece.iter().all(|&v| v == 0.0), "a piece starts zeroed");
                for (j, v) in piece.iter_mut().enumerate() {
                    *v = (100 * task + 10 * p + j) as f32;
                    written += 1;
                }
            }
            written
        });
        assert_eq!(t.shape, vec![3, 7]);
        assert_eq!(sums, vec![8, 3, 5]);
        let want = [
            0., 1., 2., 10., 11., 12., 20., 21., // task 0: pieces 3, 3, 2
            100., 101., 102., 0., 0., 0., 0., 0., // task 1: one piece
            200., 201., 202., 210., 211., // task 2: pieces 3, 2
        ];
        assert_eq!(t.data, want);
    }

    #[test]
    fn a_clone_shares_the_elements_until_one_of_them_is_written() {
        let a = HostTensor::new(&[2, 2], vec![1.0f32, 2.0, 3.0, 4.0]);
        let mut b = a.clone();
        assert!(std::ptr::eq(a.data.as_ptr(), b.data.as_ptr()));
        b.data[1] = 20.0;
        assert_eq!(a.data, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(b.data, [1.0, 20.0, 3.0, 4.0]);
        assert!(!std::ptr::eq(a.data.as_ptr(), b.data.as_ptr()));
        // A reshape shares as well, and no longer shared elements move out
        // without a copy.
        let flat = b.reshaped(&[4]);
        let at = flat.data.as_ptr();
        drop(b);
        let values = flat.data.into_vec();
        assert_eq!(values.as_ptr(), at);
    }

    #[test]
    fn large_zero_tensors_are_zero_to_the_last_element() {
        // Memory the allocator hands out again holds old values.
        drop(vec![7.0f32; 5 * PARALLEL_FILL_MIN]);
        for len in [
            PARALLEL_FILL_MIN - 1,
            PARALLEL_FILL_MIN,
            3 * PARALLEL_FILL_MIN + 5,
        ] {
            let t = HostTensor::<f32>::zeros(&[len, 1]);
            assert_eq!(t.shape, [len, 1]);
            assert_eq!(t.data.len(), len);
            assert!(t.data.iter().all(|&v| v == 0.0), "len {len}");
        }
    }
}
