//! The [`Module`] abstraction (Torch/BigDL style): an explicit forward pass
//! that caches what backward needs, a backward pass that accumulates
//! parameter gradients and returns the input gradient, named parameters and
//! buffers, train/eval mode, and views of all parameters as one flat buffer
//! (what the parameter actors shard).

use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::tensor::{Float, Tensor};

/// A learnable tensor and its accumulated gradient (same shape).
#[derive(Debug, Clone)]
pub struct Param<F> {
    /// Current value.
    pub value: Tensor<F>,
    /// Gradient accumulated by `backward` since the last `zero_grad`.
    pub grad: Tensor<F>,
}

impl<F: Float> Param<F> {
    /// A parameter with the given value and a zero gradient.
    pub fn new(value: Tensor<F>) -> Self {
        let grad = Tensor::zeros(value.raw_dim());
        Param { value, grad }
    }
}

/// Joins a container prefix and a local name with a dot (`"0"` + `"weight"`
/// gives `"0.weight"`; an empty prefix gives the name unchanged).
pub fn qualified(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A network layer or container.
///
/// `forward` caches what `backward` needs; `backward(input, grad_output)`
/// must be given the same input as the last `forward`. It adds the
/// parameter gradients to `Param::grad` (so gradients of several
/// mini-batches accumulate until [`ModuleExt::zero_grad`]) and returns the
/// gradient with respect to the input.
pub trait Module<F: Float>: Send {
    /// A short description for error messages, e.g. `Linear(784->10)`.
    fn name(&self) -> String;

    /// Computes the output for `input`.
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>>;

    /// Accumulates parameter gradients and returns dLoss/dInput.
    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>>;

    /// Like [`Module::backward`] for an input that needs no gradient (a
    /// model's data, as a PyTorch input without `requires_grad`): only the
    /// parameter gradients are accumulated, and layers that can skip the
    /// input-gradient computation do (convolutions, linear layers,
    /// containers passing it to their first layer).
    fn backward_params(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<()> {
        self.backward(input, grad_output).map(|_| ())
    }

    /// Inference: the output for an input the caller gives up, with nothing
    /// kept for a backward pass (like PyTorch under `no_grad`). Elementwise
    /// layers overwrite the input in place and containers free each
    /// activation after its last reader; a `backward` after `infer` is an
    /// error or uses the state of an earlier `forward`. Same values as
    /// [`Module::forward`].
    fn infer(&mut self, input: Tensor<F>) -> Result<Tensor<F>> {
        self.forward(&input)
    }

    /// Visits every learnable parameter with its qualified name, in a fixed order.
    fn visit_params(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param<F>)) {}

    /// Visits every learnable parameter mutably, in the same order as [`Module::visit_params`].
    fn visit_params_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<F>)) {}

    /// Visits non-learnable state that is saved with the model (e.g. batch-norm running statistics).
    fn visit_buffers(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Tensor<F>)) {}

    /// Visits buffers mutably, in the same order as [`Module::visit_buffers`].
    fn visit_buffers_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Tensor<F>)) {}

    /// Switches between training (`true`) and evaluation mode. Containers propagate it.
    fn set_training(&mut self, _training: bool) {}

    /// The configuration that rebuilds this module's structure (not its weights).
    fn config(&self) -> LayerConfig;
}

/// Where one parameter sits inside the flat parameter buffer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamSlot {
    /// Qualified name, e.g. `features.0.weight`.
    pub name: String,
    /// Shape of the tensor.
    pub shape: Vec<usize>,
    /// Offset of its first element in the flat buffer.
    pub offset: usize,
}

/// Parameter-level helpers available on every module (including `dyn Module`).
pub trait ModuleExt<F: Float>: Module<F> {
    /// Names and shapes of all parameters, with their flat offsets.
    fn param_layout(&self) -> Vec<ParamSlot> {
        let mut out = Vec::new();
        let mut offset = 0;
        self.visit_params("", &mut |name, p| {
            out.push(ParamSlot {
                name: name.to_string(),
                shape: p.value.shape().to_vec(),
                offset,
            });
            offset += p.value.len();
        });
        out
    }

    /// Total number of learnable scalars.
    fn num_params(&self) -> usize {
        let mut n = 0;
        self.visit_params("", &mut |_, p| n += p.value.len());
        n
    }

    /// All parameters concatenated into one buffer, in visiting order.
    fn flat_params(&self) -> Vec<F> {
        let mut out = Vec::with_capacity(self.num_params());
        self.visit_params("", &mut |_, p| match p.value.as_slice() {
            Some(s) => out.extend_from_slice(s),
            None => out.extend(p.value.iter().copied()),
        });
        out
    }

