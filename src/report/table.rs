//! The markdown tables of a report: one row per run, and pixelseq beside PyTorch per bench
//! configuration.

use super::format::{cell, duration, thousands};
use super::{headline, spt, Report};
use crate::bench::Record;

impl Report {
    /// The results table, a note on what the numbers are, and the plots as images whose paths
    /// start with `prefix` (empty, or a relative folder ending in `/`).
    pub fn markdown(&self, prefix: &str) -> String {
        let mut s = headline::markdown(&self.headline, &self.runs);
        s += "Every recorded run:\n\n";
        s += "| Model | Preset | Task | Paper | Paper setting | Best val | Test | Test − paper | Parameters | Train img/s | Device | Wall time | Date | Commit |\n\
              |---|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|---|---|\n";
        for r in &self.runs {
            let rec = &r.record;
            let pct = |v: f64| format!("{v:.2}%");
            let cells = [
                cell(r.model_name()),
                match (&rec.preset, &rec.init) {
                    (Some(p), Some(_)) => cell(&format!("{p}, fine-tuned after SPT")),
                    (Some(p), None) => cell(p),
                    (None, _) => "—".into(),
                },
                cell(&r.task_name()),
                rec.paper_figure.map_or("—".into(), pct),
                cell(rec.paper_setting.as_deref().unwrap_or("—")),
                pct(100.0 * rec.best_val_acc),
                pct(100.0 * rec.test_acc),
                rec.paper_figure.map_or("—".into(), |f| format!("{:+.2}", 100.0 * rec.test_acc - f)),
                thousands(rec.params),
                thousands(rec.img_per_s.round() as i64),
                cell(&rec.device),
                duration(rec.wall_s),
                cell(&rec.date),
                format!("`{}`", cell(&rec.commit)),
            ];
            s += &format!("| {} |\n", cells.join(" | "));
        }
        s += "\nBest val: the best validation accuracy during training. Test: the CIFAR-10 test split scored with the \
              checkpoint of best validation accuracy. Paper: the accuracy the paper reports for the setting. Train \
              img/s: training images per second of training steps (evaluation excluded), over the whole run.\n\n";
        let spt = spt::rows(&self.runs, &self.pretraining);
        if !spt.is_empty() {
            s += &spt::markdown(&spt);
        }
        if !self.speed.is_empty() {
            s += &self.speed_markdown();
        }
        for p in &self.plots {
            s += &format!("![{}]({prefix}{}.png)\n\n", p.title, p.stem);
        }
        s.trim_end().to_string() + "\n"
    }

    /// The bench table: throughput of both implementations, their ratio, peak memory.
    fn speed_markdown(&self) -> String {
        let mut s = String::from(
            "| Device | Preset | L | Batch | Train img/s | PyTorch | Ratio | Inference img/s | PyTorch | Ratio | Peak MiB | PyTorch |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let num = |v: Option<f64>| match v {
            Some(v) if v >= 100.0 => thousands(v.round() as i64),
            Some(v) => format!("{v:.1}"),
            None => "n/a".into(),
        };
        let ratio = |r: Option<f64>| r.map_or("—".into(), |r| format!("{r:.2}"));
        for r in &self.speed {
            let cells = [
                cell(&r.device),
                cell(&r.label),
                r.seq_len.to_string(),
                r.batch.to_string(),
                num(r.ours[0]),
                num(r.theirs[0]),
                ratio(r.ratio(0)),
                num(r.ours[1]),
                num(r.theirs[1]),
                ratio(r.ratio(1)),
                num(r.ours[2]),
                num(r.theirs[2]),
            ];
            s += &format!("| {} |\n", cells.join(" | "));
        }
        s + "\nSpeed: `pixelseq bench` beside the same model in PyTorch (`bench/reference/`) in the same run; \
             Ratio = pixelseq / PyTorch images per second (above 1: pixelseq is faster). n/a: the configuration \
             did not run (the reason is in the bench file's note).\n\n"
    }
}

/// One configuration of a bench file with both implementations' figures (`None`: did not run).
pub struct SpeedRow {
    pub device: String,
    pub label: String,
    pub seq_len: i64,
    pub batch: i64,
    pub ours: [Option<f64>; 3],
    pub theirs: [Option<f64>; 3],
}

impl SpeedRow {
    /// pixelseq / PyTorch throughput, training (0) or inference (1).
    fn ratio(&self, i: usize) -> Option<f64> {
        Some(self.ours[i]? / self.theirs[i]?)
    }
}

/// Pairs each pixelseq measurement with the PyTorch one of the same device, preset, length and
/// batch, in the order of the files.
pub(super) fn speed_rows(entries: &[Record]) -> Vec<SpeedRow> {
    let figures = |e: &Record| [e.train_img_per_s, e.infer_img_per_s, e.peak_mem_mb];
    entries
        .iter()
        .filter(|e| e.implementation == "pixelseq")
        .map(|e| {
            let theirs = entries.iter().find(|t| {
                t.implementation == "pytorch" && (&t.device, t.label(), t.seq_len, t.batch) == (&e.device, e.label(), e.seq_len, e.batch)
            });
            SpeedRow {
                device: e.device.clone(),
                label: e.label().to_string(),
                seq_len: e.seq_len,
                batch: e.batch,
                ours: figures(e),
                theirs: theirs.map_or([None; 3], figures),
            }
        })
        .collect()
}
