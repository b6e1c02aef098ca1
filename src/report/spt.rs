//! The self-pretraining table of a report: each fine-tuned run (`train --init`) beside the
//! pretraining run it started from and the from-scratch run of the same preset, steps and device.

use std::path::Path;

use super::format::{cell, duration, thousands};
use super::runs::Run;
use crate::models::Objective;

/// One fine-tuned run with what it is compared with (`None`: not among the reported runs).
pub struct SptRow<'a> {
    pub tuned: &'a Run,
    pub pretraining: Option<&'a Run>,
    pub scratch: Option<&'a Run>,
}

/// A row per fine-tuned run among `runs`. Its pretraining run is the one among `pretraining` at
/// the path `init` names, else the one whose folder has that path's last name (a record moved
/// with its run, as under `results/`); its from-scratch run is the newest run of `runs` without
/// `init` of the same preset, task, training steps, parameter count and device.
pub fn rows<'a>(runs: &'a [Run], pretraining: &'a [Run]) -> Vec<SptRow<'a>> {
    runs.iter()
        .filter_map(|tuned| {
            let init = Path::new(tuned.record.init.as_deref()?);
            let same_path = |r: &&Run| same_folder(&r.dir, init);
            let same_name = |r: &&Run| init.file_name().is_some_and(|n| r.dir.file_name() == Some(n));
            let pre = pretraining.iter().find(same_path).or_else(|| pretraining.iter().find(same_name));
            let t = &tuned.record;
            let scratch = runs
                .iter()
                .filter(|r| {
                    let s = &r.record;
                    s.init.is_none()
                        && (&s.preset, &s.task, s.steps, s.params, &s.device) == (&t.preset, &t.task, t.steps, t.params, &t.device)
                })
                .max_by(|a, b| (&a.record.date, &a.dir).cmp(&(&b.record.date, &b.dir)));
            Some(SptRow {
                tuned,
                pretraining: pre,
                scratch,
            })
        })
        .collect()
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The markdown table of `rows`, with a note on what the columns are.
pub fn markdown(rows: &[SptRow]) -> String {
    let mut s = String::from(
        "| Preset | Task | Pretraining | Pretraining steps | Best val reconstruction loss | Fine-tuning steps \
         | Test, fine-tuned | Test, from scratch | Gain | Device | Wall time (pretraining + fine-tuning) |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---|---:|\n",
    );
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    for row in rows {
        let t = &row.tuned.record;
        let pre = row.pretraining.map(|p| &p.record);
        let objective = pre
            .and_then(|p| p.pretrain.as_ref())
            .map_or("—".to_string(), |p| match p.method.objective {
                Objective::Masked => format!("masked {:.0}%, {} loss", 100.0 * p.method.mask_ratio, p.method.loss),
                Objective::Causal => format!("causal, {} loss", p.method.loss),
            });
        let cells = [
            cell(t.preset.as_deref().unwrap_or(&t.model)),
            cell(&t.task),
            cell(&objective),
            pre.map_or("—".into(), |p| thousands(p.steps as i64)),
            pre.and_then(|p| p.pretrain.as_ref())
                .map_or("—".into(), |p| format!("{:.4}", p.best_val_loss)),
            thousands(t.steps as i64),
            pct(t.test_acc),
            row.scratch.map_or("—".into(), |r| pct(r.record.test_acc)),
            row.scratch
                .map_or("—".into(), |r| format!("{:+.2}", 100.0 * (t.test_acc - r.record.test_acc))),
            cell(&t.device),
            match pre {
                Some(p) => format!("{} + {}", duration(p.wall_s), duration(t.wall_s)),
                None => duration(t.wall_s),
            },
        ];
        s += &format!("| {} |\n", cells.join(" | "));
    }
    s + "\nSelf-pretraining (`pixelseq pretrain`, then `pixelseq train --init`): the fine-tuned run's test \
         accuracy beside the newest run trained from scratch with the same preset, task, steps, parameter count \
         and device. \
         Gain: fine-tuned − from scratch, in points.\n\n"
}
