//! The Deep Speech 2 model: a convolutional front end over `(N, 1, freq,
//! time)` spectrograms, bidirectional recurrent layers over `(T, N, F)` with
//! sequence-wise batch norm, and a fully connected layer to the characters,
//! giving log-probabilities `(T, N, classes)` for `kiln_nn`'s `CtcLoss`.
//!
//! Per-utterance lengths: [`Ds2::forward_with_lengths`] takes each
//! utterance's frame count and returns the exact output lengths (see
//! [`Ds2Config::output_lengths`]). After each convolution block the frames
//! beyond an utterance's length are zeroed (as deepspeech.pytorch's
//! `MaskConv`); the recurrent layers run over packed lengths, so the
//! backward direction starts at each utterance's own last frame.
//! Output frames beyond an utterance's length are meaningless (CTC ignores them).
//!
//! Saving: [`Ds2::save`] writes a kiln-nn model file whose metadata holds
//! the [`Ds2Config`] under [`DS2_CONFIG_KEY`]; [`Ds2::load`] rebuilds the
//! model from it. (The file's generic `LayerConfig` lists the layers for
//! inspection only: `kiln_nn::serialize::load` cannot rebuild DS2's
//! length-aware wiring, so use [`Ds2::load`].)

pub mod config;

use std::collections::HashMap;
use std::path::Path;

use kiln_nn::layers::{
    BatchNorm, BatchNormConfig, BiRecurrent, BiRecurrentConfig, Conv2d, Conv2dConfig, HardTanh,
    LayerConfig, Linear, LinearConfig, LogSoftMax, RecurrentConfig, SequenceBatchNorm,
    SequenceModule, TimeDistributed,
};
use kiln_nn::module::{qualified, Module, Param};
use kiln_nn::tensor::{reshape, Float, Tensor};
use kiln_nn::{serialize, Error as NnError};
use rand::rngs::StdRng;

pub use config::{ConvSpec, Ds2Config, RnnSpec};

use crate::error::{Error, Result};

/// Metadata key under which [`Ds2::save`] stores the [`Ds2Config`] (JSON).
pub const DS2_CONFIG_KEY: &str = "kiln.ds2_config";

/// One convolution block: conv (no bias), batch norm, clipped ReLU.
struct ConvBlock<F: Float> {
    spec: ConvSpec,
    conv: Conv2d<F>,
    bn: BatchNorm<F>,
    act: HardTanh,
}

/// One conv block's input, conv output, batch-norm output and the time
/// lengths after it.
type ConvCache<F> = (Tensor<F>, Tensor<F>, Tensor<F>, Vec<usize>);

/// Activations the backward pass needs, in forward order.
struct Cache<F> {
    input_shape: Vec<usize>,
    lengths: Vec<usize>,
    /// Per conv block: its input, conv output, batch-norm output, time lengths after it.
    conv: Vec<ConvCache<F>>,
    /// Shape `(N, C, F', T')` of the last block's output.
    conv_out_shape: Vec<usize>,
    /// Input of each recurrent layer.
    rnn_in: Vec<Tensor<F>>,
    /// Input of each sequence batch norm between recurrent layers.
    norm_in: Vec<Tensor<F>>,
    /// Input of the final batch norm, of the FC layer and of the log-softmax.
    fc_norm_in: Tensor<F>,
    fc_in: Tensor<F>,
    logits: Tensor<F>,
    out_lengths: Vec<usize>,
}

/// The Deep Speech 2 network (see the module docs).
pub struct Ds2<F: Float> {
    config: Ds2Config,
    convs: Vec<ConvBlock<F>>,
    rnns: Vec<BiRecurrent<F>>,
    rnn_norms: Vec<SequenceBatchNorm<F>>,
    fc_norm: SequenceBatchNorm<F>,
    fc: TimeDistributed<F>,
    log_softmax: LogSoftMax<F>,
    cache: Option<Cache<F>>,
}

