use pixelseq::config::RunConfig;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let cfg = RunConfig::load(None, Some(std::path::Path::new(&path)), &[]).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let input = cfg.task.input_spec();
    let model = cfg.model.build(&vs.root(), &input).unwrap();
    let mut opt = pixelseq::train::optim::AdamW::new(&vs, &cfg.optim);
    let b = cfg.train.batch_size;
    let xs = Tensor::randint(256, [b, 1024, input.channels], (Kind::Uint8, Device::Cpu));
    let ys = Tensor::randint(10, [b], (Kind::Int64, Device::Cpu));
    for i in 0..6 {
        let t = Instant::now();
        let loss = model.forward_t(&xs, true).cross_entropy_for_logits(&ys);
        let f = t.elapsed().as_secs_f64();
        opt.zero_grad();
        loss.backward();
        let bw = t.elapsed().as_secs_f64();
        opt.step(1.0);
        println!("step {i}: fwd {f:.3}s fwd+bwd {bw:.3}s total {:.3}s", t.elapsed().as_secs_f64());
    }
}
