//! Conv2d forward+backward: the two LeNet-5 conv layers (batch 128) and a
//! 3x3 64→64 conv on 75x75 inputs (batch 32), as benches/peers/torch_nn.py.

use kiln_nn::layers::Conv2dConfig;
use kiln_nn::{Module, ModuleExt};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::timing::time_it;

/// (name, in, out, kernel, padding, batch, height/width)
pub(crate) const CASES: [(&str, usize, usize, usize, usize, usize, usize); 3] = [
    ("lenet_conv1_1x6_5x5_28x28_b128", 1, 6, 5, 0, 128, 28),
    ("lenet_conv2_6x16_5x5_12x12_b128", 6, 16, 5, 0, 128, 12),
    ("conv3x3_64x64_75x75_b32", 64, 64, 3, 1, 32, 75),
];

pub(crate) fn run(threads: usize) {
    let mut rng = StdRng::seed_from_u64(0);
    for (name, cin, cout, k, pad, batch, hw) in CASES {
        let mut conv = match Conv2dConfig::new(cin, cout, [k, k])
            .with_padding([pad, pad])
            .init::<f32>(&mut rng)
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{name}: {e}");
                continue;
            }
        };
        let x = kiln_nn::init::uniform::<f32>(&mut rng, &[batch, cin, hw, hw], 1.0);
        let y = conv.forward(&x).unwrap_or_default();
        let g = kiln_nn::init::uniform::<f32>(&mut rng, y.shape(), 1.0);
        let fwd = time_it(
            || {
                let _ = conv.forward(&x);
            },
            5,
        );
        let fb = time_it(
            || {
                conv.zero_grad();
                let _ = conv.forward(&x);
                let _ = conv.backward(&x, &g);
            },
            5,
        );
        println!(
            "{{\"bench\":\"conv2d\",\"case\":\"{name}\",\"impl\":\"kiln\",\"threads\":{threads},\"fwd_ms\":{:.3},\"fwd_bwd_ms\":{:.3},\"fwd_bwd_min_ms\":{:.3},\"iters\":{},\"bg_pct\":{:.1}}}",
            fwd.median_s * 1e3,
            fb.median_s * 1e3,
            fb.min_s * 1e3,
            fb.iters,
            fwd.bg_pct.max(fb.bg_pct)
        );
    }
}
