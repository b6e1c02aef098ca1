//! The results of a bench run as a terminal table.

use super::Record;

/// The results as a terminal table, one line per (preset, L), then what each PyTorch reference
/// computes and the growth of the training cost with L.
pub fn table(records: &[Record], memory: &str) -> String {
    let num = |v: Option<f64>, digits: usize| v.map_or("—".to_string(), |v| format!("{v:.digits$}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    };
    let row = |c: [&str; 14]| {
        format!(
            "{:<20} {:<14} {:>5} {:>5} | {:>9} {:>9} {:>5} | {:>9} {:>9} {:>5} | {:>8} {:>8} | {:>9}  {}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12], c[13]
        )
    };
    let mut out = format!(
        "{:48}| {:^25} | {:^25} | {:^17} |\n",
        "", "train img/s", "inference img/s", "peak MiB"
    );
    out += &row([
        "preset", "model", "L", "batch", "pixelseq", "pytorch", "ratio", "pixelseq", "pytorch", "ratio", "pixelseq", "pytorch", "params",
        "note",
    ]);
    let mut i = 0;
    while i < records.len() {
        let ours = &records[i];
        let theirs = records
            .get(i + 1)
            .filter(|r| r.implementation == "pytorch" && r.preset == ours.preset && r.seq_len == ours.seq_len);
        i += 1 + usize::from(theirs.is_some());
        let pt = |f: fn(&Record) -> Option<f64>| theirs.and_then(f);
        let params = match (ours.params, theirs.and_then(|t| t.params)) {
            (Some(a), Some(b)) if a != b => format!("{a}≠{b}"),
            (Some(a), _) | (None, Some(a)) => a.to_string(),
            (None, None) => "—".into(),
        };
        let mut notes = vec![ours.note.clone()];
        if let Some(g) = ours.graph_train_img_per_s {
            notes.push(format!(
                "as a CUDA graph: train {g:.1} img/s, ratio {}",
                ratio(Some(g), pt(|r| r.train_img_per_s))
            ));
        }
        if let Some(m) = ours.micro_batch {
            notes.push(format!("micro-batch {m}"));
        }
        if let Some(t) = theirs.filter(|t| t.note != ours.note) {
            notes.push(format!("pytorch: {}", t.note));
        }
        notes.retain(|n| !n.is_empty() && n != "pytorch: ");
        out += &row([
            &ours.preset,
            &ours.model,
            &ours.seq_len.to_string(),
            &ours.batch.to_string(),
            &num(ours.train_img_per_s, 1),
            &num(pt(|r| r.train_img_per_s), 1),
            &ratio(ours.train_img_per_s, pt(|r| r.train_img_per_s)),
            &num(ours.infer_img_per_s, 1),
            &num(pt(|r| r.infer_img_per_s), 1),
            &ratio(ours.infer_img_per_s, pt(|r| r.infer_img_per_s)),
            &num(ours.peak_mem_mb, 0),
            &num(pt(|r| r.peak_mem_mb), 0),
            &params,
            &notes.join("; "),
        ]);
    }
    out += &format!("ratio = pixelseq / pytorch throughput; peak memory: {memory}\n");
    let mut seen = Vec::new();
    for r in records.iter().filter(|r| !r.formulation.is_empty()) {
        if !seen.contains(&&r.model) {
            seen.push(&r.model);
            out += &format!("pytorch {}: {}\n", r.model, r.formulation);
        }
    }
    for line in growth(records) {
        out += &line;
        out.push('\n');
    }
    out
}

/// For each preset and implementation measured at two or more lengths: how the training time per
/// image grows from the shortest to the longest, as the exponent k of time ∝ L^k (1 for a
/// linear-cost model, 2 for full attention once it dominates).
fn growth(records: &[Record]) -> Vec<String> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in records {
        if !keys.contains(&(r.preset.as_str(), r.implementation.as_str())) {
            keys.push((&r.preset, &r.implementation));
        }
    }
    let mut lines = Vec::new();
    for (preset, implementation) in keys {
        let mut points: Vec<(i64, f64)> = records
            .iter()
            .filter(|r| r.preset == preset && r.implementation == implementation)
            .filter_map(|r| r.train_img_per_s.map(|t| (r.seq_len, 1.0 / t)))
            .collect();
        points.sort_by_key(|p| p.0);
        if let (Some(first), Some(last)) = (points.first(), points.last()) {
            if last.0 > first.0 {
                let k = (last.1 / first.1).ln() / (last.0 as f64 / first.0 as f64).ln();
                lines.push(format!(
                    "{preset} ({implementation}): training time per image ×{:.1} from L={} to L={}: ∝ L^{k:.2}",
                    last.1 / first.1,
                    first.0,
                    last.0
                ));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(implementation: &str, seq_len: i64, train: Option<f64>) -> Record {
        Record {
            model: "s4d".into(),
            preset: "p".into(),
            seq_len,
            batch: 2,
            train_img_per_s: train,
            graph_train_img_per_s: None,
            infer_img_per_s: train.map(|t| 3.0 * t),
            peak_mem_mb: Some(10.0),
            max_allocated_mb: None,
            params: Some(100),
            device: "cpu".into(),
            precision: "fp32".into(),
            implementation: implementation.into(),
            memory: "rss".into(),
            note: String::new(),
            formulation: String::new(),
            micro_batch: None,
        }
    }

    #[test]
    fn table_shows_ratios_and_growth_exponent() {
        let records = [
            rec("pixelseq", 256, Some(160.0)),
            rec("pytorch", 256, Some(80.0)),
            rec("pixelseq", 4096, Some(10.0)),
            rec("pytorch", 4096, None),
        ];
        let text = table(&records, "rss");
        assert!(text.contains("2.00"), "{text}");
        assert!(text.contains("L^1.00"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("p    ")).count(), 2, "{text}");
        assert!(!text.contains("CUDA graph"), "{text}");
    }

    /// A step measured as a CUDA graph too gets its throughput and its ratio to PyTorch's
    /// (eager) step in the note.
    #[test]
    fn a_graph_step_is_noted_with_its_ratio() {
        let mut ours = rec("pixelseq", 1024, Some(100.0));
        ours.graph_train_img_per_s = Some(300.0);
        let text = table(&[ours, rec("pytorch", 1024, Some(120.0))], "device");
        assert!(text.contains("as a CUDA graph: train 300.0 img/s, ratio 2.50"), "{text}");
    }
}