impl Ds2Config {
    /// Builds a freshly initialised model (PyTorch's default initialisation).
    pub fn init<F: Float>(&self, rng: &mut StdRng) -> Result<Ds2<F>> {
        self.validate()?;
        let mut convs = Vec::new();
        let mut in_ch = 1;
        for spec in &self.conv {
            let conv = Conv2dConfig::new(in_ch, spec.channels, spec.kernel)
                .with_stride(spec.stride)
                .with_padding(spec.padding)
                .with_bias(false)
                .init(rng)?;
            convs.push(ConvBlock {
                spec: spec.clone(),
                conv,
                bn: BatchNormConfig::new(spec.channels).init()?,
                act: HardTanh::new(0.0, self.clip)?,
            });
            in_ch = spec.channels;
        }
        let out = self.rnn_output_size();
        let mut rnns = Vec::new();
        let mut rnn_norms = Vec::new();
        for i in 0..self.rnn.layers {
            let input = if i == 0 { self.rnn_input_size() } else { out };
            if i > 0 {
                rnn_norms.push(SequenceBatchNorm::new(&BatchNormConfig::new(out))?);
            }
            let layer = RecurrentConfig::new(self.rnn.cell, input, self.rnn.hidden);
            rnns.push(BiRecurrentConfig::new(layer, self.rnn.merge).init(rng)?);
        }
        let fc: Linear<F> = LinearConfig {
            in_features: out,
            out_features: self.num_classes,
            bias: false,
        }
        .init(rng)?;
        Ok(Ds2 {
            config: self.clone(),
            convs,
            rnns,
            rnn_norms,
            fc_norm: SequenceBatchNorm::new(&BatchNormConfig::new(out))?,
            fc: TimeDistributed::new(Box::new(fc)),
            log_softmax: LogSoftMax::new(-1),
            cache: None,
        })
    }
}

/// Zeroes time steps `t >= lengths[n]` of an `(N, C, F, T)` tensor.
fn mask_time<F: Float>(x: &mut Tensor<F>, lengths: &[usize]) {
    let t_len = x.shape()[3];
    for (n, &l) in lengths.iter().enumerate() {
        if l < t_len {
            x.index_axis_mut(ndarray::Axis(0), n)
                .slice_each_axis_mut(|ax| {
                    if ax.axis.index() == 2 {
                        ndarray::Slice::from(l..)
                    } else {
                        ndarray::Slice::from(..)
                    }
                })
                .fill(F::zero());
        }
    }
}

impl<F: Float> Ds2<F> {
    /// The model's configuration.
    pub fn ds2_config(&self) -> &Ds2Config {
        &self.config
    }

    fn check_input(&self, input: &Tensor<F>, lengths: &[usize]) -> Result<()> {
        let s = input.shape();
        if s.len() != 4 || s[1] != 1 || s[2] != self.config.freq_bins {
            return Err(Error::Shape {
                op: "Ds2".into(),
                expected: format!("(N, 1, {}, T)", self.config.freq_bins),
                actual: s.to_vec(),
            });
        }
        if lengths.len() != s[0] {
            return Err(Error::config(
                "Ds2",
                format!(
                    "{} lengths for a batch of {} utterances",
                    lengths.len(),
                    s[0]
                ),
            ));
        }
        if let Some(&l) = lengths.iter().find(|&&l| l > s[3]) {
            return Err(Error::config(
                "Ds2",
                format!("length {l} exceeds the {} frames of the input", s[3]),
            ));
        }
        Ok(())
    }

    /// Log-probabilities `(T', N, classes)` for spectrograms `(N, 1, freq,
    /// T)` whose utterance `n` is `lengths[n]` frames long, and the output
    /// lengths `T'_n`.
    pub fn forward_with_lengths(
        &mut self,
        input: &Tensor<F>,
        lengths: &[usize],
    ) -> Result<(Tensor<F>, Vec<usize>)> {
        self.check_input(input, lengths)?;
        let mut x = input.clone();
        let mut lens = lengths.to_vec();
        let mut conv_cache = Vec::new();
        for block in &mut self.convs {
            let a = block.conv.forward(&x)?;
            let b = block.bn.forward(&a)?;
            let mut c = block.act.forward(&b)?;
            lens = lens.iter().map(|&l| block.spec.out_len(1, l)).collect();
            mask_time(&mut c, &lens);
            conv_cache.push((x, a, b, lens.clone()));
            x = c;
        }
        let conv_out_shape = x.shape().to_vec();
        let (n, ch, fq, t) = (
            conv_out_shape[0],
            conv_out_shape[1],
            conv_out_shape[2],
            conv_out_shape[3],
        );
        // (N, C, F, T) -> (T, N, C*F)
        let seq = reshape(
            "Ds2",
            &x.permuted_axes(ndarray::IxDyn(&[3, 0, 1, 2])),
            &[t, n, ch * fq],
        )?;
        let mut rnn_in = Vec::new();
        let mut norm_in = Vec::new();
        let mut h = seq;
        for (i, rnn) in self.rnns.iter_mut().enumerate() {
            if i > 0 {
                let normed = self.rnn_norms[i - 1].forward_with_lengths(&h, &lens)?;
                norm_in.push(std::mem::replace(&mut h, normed));
            }
            let y = rnn.forward_with_lengths(&h, &lens)?;
            rnn_in.push(std::mem::replace(&mut h, y));
        }
        let fc_in = self.fc_norm.forward_with_lengths(&h, &lens)?;
        let logits = self.fc.forward_with_lengths(&fc_in, &lens)?;
        let out = self.log_softmax.forward(&logits)?;
        self.cache = Some(Cache {
            input_shape: input.shape().to_vec(),
            lengths: lengths.to_vec(),
            conv: conv_cache,
            conv_out_shape,
            rnn_in,
            norm_in,
            fc_norm_in: h,
            fc_in,
            logits,
            out_lengths: lens.clone(),
        });
        Ok((out, lens))
    }

