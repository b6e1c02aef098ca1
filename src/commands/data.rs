//! `pixelseq data …`: verify, download, prepare and export CIFAR-10.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::data::cifar::{self, Images, PIXELS};
use crate::data::{prepared, source, TaskName};
use crate::files;

/// Get, check and convert CIFAR-10.
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// CIFAR-10 location: the folder of the official files or the official
    /// `cifar-10-binary.tar.gz` (these commands read the official files, not a prepared cache)
    /// [default: $PIXELSEQ_DATA, else $XDG_CACHE_HOME/pixelseq/data or ~/.cache/pixelseq/data]
    #[arg(long, global = true, value_name = "DIR|ARCHIVE")]
    pub data: Option<PathBuf>,
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Check the six official files (size, sha256) and the published facts about them.
    Verify,
    /// Download the official archive (verified, atomic) and extract it.
    Download {
        /// Folder to download into [default: the data location]
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
    },
    /// Write a compact cache of one task's 60,000 images that `--data FILE` loads directly.
    Prepare {
        /// The task whose images the cache holds (grayscale for lra-image, RGB for scifar)
        #[arg(long)]
        task: TaskName,
        /// Output file [default: `pixelseq-TASK.zst` in the data folder]
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Write raw records (1 label byte + 1,024 grayscale bytes): 50,000 training images in
    /// official order, then the 10,000 test images.
    Export {
        /// lra-image, the one task with records of its own (grayscale); sCIFAR's raw records are
        /// the official .bin files
        #[arg(long, value_name = "lra-image", hide_possible_values = true)]
        task: TaskName,
        /// File to write the 60,000 records to (61,500,000 bytes); a FIFO or device is written in place
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

pub fn exec(args: DataArgs) -> Result<()> {
    let data = args.data.as_deref();
    match args.command {
        DataCommand::Verify => verify(data),
        DataCommand::Download { to } => {
            let dir = match to {
                Some(d) => d,
                None => data_dir(data)?,
            };
            let folder = source::download(&dir)?;
            cifar::verify_dir(&folder)?;
            println!("CIFAR-10 is ready in {}", folder.display());
            Ok(())
        }
        DataCommand::Prepare { task, out } => {
            let out = match out {
                Some(o) => o,
                None => data_dir(data)?.join(source::prepared_name(task)),
            };
            files::check_writable(&out, "--out")?;
            let rgb = read_raw(data)?;
            let images = match task {
                TaskName::LraImage => rgb.to_gray(),
                TaskName::Scifar => rgb,
            };
            prepared::write(&out, task, &images)?;
            let size = std::fs::metadata(&out)?.len();
            println!("wrote {} ({size} bytes); use it with --data {}", out.display(), out.display());
            Ok(())
        }
        DataCommand::Export { task, out } => {
            if task != TaskName::LraImage {
                bail!("export writes grayscale records (--task lra-image); for scifar the official .bin files are the raw records");
            }
            files::check_writable(&out, "--out")?;
            let gray = read_raw(data)?.to_gray();
            files::write_bytes(&out, &records(&gray))?;
            println!("wrote {} ({} records)", out.display(), gray.labels.len());
            Ok(())
        }
    }
}

/// The folder a data location stands for: itself, or the folder of a file.
fn data_dir(data: Option<&Path>) -> Result<PathBuf> {
    let (root, _) = source::root(data)?;
    Ok(if root.is_file() {
        root.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        root
    })
}

/// The official files (RGB, verified) from the data location, never a prepared cache.
fn read_raw(data: Option<&Path>) -> Result<Images> {
    cifar::read_dir(&source::raw_folder(&source::locate(data, None)?)?)
}

/// Export records: per image its label byte, then its 1,024 grayscale bytes.
fn records(gray: &Images) -> Vec<u8> {
    let mut out = Vec::with_capacity(gray.labels.len() * (1 + PIXELS));
    for (label, img) in gray.labels.iter().zip(gray.pixels.chunks_exact(PIXELS)) {
        out.push(*label);
        out.extend_from_slice(img);
    }
    out
}

fn verify(data: Option<&Path>) -> Result<()> {
    let folder = source::raw_folder(&source::locate(data, None)?)?;
    println!("CIFAR-10 in {}", folder.display());
    let images = cifar::read_dir(&folder)?;
    for (name, sha) in cifar::FILES {
        println!("  ok  {name}: {} bytes, sha256 {sha}", cifar::FILE_BYTES);
    }
    let facts = cifar::facts(&images);
    for f in &facts {
        println!("  {}  {}", if f.ok { "ok" } else { "FAIL" }, f.what);
    }
    let failed = facts.iter().filter(|f| !f.ok).count();
    if failed > 0 {
        bail!(
            "{failed} of {} checks failed on the CIFAR-10 files in `{}`",
            facts.len(),
            folder.display()
        );
    }
    println!("all checks passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::cifar::tests::shared_rgb;
    use crate::testing::shared_cifar_dir;
    use clap::Parser;
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileTypeExt;

    /// sha256 of `pixelseq data export --task lra-image`, equal byte for byte to the records that
    /// `tf.image.rgb_to_grayscale` gives (TensorFlow 2.21 CPU, per image in a `tf.data` map as
    /// LRA's input pipeline does): `scripts/tf_gray_reference.py`.
    const TF_EXPORT_SHA256: &str = "c3b072d784e877a7902111dbb538348ef2974cbe041248ba9acd45b0e638f4d4";

    #[test]
    fn export_matches_tensorflow() {
        let bytes = records(&shared_rgb().to_gray());
        assert_eq!(bytes.len(), 60_000 * 1025);
        assert_eq!(&bytes[..1], &[6]); // data_batch_1 starts with a frog
        assert_eq!(bytes[50_000 * 1025], 3); // test_batch starts with a cat
        assert_eq!(crate::files::hex(&Sha256::digest(&bytes)), TF_EXPORT_SHA256);
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        data: DataArgs,
    }

    /// `data export --out` a FIFO streams into it: the FIFO stays a FIFO.
    #[test]
    fn export_into_a_fifo_keeps_the_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("records");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap().len())
        };
        let shared = shared_cifar_dir();
        let args = [
            "pixelseq",
            "export",
            "--task",
            "lra-image",
            "--out",
            fifo.to_str().unwrap(),
            "--data",
            shared.to_str().unwrap(),
        ];
        exec(Cli::parse_from(args).data).unwrap();
        assert_eq!(reader.join().unwrap(), 60_000 * 1025);
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
    }

    /// Every option says what it is for.
    #[test]
    fn every_option_has_help() {
        use clap::CommandFactory;
        let mut cmd = crate::commands::Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_long().is_some() && arg.get_help().is_none() && !arg.is_hide_set() {
                    missing.push(format!("{path} --{}", arg.get_long().unwrap()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        walk(&cmd, "pixelseq", &mut missing);
        assert!(missing.is_empty(), "options without help: {missing:?}");
    }

    #[test]
    fn export_and_verify_run_from_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("gray.bin");
        let shared = shared_cifar_dir();
        let args = [
            "pixelseq",
            "export",
            "--task",
            "lra-image",
            "--out",
            out.to_str().unwrap(),
            "--data",
            shared.to_str().unwrap(),
        ];
        exec(Cli::parse_from(args).data).unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 60_000 * 1025);
        exec(Cli::parse_from(["pixelseq", "--data", shared.to_str().unwrap(), "verify"]).data).unwrap();
        let err = format!(
            "{:#}",
            exec(Cli::parse_from(["pixelseq", "verify", "--data", dir.path().to_str().unwrap()]).data).unwrap_err()
        );
        assert!(err.contains("no CIFAR-10 data") && err.contains("pixelseq data download"), "{err}");
        let err = Cli::try_parse_from(["pixelseq", "prepare", "--task", "cifar"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lra-image") && err.contains("scifar"), "{err}");
    }
}
