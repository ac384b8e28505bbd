//! [`Concat`] (branches joined along a dimension) and [`ConcatTable`]
//! (branches returned as a table).

use crate::error::{Error, Result};
use crate::layers::container::{join, split};
use crate::layers::LayerConfig;
use crate::module::{qualified, Module, Param};
use crate::tensor::{Float, Tensor};

/// Runs every branch on the same input and concatenates the outputs along
/// `dim` (Torch's `nn.Concat`). Backward sums the branches' input gradients.
pub struct Concat<F: Float> {
    dim: usize,
    branches: Vec<Box<dyn Module<F>>>,
    sizes: Vec<usize>,
}

impl<F: Float> Concat<F> {
    /// An empty concatenation along `dim`.
    pub fn new(dim: usize) -> Self {
        Concat {
            dim,
            branches: Vec::new(),
            sizes: Vec::new(),
        }
    }

    /// Adds a branch (builder style).
    pub fn with(mut self, branch: impl Module<F> + 'static) -> Self {
        self.branches.push(Box::new(branch));
        self
    }

    /// Adds a boxed branch.
    pub fn push_boxed(&mut self, branch: Box<dyn Module<F>>) {
        self.branches.push(branch);
    }
}

impl<F: Float> Module<F> for Concat<F> {
    fn name(&self) -> String {
        format!("Concat(dim={}, {} branches)", self.dim, self.branches.len())
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let outs = self
            .branches
            .iter_mut()
            .map(|b| b.forward(input))
            .collect::<Result<Vec<_>>>()?;
        let name = self.name();
        self.sizes = outs
            .iter()
            .map(|o| {
                o.shape().get(self.dim).copied().ok_or_else(|| {
                    Error::shape(
                        &name,
                        format!("branch outputs with dimension {}", self.dim),
                        o.shape(),
                    )
                })
            })
            .collect::<Result<_>>()?;
        join(&name, &outs.iter().collect::<Vec<_>>(), self.dim)
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        if self.sizes.len() != self.branches.len() {
            return Err(Error::NoForward { op: self.name() });
        }
        let parts = split(
            &format!("{} backward", self.name()),
            grad_output,
            self.dim,
            &self.sizes,
        )?;
        let mut total: Option<Tensor<F>> = None;
        for (b, g) in self.branches.iter_mut().zip(&parts) {
            let gi = b.backward(input, g)?;
            match &mut total {
                Some(t) => *t += &gi,
                None => total = Some(gi),
            }
        }
        Ok(total.unwrap_or_else(|| Tensor::zeros(input.raw_dim())))
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        for (i, b) in self.branches.iter().enumerate() {
            b.visit_params(&qualified(prefix, &i.to_string()), f);
        }
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        for (i, b) in self.branches.iter_mut().enumerate() {
            b.visit_params_mut(&qualified(prefix, &i.to_string()), f);
        }
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor<F>)) {
        for (i, b) in self.branches.iter().enumerate() {
            b.visit_buffers(&qualified(prefix, &i.to_string()), f);
        }
    }

    fn visit_buffers_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor<F>)) {
        for (i, b) in self.branches.iter_mut().enumerate() {
            b.visit_buffers_mut(&qualified(prefix, &i.to_string()), f);
        }
    }

    fn set_training(&mut self, training: bool) {
        for b in &mut self.branches {
            b.set_training(training);
        }
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::Concat {
            dim: self.dim,
            branches: self.branches.iter().map(|b| b.config()).collect(),
        }
    }
}

/// Runs every branch on the same input and returns the outputs as a table
/// (a `Vec`), like BigDL's `ConcatTable`. Backward takes one gradient per
/// branch and returns the summed input gradient. Inside a [`super::Graph`]
/// the same pattern is written as several nodes reading one input.
pub struct ConcatTable<F: Float> {
    branches: Vec<Box<dyn Module<F>>>,
}

impl<F: Float> Default for ConcatTable<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Float> ConcatTable<F> {
    /// An empty table.
    pub fn new() -> Self {
        ConcatTable {
            branches: Vec::new(),
        }
    }

    /// Adds a branch (builder style).
    pub fn with(mut self, branch: impl Module<F> + 'static) -> Self {
        self.branches.push(Box::new(branch));
        self
    }

    /// Runs each branch on `input`.
    pub fn forward_table(&mut self, input: &Tensor<F>) -> Result<Vec<Tensor<F>>> {
        self.branches.iter_mut().map(|b| b.forward(input)).collect()
    }

    /// One gradient per branch in, the summed input gradient out.
    pub fn backward_table(&mut self, input: &Tensor<F>, grads: &[Tensor<F>]) -> Result<Tensor<F>> {
        if grads.len() != self.branches.len() {
            return Err(Error::invalid(
                "ConcatTable backward",
                format!(
                    "{} gradients for {} branches",
                    grads.len(),
                    self.branches.len()
                ),
            ));
        }
        let mut total = Tensor::zeros(input.raw_dim());
        for (b, g) in self.branches.iter_mut().zip(grads) {
            total += &b.backward(input, g)?;
        }
        Ok(total)
    }

    /// Visits the branches' parameters as `<index>.<name>`.
    pub fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        for (i, b) in self.branches.iter_mut().enumerate() {
            b.visit_params_mut(&qualified(prefix, &i.to_string()), f);
        }
    }

    /// Visits the branches' parameters as `<index>.<name>`.
    pub fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        for (i, b) in self.branches.iter().enumerate() {
            b.visit_params(&qualified(prefix, &i.to_string()), f);
        }
    }

    /// Switches every branch between training and evaluation.
    pub fn set_training(&mut self, training: bool) {
        for b in &mut self.branches {
            b.set_training(training);
        }
    }
}