    /// Accumulates parameter gradients from `grad_output` (dLoss/dlog-probs,
    /// `(T', N, classes)`, e.g. `CtcLoss::backward`) for the last
    /// [`Ds2::forward_with_lengths`] on the same `input` and `lengths`;
    /// returns dLoss/dinput.
    pub fn backward_with_lengths(
        &mut self,
        input: &Tensor<F>,
        lengths: &[usize],
        grad_output: &Tensor<F>,
    ) -> Result<Tensor<F>> {
        self.check_input(input, lengths)?;
        let cache = self
            .cache
            .take()
            .ok_or_else(|| NnError::NoForward { op: "Ds2".into() })?;
        if cache.input_shape != input.shape() || cache.lengths != lengths {
            self.cache = Some(cache);
            return Err(Error::config(
                "Ds2 backward",
                "input or lengths differ from the last forward",
            ));
        }
        let result = self.backward_cached(&cache, grad_output);
        self.cache = Some(cache);
        result
    }

    fn backward_cached(&mut self, c: &Cache<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        let lens = &c.out_lengths;
        let g = self.log_softmax.backward(&c.logits, grad_output)?;
        let g = self.fc.backward_with_lengths(&c.fc_in, lens, &g)?;
        let mut g = self
            .fc_norm
            .backward_with_lengths(&c.fc_norm_in, lens, &g)?;
        for i in (0..self.rnns.len()).rev() {
            g = self.rnns[i].backward_with_lengths(&c.rnn_in[i], lens, &g)?;
            if i > 0 {
                g = self.rnn_norms[i - 1].backward_with_lengths(&c.norm_in[i - 1], lens, &g)?;
            }
        }
        // (T, N, C*F) -> (N, C, F, T)
        let s = &c.conv_out_shape;
        let g = reshape("Ds2", &g, &[s[3], s[0], s[1], s[2]])?;
        let mut g = reshape("Ds2", &g.permuted_axes(ndarray::IxDyn(&[1, 2, 3, 0])), s)?;
        for (block, (x, a, b, lens)) in self.convs.iter_mut().zip(&c.conv).rev() {
            mask_time(&mut g, lens);
            let gb = block.act.backward(b, &g)?;
            let ga = block.bn.backward(a, &gb)?;
            g = block.conv.backward(x, &ga)?;
        }
        Ok(g)
    }

    /// Saves weights, batch-norm statistics and the [`Ds2Config`] to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string(&self.config)
            .map_err(|e| Error::config("Ds2::save", e.to_string()))?;
        let extra = HashMap::from([(DS2_CONFIG_KEY.to_string(), json)]);
        Ok(serialize::save(self, path, &extra)?)
    }

    /// Rebuilds a model saved by [`Ds2::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let config = Ds2Config::of_model_bytes(&bytes, path)?;
        let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(0);
        let mut model = config.init::<F>(&mut rng)?;
        serialize::load_weights_from_bytes(&mut model, &bytes, path)?;
        Ok(model)
    }
}

/// The plain [`Module`] view: every utterance spans the whole input.
impl<F: Float> Module<F> for Ds2<F> {
    fn name(&self) -> String {
        format!(
            "Ds2({} conv, {}x bi-{}({}))",
            self.convs.len(),
            self.rnns.len(),
            self.config.rnn.cell.label(),
            self.config.rnn.hidden
        )
    }

