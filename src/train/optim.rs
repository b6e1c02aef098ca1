//! AdamW over tensors we own, so that its state (moments and step count) can be saved and a
//! resumed run continues exactly. tch's built-in optimizer cannot export its moments.
//!
//! Groups follow the tags of [`crate::models`]: DECAY matrices take `weight_decay`; 1-D tensors of
//! DECAY and everything in NO_DECAY take none; SSM takes `ssm_lr` and no weight decay. The update
//! is PyTorch's `torch.optim.AdamW` (decoupled decay, bias-corrected moments, eps outside the sqrt),
//! run by its fused multi-tensor kernel.

use std::collections::HashMap;

use anyhow::{bail, Result};
use tch::{nn, Kind, Tensor};

use super::multi_tensor::{self, AdamWStep, Lr};
use crate::config::Optim;
use crate::models::{NO_DECAY, SSM};
use crate::run::checkpoint::Moments;

struct Param {
    name: String,
    value: Tensor,
    m: Tensor,
    v: Tensor,
}

/// One parameter group: a base learning rate, its weight decay and its parameters.
pub struct Group {
    pub label: &'static str,
    pub lr: f64,
    pub weight_decay: f64,
    params: Vec<Param>,
}

impl Group {
    pub fn numel(&self) -> i64 {
        self.params.iter().map(|p| p.value.numel() as i64).sum()
    }
}

