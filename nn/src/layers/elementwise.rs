//! Learned elementwise layers broadcast over the input (BigDL's `CAdd`,
//! `CMul` and `Scale`). A parameter of shape `shape` is aligned with the
//! trailing dimensions of the input, numpy style: `[C, 1, 1]` gives one
//! value per channel of an NCHW image, `[1, C, H, W]` one per element of a sample.

use ndarray::Axis;
use rand::rngs::StdRng;

use crate::error::{Error, Result};
use crate::init;
use crate::layers::LayerConfig;
use crate::module::{qualified, Module, Param};
use crate::tensor::{Float, Tensor};

fn check_shape(what: &str, shape: &[usize]) -> Result<()> {
    if shape.is_empty() || shape.contains(&0) {
        return Err(Error::config(
            what,
            format!("shape {shape:?} must be non-empty with positive sizes"),
        ));
    }
    Ok(())
}

/// BigDL's initialisation: uniform in ±1/√(number of elements).
fn bigdl_uniform<F: Float>(rng: &mut StdRng, shape: &[usize]) -> Tensor<F> {
    let n: usize = shape.iter().product();
    init::uniform(rng, shape, 1.0 / (n as f64).sqrt())
}

/// Checks that a parameter of `shape` broadcasts to `input` (without growing it).
fn check_broadcast<F: Float>(name: &str, param: &Tensor<F>, input: &Tensor<F>) -> Result<()> {
    if param.ndim() > input.ndim() || param.broadcast(input.raw_dim()).is_none() {
        return Err(Error::shape(
            name,
            format!(
                "a shape that parameter shape {:?} broadcasts to",
                param.shape()
            ),
            input.shape(),
        ));
    }
    Ok(())
}