    /// All gradients concatenated into one buffer, in the same order as [`ModuleExt::flat_params`].
    fn flat_grads(&self) -> Vec<F> {
        let mut out = Vec::with_capacity(self.num_params());
        self.visit_params("", &mut |_, p| match p.grad.as_slice() {
            Some(s) => out.extend_from_slice(s),
            None => out.extend(p.grad.iter().copied()),
        });
        out
    }

    /// Overwrites all parameters from a flat buffer of exactly [`ModuleExt::num_params`] values.
    fn set_flat_params(&mut self, flat: &[F]) -> Result<()> {
        let need = self.num_params();
        if flat.len() != need {
            return Err(Error::shape(
                format!("set_flat_params({})", self.name()),
                format!("[{need}]"),
                &[flat.len()],
            ));
        }
        let mut offset = 0;
        self.visit_params_mut("", &mut |_, p| {
            let n = p.value.len();
            for (dst, src) in p.value.iter_mut().zip(&flat[offset..offset + n]) {
                *dst = *src;
            }
            offset += n;
        });
        Ok(())
    }

    /// Overwrites all gradients from a flat buffer (e.g. the all-reduced gradient).
    fn set_flat_grads(&mut self, flat: &[F]) -> Result<()> {
        let need = self.num_params();
        if flat.len() != need {
            return Err(Error::shape(
                format!("set_flat_grads({})", self.name()),
                format!("[{need}]"),
                &[flat.len()],
            ));
        }
        let mut offset = 0;
        self.visit_params_mut("", &mut |_, p| {
            let n = p.grad.len();
            for (dst, src) in p.grad.iter_mut().zip(&flat[offset..offset + n]) {
                *dst = *src;
            }
            offset += n;
        });
        Ok(())
    }

    /// Total number of non-learnable state scalars (batch-norm running
    /// statistics), in [`Module::visit_buffers`] order.
    fn num_buffers(&self) -> usize {
        let mut n = 0;
        self.visit_buffers("", &mut |_, b| n += b.len());
        n
    }

    /// All buffers concatenated into one vector, in visiting order (what a
    /// data-parallel trainer averages and ships beside the weights).
    fn flat_buffers(&self) -> Vec<F> {
        let mut out = Vec::with_capacity(self.num_buffers());
        self.visit_buffers("", &mut |_, b| out.extend(b.iter().copied()));
        out
    }

    /// Overwrites all buffers from a flat vector of exactly
    /// [`ModuleExt::num_buffers`] values.
    fn set_flat_buffers(&mut self, flat: &[F]) -> Result<()> {
        let need = self.num_buffers();
        if flat.len() != need {
            return Err(Error::shape(
                format!("set_flat_buffers({})", self.name()),
                format!("[{need}]"),
                &[flat.len()],
            ));
        }
        let mut offset = 0;
        self.visit_buffers_mut("", &mut |_, b| {
            let n = b.len();
            for (dst, src) in b.iter_mut().zip(&flat[offset..offset + n]) {
                *dst = *src;
            }
            offset += n;
        });
        Ok(())
    }

    /// Sets every gradient to zero.
    fn zero_grad(&mut self) {
        self.visit_params_mut("", &mut |_, p| p.grad.fill(F::zero()));
    }

    /// Evaluation mode (dropout off, batch norm uses running statistics).
    fn eval_mode(&mut self) {
        self.set_training(false);
    }

    /// Training mode.
    fn train_mode(&mut self) {
        self.set_training(true);
    }
}

impl<F: Float, M: Module<F> + ?Sized> ModuleExt<F> for M {}

impl<F: Float> Module<F> for Box<dyn Module<F>> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        (**self).forward(input)
    }
    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        (**self).backward(input, grad_output)
    }
    fn backward_params(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<()> {
        (**self).backward_params(input, grad_output)
    }
    fn infer(&mut self, input: Tensor<F>) -> Result<Tensor<F>> {
        (**self).infer(input)
    }
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        (**self).visit_params(prefix, f)
    }
    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        (**self).visit_params_mut(prefix, f)
    }
    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor<F>)) {
        (**self).visit_buffers(prefix, f)
    }
    fn visit_buffers_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor<F>)) {
        (**self).visit_buffers_mut(prefix, f)
    }
    fn set_training(&mut self, training: bool) {
        (**self).set_training(training)
    }
    fn config(&self) -> LayerConfig {
        (**self).config()
    }
}
