//! [`Sequential`]: children applied one after another.

use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::module::{qualified, Module, Param};
use crate::tensor::{Float, Tensor};

/// Runs its children in order; parameters are named `<index>.<name>`.
pub struct Sequential<F: Float> {
    layers: Vec<Box<dyn Module<F>>>,
    /// Inputs of children 1.. from the last forward (child 0's input is the container's).
    activations: Vec<Tensor<F>>,
}

impl<F: Float> Default for Sequential<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Float> Sequential<F> {
    /// An empty container.
    pub fn new() -> Self {
        Sequential {
            layers: Vec::new(),
            activations: Vec::new(),
        }
    }

    /// Appends a layer (builder style).
    pub fn with(mut self, layer: impl Module<F> + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Appends a boxed layer.
    pub fn push_boxed(&mut self, layer: Box<dyn Module<F>>) {
        self.layers.push(layer);
    }

    /// Number of children.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True when there are no children.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The children.
    pub fn layers(&self) -> &[Box<dyn Module<F>>] {
        &self.layers
    }

    /// The children, mutably.
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Module<F>>] {
        &mut self.layers
    }

    /// Runs `backward` through children `n - 1` down to 1 and returns the
    /// gradient for child 0's output (`None` for an empty container).
    fn backward_to_first(&mut self, grad_output: &Tensor<F>) -> Result<Option<Tensor<F>>> {
        let n = self.layers.len();
        if n == 0 {
            return Ok(None);
        }
        if self.activations.len() + 1 != n {
            return Err(Error::NoForward { op: self.name() });
        }
        let mut g = grad_output.clone();
        for i in (1..n).rev() {
            g = self.layers[i]
                .backward(&self.activations[i - 1], &g)
                .map_err(|e| wrap(i, e))?;
        }
        Ok(Some(g))
    }
}

impl<F: Float> Module<F> for Sequential<F> {
    fn name(&self) -> String {
        format!("Sequential[{}]", self.layers.len())
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        self.activations.clear();
        let mut x: Option<Tensor<F>> = None;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let y = {
                let inp = x.as_ref().unwrap_or(input);
                layer.forward(inp).map_err(|e| wrap(i, e))?
            };
            if let Some(prev) = x.take() {
                self.activations.push(prev);
            }
            x = Some(y);
        }
        Ok(x.unwrap_or_else(|| input.clone()))
    }

    fn infer(&mut self, input: Tensor<F>) -> Result<Tensor<F>> {
        self.activations.clear();
        let mut x = input;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            x = layer.infer(x).map_err(|e| wrap(i, e))?;
        }
        Ok(x)
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        match self.backward_to_first(grad_output)? {
            Some(g) => self.layers[0].backward(input, &g).map_err(|e| wrap(0, e)),
            None => Ok(grad_output.clone()),
        }
    }

    fn backward_params(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<()> {
        match self.backward_to_first(grad_output)? {
            Some(g) => self.layers[0]
                .backward_params(input, &g)
                .map_err(|e| wrap(0, e)),
            None => Ok(()),
        }
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        for (i, l) in self.layers.iter().enumerate() {
            l.visit_params(&qualified(prefix, &i.to_string()), f);
        }
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.visit_params_mut(&qualified(prefix, &i.to_string()), f);
        }
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor<F>)) {
        for (i, l) in self.layers.iter().enumerate() {
            l.visit_buffers(&qualified(prefix, &i.to_string()), f);
        }
    }

    fn visit_buffers_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor<F>)) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.visit_buffers_mut(&qualified(prefix, &i.to_string()), f);
        }
    }

    fn set_training(&mut self, training: bool) {
        for l in &mut self.layers {
            l.set_training(training);
        }
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::Sequential {
            layers: self.layers.iter().map(|l| l.config()).collect(),
        }
    }
}

/// Prefixes an error with the child's position so the failing layer is findable.
fn wrap(index: usize, e: Error) -> Error {
    match e {
        Error::Shape {
            op,
            expected,
            actual,
        } => Error::Shape {
            op: format!("Sequential.{index}: {op}"),
            expected,
            actual,
        },
        Error::ShapeMismatch { op, lhs, rhs } => Error::ShapeMismatch {
            op: format!("Sequential.{index}: {op}"),
            lhs,
            rhs,
        },
        other => other,
    }
}
