//! The model card (`README.md`) of an exported folder: what the model is, what it was trained on
//! and how, what it scored, how to use it, and the licences.

use crate::config::RunConfig;
use crate::data::cifar::CLASSES;
use crate::data::{Gray, TaskName};
use crate::run::checkpoint::State;
use crate::run::exported::input_shape;
use crate::run::records::RunRecord;

fn percent(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// The card of a finished run's best checkpoint (`state`), started from `preset` if any.
pub fn card(cfg: &RunConfig, record: &RunRecord, state: &State, preset: Option<&str>) -> String {
    let (model, task, t) = (cfg.model.name(), &cfg.task, &cfg.train);
    let dims: Vec<String> = input_shape(task, 1)[1..].iter().map(|d| d.to_string()).collect();
    let shape = format!("(batch, {})", dims.join(", "));
    let mut lines = vec![
        "---".to_string(),
        "library_name: pixelseq".into(),
        "license: mit".into(),
        "datasets:\n- cifar10".into(),
        "metrics:\n- accuracy".into(),
        "pipeline_tag: image-classification".into(),
        format!("tags:\n- pixelseq\n- {model}\n- {}", task.name),
        "---".into(),
        String::new(),
        match preset {
            Some(p) => format!("# {p}: {model} on {}", task.name),
            None => format!("# {model} on {}", task.name),
        },
        String::new(),
        format!(
            "{}, trained with pixelseq on CIFAR-10 read pixel by pixel. Test accuracy **{}** \
             (the checkpoint of best validation accuracy, step {}).",
            cfg.paper.as_ref().map_or(model, |p| p.model.as_str()),
            percent(record.test_acc),
            state.step
        ),
        String::new(),
        "## Model".into(),
        String::new(),
        format!("- Architecture `{model}`; paper: {}.", cfg.model.paper()),
    ];
    if let Some(p) = &cfg.paper {
        let figure = p
            .figure
            .map_or("no figure for this exact setting".to_string(), |f| format!("{f:.2}%"));
        lines.push(format!("- Paper setting: {} (reported: {figure}).", p.setting));
    }
    lines.extend([
        format!("- Parameters: {}.", record.params),
        "- Hyperparameters (`model` in `config.json`):".into(),
        String::new(),
        format!("```toml\n{}```", toml::to_string(&cfg.model).unwrap_or_default()),
        String::new(),
        "## Data".into(),
        String::new(),
        match (task.name, task.gray) {
            (TaskName::LraImage, Gray::Tf) => "- Task `lra-image` (LRA Image): grayscale CIFAR-10, TensorFlow's `rgb_to_grayscale` of the \
                                   RGB images as the Long Range Arena made them, 1,024 steps of one value 0–255."
                .into(),
            (TaskName::LraImage, Gray::Pil) => "- Task `lra-image` (LRA Image) with `gray = \"pil\"`: grayscale CIFAR-10, PIL's \
                                   `convert(\"L\")` of the RGB images (rounded; torchvision's `Grayscale()`), 1,024 steps of one value 0–255."
                .into(),
            (TaskName::Scifar, _) => "- Task `scifar` (sequential CIFAR-10): 1,024 steps of the (R, G, B) values 0–255 of one pixel.".into(),
        },
        "- Pixels in raster order (step = 32·row + column).".into(),
    ]);
    if let Some(seed) = task.permute {
        lines.push(format!(
            "- One fixed pixel permutation (seed {seed}) on every image; both ways of using the model below apply it themselves."
        ));
    }
    lines.extend([
        "- Splits as in LRA: train = the first 45,000 training images, validation = the last 5,000, test = the 10,000 \
         test images (every one scored)."
            .into(),
        format!(
            "- Augmentation (training only): random crop {}, horizontal flip {}.",
            on_off(task.crop),
            on_off(task.flip)
        ),
        String::new(),
        "## Training".into(),
        String::new(),
    ]);
    if let Some(p) = preset {
        lines.push(format!(
            "- Preset `{p}` (`pixelseq presets`); the whole resolved config is in `config.json`."
        ));
    }
    let budget = match t.max_steps {
        Some(steps) => format!("{steps} steps"),
        None => format!("{} epochs", t.epochs),
    };
    let minutes = t.max_minutes.map_or(String::new(), |m| format!(", at most {m} minutes"));
    lines.extend([
        format!(
            "- Budget: {budget}{minutes}; trained {} steps ({:.2} epochs) of batch {} in {:.0} s.",
            record.steps, record.epochs, t.batch_size, record.wall_s
        ),
        format!(
            "- AdamW, lr {:e}, weight decay {}, {} schedule after {} warm-up steps; seed {}.",
            cfg.optim.lr,
            cfg.optim.weight_decay,
            format!("{:?}", cfg.schedule.kind).to_lowercase(),
            cfg.schedule.warmup_steps,
            record.seed
        ),
        format!(
            "- Device {}, precision {}; {:.0} training images/s.",
            record.device, record.precision, record.img_per_s
        ),
        format!("- pixelseq commit `{}`, {}.", record.commit, record.date),
        String::new(),
        "## Results".into(),
        String::new(),
        "| | accuracy |".into(),
        "|---|---:|".into(),
        format!("| best validation (step {}) | {} |", record.best_step, percent(record.best_val_acc)),
        format!("| test, best-validation checkpoint | {} |", percent(record.test_acc)),
    ]);
    if let Some(f) = cfg.paper.as_ref().and_then(|p| p.figure) {
        lines.push(format!("| paper | {f:.2}% |"));
    }
    lines.extend([
        String::new(),
        "## Use".into(),
        String::new(),
        "With pixelseq, this folder takes the place of a run folder (`predict` resizes any PNG or JPEG \
         and converts it as the task reads CIFAR-10):"
            .into(),
        String::new(),
        "```bash\npixelseq eval --run THIS_FOLDER --split test\npixelseq predict --run THIS_FOLDER cat.png dog.jpg\n```".into(),
        String::new(),
        "In plain PyTorch, through a TorchScript export (the permutation and normalisation are inside; \
         it computes on the CPU):"
            .into(),
        String::new(),
        "```bash\npixelseq export --run THIS_FOLDER --format torchscript --out model.pt\n```".into(),
        String::new(),
        format!(
            "```python\nimport torch\nmodel = torch.jit.load(\"model.pt\")\nlogits = model(pixels)  # pixels: uint8 {shape}, any batch size; logits: (batch, 10)\n```"
        ),
        String::new(),
        format!("Classes by logit index: {}.", CLASSES.join(", ")),
        String::new(),
        "## Licence and citation".into(),
        String::new(),
        "- Code: pixelseq, MIT licence.".into(),
        "- Data: CIFAR-10, for which its authors state no licence. Cite: Alex Krizhevsky, \"Learning Multiple \
         Layers of Features from Tiny Images\", technical report, University of Toronto, 2009."
            .into(),
        format!("- Model: {}.", cfg.model.paper()),
    ]);
    lines.join("\n") + "\n"
}