fn check_grad<F: Float>(name: &str, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<()> {
    if grad_output.shape() != input.shape() {
        return Err(Error::shape(
            format!("{name} backward"),
            format!("grad_output {:?}", input.shape()),
            grad_output.shape(),
        ));
    }
    Ok(())
}

/// Sums `g` over the dimensions along which a parameter of `shape` was broadcast.
fn reduce_to<F: Float>(g: Tensor<F>, shape: &[usize]) -> Tensor<F> {
    let mut g = g;
    while g.ndim() > shape.len() {
        g = g.sum_axis(Axis(0));
    }
    for (ax, &d) in shape.iter().enumerate() {
        if d == 1 && g.shape()[ax] != 1 {
            g = g.sum_axis(Axis(ax)).insert_axis(Axis(ax));
        }
    }
    g
}

/// Adds a learned bias of a fixed shape, broadcast over the input.
#[derive(Debug, Clone)]
pub struct CAdd<F> {
    /// The bias.
    pub bias: Param<F>,
}

impl<F: Float> CAdd<F> {
    /// A bias of `shape`, uniform in ±1/√(its element count) as in BigDL.
    pub fn new(shape: &[usize], rng: &mut StdRng) -> Result<Self> {
        check_shape("CAdd", shape)?;
        Ok(CAdd {
            bias: Param::new(bigdl_uniform(rng, shape)),
        })
    }
}

impl<F: Float> Module<F> for CAdd<F> {
    fn name(&self) -> String {
        format!("CAdd({:?})", self.bias.value.shape())
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        check_broadcast(&self.name(), &self.bias.value, input)?;
        Ok(input + &self.bias.value)
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        check_broadcast(&self.name(), &self.bias.value, input)?;
        check_grad(&self.name(), input, grad_output)?;
        self.bias.grad += &reduce_to(grad_output.clone(), self.bias.value.shape());
        Ok(grad_output.clone())
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        f(&qualified(prefix, "bias"), &self.bias);
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        f(&qualified(prefix, "bias"), &mut self.bias);
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::CAdd {
            shape: self.bias.value.shape().to_vec(),
        }
    }
}

/// Multiplies by a learned weight of a fixed shape, broadcast over the input.
#[derive(Debug, Clone)]
pub struct CMul<F> {
    /// The weight.
    pub weight: Param<F>,
}

impl<F: Float> CMul<F> {
    /// A weight of `shape`, uniform in ±1/√(its element count) as in BigDL.
    pub fn new(shape: &[usize], rng: &mut StdRng) -> Result<Self> {
        check_shape("CMul", shape)?;
        Ok(CMul {
            weight: Param::new(bigdl_uniform(rng, shape)),
        })
    }
}

impl<F: Float> Module<F> for CMul<F> {
    fn name(&self) -> String {
        format!("CMul({:?})", self.weight.value.shape())
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        check_broadcast(&self.name(), &self.weight.value, input)?;
        Ok(input * &self.weight.value)
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        check_broadcast(&self.name(), &self.weight.value, input)?;
        check_grad(&self.name(), input, grad_output)?;
        self.weight.grad += &reduce_to(grad_output * input, self.weight.value.shape());
        Ok(grad_output * &self.weight.value)
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        f(&qualified(prefix, "weight"), &self.weight);
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        f(&qualified(prefix, "weight"), &mut self.weight);
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::CMul {
            shape: self.weight.value.shape().to_vec(),
        }
    }
}

/// `x * weight + bias` with both of a fixed shape, broadcast (BigDL's
/// `Scale`: a `CMul` followed by a `CAdd`).
#[derive(Debug, Clone)]
pub struct Scale<F> {
    /// The multiplicative weight.
    pub weight: Param<F>,
    /// The additive bias.
    pub bias: Param<F>,
}

impl<F: Float> Scale<F> {
    /// Weight and bias of `shape`, each uniform in ±1/√(element count) as in BigDL.
    pub fn new(shape: &[usize], rng: &mut StdRng) -> Result<Self> {
        check_shape("Scale", shape)?;
        Ok(Scale {
            weight: Param::new(bigdl_uniform(rng, shape)),
            bias: Param::new(bigdl_uniform(rng, shape)),
        })
    }
}

impl<F: Float> Module<F> for Scale<F> {
    fn name(&self) -> String {
        format!("Scale({:?})", self.weight.value.shape())
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        check_broadcast(&self.name(), &self.weight.value, input)?;
        let mut y = input * &self.weight.value;
        y += &self.bias.value;
        Ok(y)
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        check_broadcast(&self.name(), &self.weight.value, input)?;
        check_grad(&self.name(), input, grad_output)?;
        let shape = self.weight.value.shape().to_vec();
        self.weight.grad += &reduce_to(grad_output * input, &shape);
        self.bias.grad += &reduce_to(grad_output.clone(), &shape);
        Ok(grad_output * &self.weight.value)
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        f(&qualified(prefix, "weight"), &self.weight);
        f(&qualified(prefix, "bias"), &self.bias);
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        f(&qualified(prefix, "weight"), &mut self.weight);
        f(&qualified(prefix, "bias"), &mut self.bias);
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::Scale {
            shape: self.weight.value.shape().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use rand::SeedableRng;

    #[test]
    fn cadd_cmul_scale_pass_gradcheck_for_several_broadcasts() {
        let mut rng = StdRng::seed_from_u64(1);
        let x: Tensor<f64> = init::uniform(&mut rng, &[2, 3, 2, 2], 1.0);
        for shape in [
            &[3usize, 1, 1][..],
            &[1, 3, 2, 2],
            &[2],
            &[2, 3, 2, 2],
            &[3, 2, 1],
        ] {
            let mods: Vec<Box<dyn Module<f64>>> = vec![
                Box::new(CAdd::new(shape, &mut rng).unwrap()),
                Box::new(CMul::new(shape, &mut rng).unwrap()),
                Box::new(Scale::new(shape, &mut rng).unwrap()),
            ];
            for mut m in mods {
                check_module(m.as_mut(), &x, 1e-6)
                    .unwrap()
                    .within(1e-6)
                    .unwrap_or_else(|e| panic!("{} {shape:?}: {e}", m.name()));
            }
        }
    }

    #[test]
    fn scale_is_cmul_then_cadd() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut s = Scale::<f64>::new(&[3, 1, 1], &mut rng).unwrap();
        let mut m = CMul::<f64>::new(&[3, 1, 1], &mut rng).unwrap();
        let mut a = CAdd::<f64>::new(&[3, 1, 1], &mut rng).unwrap();
        m.weight.value = s.weight.value.clone();
        a.bias.value = s.bias.value.clone();
        let x: Tensor<f64> = init::uniform(&mut rng, &[2, 3, 4, 4], 1.0);
        let want = a.forward(&m.forward(&x).unwrap()).unwrap();
        assert_eq!(s.forward(&x).unwrap(), want);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut rng = StdRng::seed_from_u64(3);
        let x = Tensor::<f32>::zeros(ndarray::IxDyn(&[2, 4, 5, 5]));
        for mut m in [
            Box::new(CAdd::<f32>::new(&[3, 1, 1], &mut rng).unwrap()) as Box<dyn Module<f32>>,
            Box::new(CMul::<f32>::new(&[3, 1, 1], &mut rng).unwrap()),
            Box::new(Scale::<f32>::new(&[3, 1, 1], &mut rng).unwrap()),
        ] {
            let err = m.forward(&x).unwrap_err().to_string();
            assert!(
                err.contains(&m.name())
                    && err.contains("[3, 1, 1]")
                    && err.contains("[2, 4, 5, 5]"),
                "{err}"
            );
        }
        assert!(CAdd::<f32>::new(&[], &mut rng).is_err());
        assert!(CMul::<f32>::new(&[2, 0], &mut rng).is_err());
    }
}
