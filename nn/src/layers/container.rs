//! Containers: [`Sequential`], [`Concat`], [`ConcatTable`] and the
//! multi-branch [`Graph`].

mod concat;
mod graph;
mod sequential;

pub use concat::{Concat, ConcatTable};
pub use graph::{Graph, GraphConfig, GraphNode, NodeOp};
pub use sequential::Sequential;

use ndarray::{Axis, Slice};

use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// Concatenates tensors along `dim`; all other dimensions must agree.
pub fn join<F: Float>(op: &str, parts: &[&Tensor<F>], dim: usize) -> Result<Tensor<F>> {
    let Some(first) = parts.first() else {
        return Err(Error::invalid(op, "nothing to concatenate"));
    };
    if dim >= first.ndim() {
        return Err(Error::shape(
            op,
            format!("tensors with a dimension {dim}"),
            first.shape(),
        ));
    }
    for p in parts {
        let same = p.ndim() == first.ndim()
            && p.shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .all(|(i, (a, b))| i == dim || a == b);
        if !same {
            return Err(Error::ShapeMismatch {
                op: format!("{op}: concatenate along {dim}"),
                lhs: first.shape().to_vec(),
                rhs: p.shape().to_vec(),
            });
        }
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(dim), &views)
        .map_err(|e| Error::invalid(op, format!("concatenate: {e}")))
}

/// Splits `t` along `dim` into pieces of the given sizes (the inverse of [`join`]).
pub fn split<F: Float>(
    op: &str,
    t: &Tensor<F>,
    dim: usize,
    sizes: &[usize],
) -> Result<Vec<Tensor<F>>> {
    if dim >= t.ndim() || sizes.iter().sum::<usize>() != t.shape()[dim] {
        return Err(Error::shape(
            op,
            format!("dimension {dim} of size {}", sizes.iter().sum::<usize>()),
            t.shape(),
        ));
    }
    let mut start = 0usize;
    let mut out = Vec::with_capacity(sizes.len());
    for &s in sizes {
        out.push(
            t.slice_axis(Axis(dim), Slice::from(start..start + s))
                .to_owned(),
        );
        start += s;
    }
    Ok(out)
}