pub struct AdamW {
    pub groups: Vec<Group>,
    betas: [f64; 2],
    eps: f64,
    /// Number of updates taken so far.
    pub t: u64,
    /// `t` as a float32 scalar on the parameters' device, read by the fused kernel.
    step: Tensor,
    /// The learning rate each non-empty group took at the last update, by label: computed once
    /// per step, by [`AdamW::schedule`], and what the log and the metrics record.
    applied: Vec<(&'static str, f64)>,
    /// Each non-empty group's learning rate as a float32 scalar on the device, read by a captured
    /// update; empty until [`AdamW::capturable`].
    lrs: Vec<Tensor>,
}

impl AdamW {
    /// Sorts the store's trainable variables into groups, by name for a stable order. A trainable
    /// tensor is found by its storage; two names sharing one storage, or a trainable tensor
    /// without a name, would make the checkpoint's optimizer state ambiguous and are refused.
    /// Empty tensors (no storage, nothing to update) are left out.
    pub fn new(vs: &nn::VarStore, cfg: &Optim) -> Result<AdamW> {
        let mut names: HashMap<usize, String> = HashMap::new();
        {
            let vars = vs.variables_.lock().expect("the variable store's lock is not poisoned");
            for (name, t) in vars.named_variables.iter().filter(|(_, t)| t.numel() > 0) {
                if let Some(other) = names.insert(t.data_ptr() as usize, name.clone()) {
                    bail!("variables `{other}` and `{name}` share one storage; the optimizer cannot tell them apart");
                }
            }
        }
        let mut groups = vec![
            Group {
                label: "decay",
                lr: cfg.lr,
                weight_decay: cfg.weight_decay,
                params: vec![],
            },
            Group {
                label: "no-decay",
                lr: cfg.lr,
                weight_decay: 0.0,
                params: vec![],
            },
            Group {
                label: "ssm",
                lr: cfg.ssm_lr.unwrap_or(cfg.lr),
                weight_decay: 0.0,
                params: vec![],
            },
        ];
        let vars = vs.variables_.lock().expect("the variable store's lock is not poisoned");
        for var in vars.trainable_variables.iter().filter(|v| v.tensor.numel() > 0) {
            let t = &var.tensor;
            let Some(name) = names.get(&(t.data_ptr() as usize)).cloned() else {
                bail!("a trainable tensor of shape {:?} has no name in the variable store", t.size());
            };
            let g = match var.group {
                SSM => 2,
                NO_DECAY => 1,
                _ if t.dim() < 2 => 1,
                _ => 0,
            };
            let zeros = || Tensor::zeros_like(t).to_kind(Kind::Float);
            groups[g].params.push(Param {
                name,
                value: t.shallow_clone(),
                m: zeros(),
                v: zeros(),
            });
        }
        for g in &mut groups {
            g.params.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(AdamW {
            groups,
            betas: cfg.betas,
            eps: cfg.eps,
            t: 0,
            step: Tensor::zeros([], (Kind::Float, vs.device())),
            applied: Vec::new(),
            lrs: Vec::new(),
        })
    }

    /// One line per non-empty group: label, tensors, scalars, lr, weight decay.
    pub fn describe(&self) -> Vec<String> {
        self.groups
            .iter()
            .filter(|g| !g.params.is_empty())
            .map(|g| {
                format!(
                    "{:>8}: {:>3} tensors, {:>10} params, lr {:.2e}, weight decay {}",
                    g.label,
                    g.params.len(),
                    g.numel(),
                    g.lr,
                    g.weight_decay
                )
            })
            .collect()
    }

    /// The learning rate of each non-empty group at the last update, by label.
    pub fn applied(&self) -> &[(&'static str, f64)] {
        &self.applied
    }

    /// The last update's learning rate of `group` (`"decay"`, `"no-decay"`, `"ssm"`), if it has
    /// parameters.
    pub fn lr_of(&self, group: &str) -> Option<f64> {
        self.applied.iter().find(|(label, _)| *label == group).map(|(_, lr)| *lr)
    }

    fn params(&self) -> impl Iterator<Item = &Param> {
        self.groups.iter().flat_map(|g| g.params.iter())
    }

    /// The gradients the last backward pass produced (parameters it did not reach have none).
    fn grads(&self) -> Vec<Tensor> {
        self.params().map(|p| p.value.grad()).filter(|g| g.defined()).collect()
    }

    /// Drops every gradient (PyTorch's `zero_grad(set_to_none=True)`): the next backward pass
    /// writes fresh gradients instead of adding into zeroed ones.
    pub fn zero_grad(&self) -> Result<()> {
        let values: Vec<Tensor> = self.params().map(|p| p.value.shallow_clone()).collect();
        multi_tensor::clear_grads(&values)
    }

    /// Multiplies every gradient by `factor` (the fp16 loss-scale removal).
    pub fn scale_grads(&self, factor: f64) -> Result<()> {
        let grads = self.grads();
        let factor = Tensor::from(factor as f32).to_device(self.step.device());
        tch::no_grad(|| multi_tensor::mul_(&grads, &factor))
    }

    /// Scales all gradients so their global norm is at most `max_norm`; returns the norm before
    /// clipping as a device scalar (no host synchronisation). Two multi-tensor kernels, as
    /// PyTorch's `clip_grad_norm_(foreach=True)`.
    pub fn clip_grad_norm(&self, max_norm: f64) -> Result<Tensor> {
        let grads = self.grads();
        if grads.is_empty() {
            return Ok(Tensor::zeros([], (Kind::Float, self.step.device())));
        }
        tch::no_grad(|| {
            let total = multi_tensor::total_norm(&grads)?; // ()
            let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
            multi_tensor::mul_(&grads, &coef)?;
            Ok(total)
        })
    }

    /// One AdamW update with every group's lr multiplied by `factor` (the schedule): one fused
    /// kernel per group, PyTorch's `AdamW(fused=True)`.
    pub fn step(&mut self, factor: f64) -> Result<()> {
        self.schedule(factor);
        let _ = self.step.fill_(self.t as f64);
        self.update(|g| Lr::Value(self.applied[g].1))
    }

    /// The host's half of a step: counts the update and sets each group's learning rate (`factor`
    /// of its own), and, once [`AdamW::capturable`] made them, the device scalars a captured
    /// update reads. [`AdamW::step`] calls it; a CUDA graph's replay follows it instead.
    pub fn schedule(&mut self, factor: f64) {
        self.t += 1;
        self.applied = self
            .groups
            .iter()
            .filter(|g| !g.params.is_empty())
            .map(|g| (g.label, g.lr * factor))
            .collect();
        for (lr, (_, value)) in self.lrs.iter_mut().zip(&self.applied) {
            let _ = lr.fill_(*value);
        }
    }

    /// Makes the device scalars a captured update reads its learning rates from (PyTorch's
    /// `capturable` AdamW), before the capture; [`AdamW::schedule`] fills them from then on.
    pub fn capturable(&mut self) {
        let live = self.groups.iter().filter(|g| !g.params.is_empty()).count();
        self.lrs = (0..live).map(|_| Tensor::zeros([], (Kind::Float, self.step.device()))).collect();
    }

    /// The device's half of a step, as a CUDA graph captures it: the step count advances on the
    /// device, and each group reads its learning rate from its scalar (float32: the fused
    /// kernel's capturable form rounds the rate to float32, where [`AdamW::step`] passes it as a
    /// double). Needs [`AdamW::capturable`] first.
    pub fn update_captured(&mut self) -> Result<()> {
        assert!(!self.lrs.is_empty(), "AdamW::capturable comes before a captured update");
        let _ = self.step.g_add_scalar_(1.0);
        self.update(|g| Lr::Tensor(&self.lrs[g]))
    }

    /// One fused kernel per non-empty group (`lr` of its index among them) over the parameters
    /// the last backward pass reached.
    fn update<'a>(&'a self, lr: impl Fn(usize) -> Lr<'a>) -> Result<()> {
        tch::no_grad(|| {
            for (i, g) in self.groups.iter().filter(|g| !g.params.is_empty()).enumerate() {
                let (live, grads): (Vec<&Param>, Vec<Tensor>) = g
                    .params
                    .iter()
                    .map(|p| (p, p.value.grad()))
                    .filter(|(_, grad)| grad.defined())
                    .unzip();
                if live.is_empty() {
                    continue;
                }
                let list = |f: fn(&Param) -> Tensor| live.iter().map(|p| f(p)).collect::<Vec<_>>();
                let hyper = AdamWStep {
                    lr: lr(i),
                    betas: self.betas,
                    weight_decay: g.weight_decay,
                    eps: self.eps,
                };
                multi_tensor::fused_adamw(
                    &list(|p| p.value.shallow_clone()),
                    &grads,
                    &list(|p| p.m.shallow_clone()),
                    &list(|p| p.v.shallow_clone()),
                    &self.step,
                    &hyper,
                )?;
            }
            Ok(())
        })
    }
}

impl Moments for AdamW {
    /// The moments, named `m.<param>` and `v.<param>`.
    fn moments(&self) -> Vec<(String, Tensor)> {
        self.params()
            .flat_map(|p| {
                [
                    (format!("m.{}", p.name), p.m.shallow_clone()),
                    (format!("v.{}", p.name), p.v.shallow_clone()),
                ]
            })
            .collect()
    }

