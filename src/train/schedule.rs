//! Learning-rate schedules as a pure function of the step: `factor(step)` multiplies each
//! group's base lr. Warm-up rises linearly from 1/warmup to 1; after it, cosine and linear decay
//! fall monotonically to `final_factor` at the last step and never rise again.

use crate::config::{Schedule, ScheduleKind};

/// The lr multiplier at optimizer step `step` (0-based) of a run of `total` steps with
/// `steps_per_epoch` steps per epoch.
pub fn factor(s: &Schedule, step: u64, total: u64, steps_per_epoch: u64) -> f64 {
    if step < s.warmup_steps {
        return (step + 1) as f64 / s.warmup_steps as f64;
    }
    let span = total.saturating_sub(s.warmup_steps).max(1) as f64;
    let progress = ((step - s.warmup_steps) as f64 / span).clamp(0.0, 1.0);
    match s.kind {
        ScheduleKind::Constant => 1.0,
        ScheduleKind::Cosine => s.final_factor + (1.0 - s.final_factor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        ScheduleKind::Linear => 1.0 - (1.0 - s.final_factor) * progress,
        ScheduleKind::Step => {
            let epoch = step / steps_per_epoch.max(1);
            let passed = s.milestones.iter().filter(|&&m| epoch >= m).count();
            s.gamma.powi(passed as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: u64) -> Schedule {
        Schedule {
            kind,
            warmup_steps: warmup,
            final_factor: 0.0,
            milestones: vec![2, 4],
            gamma: 0.1,
        }
    }

    /// The earlier Python attempt's schedule went to zero and back up: guard against that.
    #[test]
    fn decays_never_rise_after_warmup() {
        for kind in [
            ScheduleKind::Cosine,
            ScheduleKind::Linear,
            ScheduleKind::Step,
            ScheduleKind::Constant,
        ] {
            let s = sched(kind, 175);
            let total = 35_000;
            let f: Vec<f64> = (0..total + 500).map(|t| factor(&s, t, total, 175)).collect();
            assert!((f[174] - 1.0).abs() < 1e-12, "{kind:?} reaches 1 at the end of warm-up");
            assert!(f[..175].windows(2).all(|w| w[1] > w[0]), "{kind:?} warm-up rises");
            assert!(f[175..].windows(2).all(|w| w[1] <= w[0] + 1e-12), "{kind:?} rises after warm-up");
            assert!(f.iter().all(|&x| (0.0..=1.0).contains(&x)));
        }
    }

    #[test]
    fn end_points() {
        let total = 1000;
        assert!(factor(&sched(ScheduleKind::Cosine, 0), total, total, 10).abs() < 1e-12);
        assert!((factor(&sched(ScheduleKind::Cosine, 0), 500, total, 10) - 0.5).abs() < 1e-12);
        assert!((factor(&sched(ScheduleKind::Linear, 0), 250, total, 10) - 0.75).abs() < 1e-12);
        let step = sched(ScheduleKind::Step, 0);
        assert_eq!(factor(&step, 19, total, 10), 1.0);
        assert!((factor(&step, 20, total, 10) - 0.1).abs() < 1e-12);
        assert!((factor(&step, 45, total, 10) - 0.01).abs() < 1e-12);
    }
}
