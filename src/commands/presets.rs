//! `pixelseq presets`: every shipped preset with its parameter count and the paper figure it targets.

use anyhow::Result;
use tch::{nn, Device};

use crate::config::{preset_names, RunConfig};
use crate::models::param_count;

pub fn exec() -> Result<()> {
    println!(
        "{:<20} {:<14} {:<10} {:>11} {:>7}  setting",
        "preset", "model", "task", "parameters", "paper"
    );
    for name in preset_names()? {
        let cfg = RunConfig::load(Some(&name), None, &[])?;
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = cfg.model.build(&vs.root(), &cfg.task.input_spec())?;
        let paper = cfg.paper.clone().unwrap_or_default();
        let figure = paper.figure.map(|f| format!("{f:.2}%")).unwrap_or_else(|| "—".into());
        println!(
            "{:<20} {:<14} {:<10} {:>11} {:>7}  {} — {}",
            name,
            cfg.model.name(),
            cfg.task.name.to_string(),
            param_count(&vs),
            figure,
            paper.model,
            paper.setting
        );
    }
    Ok(())
}