    /// Restores moments saved by [`Moments::moments`] and the step count.
    fn load_moments(&mut self, tensors: Vec<(String, Tensor)>, t: u64) -> Result<()> {
        let mut map: HashMap<String, Tensor> = tensors.into_iter().collect();
        for g in &mut self.groups {
            for p in &mut g.params {
                for (prefix, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                    let key = format!("{prefix}.{}", p.name);
                    let Some(saved) = map.remove(&key) else {
                        bail!("optimizer state has no `{key}`")
                    };
                    if saved.size() != slot.size() {
                        bail!(
                            "optimizer state `{key}` has shape {:?}, the model needs {:?}",
                            saved.size(),
                            slot.size()
                        );
                    }
                    tch::no_grad(|| slot.copy_(&saved));
                }
            }
        }
        self.t = t;
        let _ = self.step.fill_(t as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{Module, OptimizerConfig};
    use tch::Device;

    fn model(vs: &nn::VarStore, bias: bool) -> impl Module {
        let p = vs.root();
        let c = nn::LinearConfig {
            bias,
            ..Default::default()
        };
        nn::seq()
            .add(nn::linear(&p / "a", 4, 8, c))
            .add_fn(|x| x.relu())
            .add(nn::linear(&p / "b", 8, 3, c))
    }

    /// Same trajectory as tch's own AdamW (libtorch's implementation) with the same settings
    /// (a model without biases, since tch decays biases too).
    #[test]
    fn matches_libtorch_adamw() {
        let cfg = Optim {
            lr: 1e-2,
            betas: [0.9, 0.98],
            eps: 1e-8,
            weight_decay: 0.1,
            ..Default::default()
        };
        let xs = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));
        let ys = Tensor::randint(3, [16], (Kind::Int64, Device::Cpu));
        let vs_a = nn::VarStore::new(Device::Cpu);
        let net_a = model(&vs_a, false);
        let mut vs_b = nn::VarStore::new(Device::Cpu);
        let net_b = model(&vs_b, false);
        vs_b.copy(&vs_a).unwrap();
        let mut ours = AdamW::new(&vs_a, &cfg).unwrap();
        let mut theirs = nn::AdamW {
            beta1: 0.9,
            beta2: 0.98,
            wd: 0.1,
            eps: 1e-8,
            amsgrad: false,
        }
        .build(&vs_b, 1e-2)
        .unwrap();
        for _ in 0..20 {
            ours.zero_grad().unwrap();
            net_a.forward(&xs).cross_entropy_for_logits(&ys).backward();
            ours.step(1.0).unwrap();
            theirs.zero_grad();
            net_b.forward(&xs).cross_entropy_for_logits(&ys).backward();
            theirs.step();
        }
        let a = vs_a.variables();
        for (name, tb) in vs_b.variables() {
            let diff = (&a[&name] - &tb).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{name}: {diff}");
        }
    }