    fn forward(&mut self, input: &Tensor<F>) -> kiln_nn::Result<Tensor<F>> {
        let lengths = vec![
            input.shape().get(3).copied().unwrap_or(0);
            input.shape().first().copied().unwrap_or(0)
        ];
        self.forward_with_lengths(input, &lengths)
            .map(|(y, _)| y)
            .map_err(|e| NnError::invalid(self.name(), e.to_string()))
    }

    fn backward(
        &mut self,
        input: &Tensor<F>,
        grad_output: &Tensor<F>,
    ) -> kiln_nn::Result<Tensor<F>> {
        let lengths = vec![
            input.shape().get(3).copied().unwrap_or(0);
            input.shape().first().copied().unwrap_or(0)
        ];
        self.backward_with_lengths(input, &lengths, grad_output)
            .map_err(|e| NnError::invalid(self.name(), e.to_string()))
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        for (i, b) in self.convs.iter().enumerate() {
            b.conv
                .visit_params(&qualified(prefix, &format!("conv.{i}.conv")), f);
            b.bn.visit_params(&qualified(prefix, &format!("conv.{i}.bn")), f);
        }
        for (i, r) in self.rnns.iter().enumerate() {
            if i > 0 {
                self.rnn_norms[i - 1].visit_params(&qualified(prefix, &format!("rnn.{i}.norm")), f);
            }
            r.visit_params(&qualified(prefix, &format!("rnn.{i}")), f);
        }
        self.fc_norm.visit_params(&qualified(prefix, "fc.norm"), f);
        self.fc.visit_params(&qualified(prefix, "fc"), f);
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        for (i, b) in self.convs.iter_mut().enumerate() {
            b.conv
                .visit_params_mut(&qualified(prefix, &format!("conv.{i}.conv")), f);
            b.bn.visit_params_mut(&qualified(prefix, &format!("conv.{i}.bn")), f);
        }
        for (i, r) in self.rnns.iter_mut().enumerate() {
            if i > 0 {
                self.rnn_norms[i - 1]
                    .visit_params_mut(&qualified(prefix, &format!("rnn.{i}.norm")), f);
            }
            r.visit_params_mut(&qualified(prefix, &format!("rnn.{i}")), f);
        }
        self.fc_norm
            .visit_params_mut(&qualified(prefix, "fc.norm"), f);
        self.fc.visit_params_mut(&qualified(prefix, "fc"), f);
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor<F>)) {
        for (i, b) in self.convs.iter().enumerate() {
            b.bn.visit_buffers(&qualified(prefix, &format!("conv.{i}.bn")), f);
        }
        for (i, n) in self.rnn_norms.iter().enumerate() {
            n.visit_buffers(&qualified(prefix, &format!("rnn.{}.norm", i + 1)), f);
        }
        self.fc_norm.visit_buffers(&qualified(prefix, "fc.norm"), f);
    }

    fn visit_buffers_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor<F>)) {
        for (i, b) in self.convs.iter_mut().enumerate() {
            b.bn.visit_buffers_mut(&qualified(prefix, &format!("conv.{i}.bn")), f);
        }
        for (i, n) in self.rnn_norms.iter_mut().enumerate() {
            n.visit_buffers_mut(&qualified(prefix, &format!("rnn.{}.norm", i + 1)), f);
        }
        self.fc_norm
            .visit_buffers_mut(&qualified(prefix, "fc.norm"), f);
    }

    fn set_training(&mut self, training: bool) {
        for b in &mut self.convs {
            b.bn.set_training(training);
        }
        for n in &mut self.rnn_norms {
            n.set_training(training);
        }
        self.fc_norm.set_training(training);
    }

    /// The layers in order, for inspection only (the reshape and the
    /// length handling between them are DS2's own; reload with [`Ds2::load`]).
    fn config(&self) -> LayerConfig {
        let mut layers = Vec::new();
        for b in &self.convs {
            layers.push(b.conv.config());
            layers.push(b.bn.config());
            layers.push(Module::<F>::config(&b.act));
        }
        for (i, r) in self.rnns.iter().enumerate() {
            if i > 0 {
                layers.push(self.rnn_norms[i - 1].config());
            }
            layers.push(Module::<F>::config(r));
        }
        layers.push(self.fc_norm.config());
        layers.push(self.fc.config());
        layers.push(Module::<F>::config(&self.log_softmax));
        LayerConfig::Sequential { layers }
    }
}
