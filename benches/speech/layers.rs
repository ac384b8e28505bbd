//! Where a DS2 step spends its time: the two convolutions and the two kinds
//! of bidirectional GRU layer of `ds2_gru.toml`, alone, at the shapes they
//! see inside the model (forward, and forward + backward).

use kiln_nn::layers::{
    BiRecurrentConfig, CellKind, Conv2dConfig, MergeMode, RecurrentConfig, SequenceModule,
};
use kiln_nn::{Module, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::ds2::{config, BATCH, FRAMES, FREQ};
use crate::timing::{time_n, Timing};

fn emit(layer: &str, shape: &[usize], threads: usize, fwd: &Timing, fb: &Timing) {
    println!(
        "{{\"bench\":\"ds2_layer\",\"impl\":\"kiln\",\"threads\":{threads},\"layer\":\"{layer}\",\"input\":{shape:?},\"fwd_ms\":{:.3},\"fwd_bwd_ms\":{:.3},\"bg_pct\":{:.1}}}",
        fwd.median_s * 1e3,
        fb.median_s * 1e3,
        fwd.bg_pct.max(fb.bg_pct)
    );
}

/// Times `forward` and `forward + backward` of one layer held in `s`.
fn time_layer<S>(
    s: &mut S,
    fwd: impl Fn(&mut S) -> Tensor<f32>,
    bwd: impl Fn(&mut S, &Tensor<f32>),
    tries: usize,
) -> (Timing, Timing) {
    let f = time_n(
        || {
            fwd(s);
        },
        1,
        5,
        tries,
    );
    let fb = time_n(
        || {
            let y = fwd(s);
            bwd(s, &y);
        },
        1,
        5,
        tries,
    );
    (f, fb)
}

/// Conv 1, conv 2, the first GRU layer (1312 -> 256) and a later one (256 -> 256).
pub(crate) fn run(threads: usize, tries: usize) {
    let cfg = config();
    let mut rng = StdRng::seed_from_u64(0);
    let mut in_ch = 1;
    let mut shape = vec![BATCH, 1, FREQ, FRAMES];
    for (i, spec) in cfg.conv.iter().enumerate() {
        let mut conv = Conv2dConfig::new(in_ch, spec.channels, spec.kernel)
            .with_stride(spec.stride)
            .with_padding(spec.padding)
            .with_bias(false)
            .init::<f32>(&mut rng)
            .expect("conv init");
        let x = kiln_nn::init::normal::<f32>(&mut rng, &shape, 0.0, 1.0);
        let (f, fb) = time_layer(
            &mut conv,
            |c| c.forward(&x).expect("conv forward"),
            |c, y| {
                let g = Tensor::<f32>::ones(y.raw_dim());
                c.backward(&x, &g).expect("conv backward");
            },
            tries,
        );
        emit(&format!("conv{}", i + 1), &shape, threads, &f, &fb);
        shape = vec![
            BATCH,
            spec.channels,
            spec.out_len(0, shape[2]),
            spec.out_len(1, shape[3]),
        ];
        in_ch = spec.channels;
    }
    let t_out = shape[3];
    let lens = vec![t_out; BATCH];
    for (name, input) in [
        ("bigru_1312_256", cfg.rnn_input_size()),
        ("bigru_256_256", cfg.rnn.hidden),
    ] {
        let layer = RecurrentConfig::new(CellKind::Gru, input, cfg.rnn.hidden);
        let mut rnn = BiRecurrentConfig::new(layer, MergeMode::Sum)
            .init::<f32>(&mut rng)
            .expect("GRU init");
        let x = kiln_nn::init::normal::<f32>(&mut rng, &[t_out, BATCH, input], 0.0, 1.0);
        let (f, fb) = time_layer(
            &mut rnn,
            |r| r.forward_with_lengths(&x, &lens).expect("GRU forward"),
            |r, y| {
                let g = Tensor::<f32>::ones(y.raw_dim());
                r.backward_with_lengths(&x, &lens, &g)
                    .expect("GRU backward");
            },
            tries,
        );
        emit(name, &[t_out, BATCH, input], threads, &f, &fb);
    }
}
