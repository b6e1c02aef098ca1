//! Putting a report into a README between two marker lines.

use std::path::{Component, Path};

use anyhow::{anyhow, Context, Result};

use super::Report;
use crate::files;

/// The line after which the generated block starts in a README.
pub const START_MARKER: &str = "<!-- results:start -->";
/// The line before which the generated block ends in a README.
pub const END_MARKER: &str = "<!-- results:end -->";

/// Replaces the block between the results markers of `readme` with the report, linking the
/// plots relative to the README's folder; the file is rewritten atomically.
pub fn update_readme(readme: &Path, report: &Report, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(readme).with_context(|| format!("failed to read `{}`", readme.display()))?;
    let base = readme.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut prefix = relative_path(base, out)?;
    if !prefix.is_empty() {
        prefix.push('/');
    }
    let updated = replace_block(&text, &report.markdown(&prefix)).with_context(|| format!("cannot update `{}`", readme.display()))?;
    files::write_bytes(readme, updated.as_bytes())
}

/// `text` with everything between the two markers replaced by `block`.
pub fn replace_block(text: &str, block: &str) -> Result<String> {
    let start = text
        .find(START_MARKER)
        .ok_or_else(|| anyhow!("no `{START_MARKER}` marker; add `{START_MARKER}` and `{END_MARKER}` where the results go"))?
        + START_MARKER.len();
    let end = start
        + text[start..]
            .find(END_MARKER)
            .ok_or_else(|| anyhow!("no `{END_MARKER}` marker after `{START_MARKER}`"))?;
    Ok(format!("{}\n{}\n{}", &text[..start], block.trim_end(), &text[end..]))
}

/// The path of `to` relative to the folder `from`, with `/` separators ("" when they are the same).
fn relative_path(from: &Path, to: &Path) -> Result<String> {
    let canon = |p: &Path| p.canonicalize().with_context(|| format!("failed to resolve `{}`", p.display()));
    let (from, to) = (canon(from)?, canon(to)?);
    let (a, b): (Vec<Component>, Vec<Component>) = (from.components().collect(), to.components().collect());
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let parts: Vec<String> = std::iter::repeat_n("..".to_string(), a.len() - common)
        .chain(b[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()))
        .collect();
    Ok(parts.join("/"))
}