    /// The update a CUDA graph captures (learning rates and step count read from device scalars,
    /// set by `schedule`) is the eager one, through a schedule that changes every step, with
    /// three groups of different rates and weight decays, and after a resume of the moments.
    #[test]
    fn the_capturable_update_is_the_eager_one() {
        let cfg = Optim {
            lr: 1e-2,
            weight_decay: 0.1,
            ssm_lr: Some(3e-3),
            ..Default::default()
        };
        let xs = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25, 1.5, -0.5, 0.0, 1.0]).view([2, 4]);
        let ys = Tensor::from_slice(&[0i64, 2]);
        let build = || {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = model(&vs, true);
            let ssm = vs.root().set_group(SSM).var("log_dt", &[3], nn::Init::Const(0.5));
            let init: Vec<f32> = (0..vs.variables().len() * 64)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0)
                .collect();
            tch::no_grad(|| {
                let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
                vars.sort_by(|a, b| a.0.cmp(&b.0));
                for (k, (_, mut t)) in vars.into_iter().enumerate() {
                    let n = t.numel() as i64;
                    t.copy_(&Tensor::from_slice(&init[k * 64..k * 64 + n as usize]).view(t.size().as_slice()));
                }
            });
            (vs, net, ssm)
        };
        let (vs_a, net_a, ssm_a) = build();
        let (vs_b, net_b, ssm_b) = build();
        let mut eager = AdamW::new(&vs_a, &cfg).unwrap();
        let mut captured = AdamW::new(&vs_b, &cfg).unwrap();
        captured.capturable();
        for step in 0..12 {
            let factor = 1.0 - step as f64 / 12.0;
            eager.zero_grad().unwrap();
            (net_a.forward(&xs) * &ssm_a.sum(Kind::Float))
                .cross_entropy_for_logits(&ys)
                .backward();
            eager.step(factor).unwrap();
            captured.zero_grad().unwrap();
            (net_b.forward(&xs) * &ssm_b.sum(Kind::Float))
                .cross_entropy_for_logits(&ys)
                .backward();
            captured.schedule(factor);
            captured.update_captured().unwrap();
            if step == 5 {
                let moments = captured.moments().into_iter().map(|(n, t)| (n, t.copy())).collect();
                captured.load_moments(moments, captured.t).unwrap();
            }
        }
        assert_eq!((eager.t, captured.t), (12, 12));
        assert_eq!(eager.applied(), captured.applied());
        assert_eq!(
            captured.step.double_value(&[]),
            12.0,
            "the device's step count advanced with the host's"
        );
        let a = vs_a.variables();
        for (name, b) in vs_b.variables() {
            let scale = a[&name].abs().max().double_value(&[]).max(1e-3);
            let diff = (&a[&name] - &b).abs().max().double_value(&[]);
            assert!(diff <= 1e-6 * scale, "{name}: {diff} (scale {scale})");
        }
    }

    #[test]
    fn groups_follow_tags_and_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let _ = nn::linear(&p / "lin", 4, 4, Default::default());
        let _ = p.set_group(NO_DECAY).var("emb", &[10, 4], nn::Init::Const(0.0));
        let _ = p.set_group(SSM).var("log_dt", &[4], nn::Init::Const(0.0));
        let cfg = Optim {
            weight_decay: 0.05,
            ssm_lr: Some(1e-3),
            ..Default::default()
        };
        let opt = AdamW::new(&vs, &cfg).unwrap();
        let names = |i: usize| opt.groups[i].params.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(0), ["lin.weight"]);
        assert_eq!(names(1), ["emb", "lin.bias"]);
        assert_eq!(names(2), ["log_dt"]);
        assert_eq!(opt.groups[2].lr, 1e-3);
        assert_eq!(opt.groups[2].weight_decay, 0.0);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = model(&vs, true);
        let opt = AdamW::new(&vs, &Optim::default()).unwrap();
        (net.forward(&Tensor::ones([2, 4], (Kind::Float, Device::Cpu))).sum(Kind::Float) * 1000.0).backward();
        let before = opt.clip_grad_norm(0.5).unwrap().double_value(&[]);
        assert!(before > 0.5);
        let after = opt.clip_grad_norm(1e9).unwrap().double_value(&[]);
        assert!((after - 0.5).abs() < 1e-3, "{after}");
    }

    /// zero_grad drops gradients; a parameter the backward pass did not reach is not updated, not
    /// even decayed (PyTorch skips parameters whose gradient is None).
    #[test]
    fn parameters_without_gradients_are_left_alone() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let used = p.var("used", &[3, 3], nn::Init::Const(1.0));
        let unused = p.var("unused", &[3, 3], nn::Init::Const(1.0));
        let cfg = Optim {
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = AdamW::new(&vs, &cfg).unwrap();
        used.sum(Kind::Float).backward();
        opt.zero_grad().unwrap();
        assert!(!used.grad().defined());
        (&used * 2.0).sum(Kind::Float).backward();
        opt.step(1.0).unwrap();
        assert!(used.max().double_value(&[]) < 1.0);
        assert_eq!(unused.min().double_value(&[]), 1.0);
        assert_eq!(unused.max().double_value(&[]), 1.0);
    }
}
