//! TensorBoard event files, written without TensorFlow.
//!
//! A file `events.out.tfevents.<unix time>.<host>` is a sequence of TFRecords: the data length
//! (u64, little-endian), the masked CRC-32C of those 8 bytes (u32 LE), the data, and the masked
//! CRC-32C of the data (u32 LE); masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8. Each record
//! is an `Event` protocol buffer (tensorflow/core/util/event.proto), encoded here by hand:
//!
//! ```text
//! Event           wall_time 1 (double), step 2 (int64), file_version 3 (string: "brain.Event:2",
//!                 the first event of a file), summary 5 (Summary)
//! Summary         value 1 (repeated Value)
//! Value           tag 1 (string), simple_value 2 (float: a scalar), tensor 8 (TensorProto),
//!                 metadata 9 (SummaryMetadata)
//! SummaryMetadata plugin_data 1 (PluginData: plugin_name 1, content 2)
//! TensorProto     dtype 1 (DT_STRING = 7), tensor_shape 2 (empty: a scalar), string_val 8 (bytes)
//! ```
//!
//! Text is a scalar string tensor under the "text" plugin, as `tensorboard.summary.text` writes
//! it. Readers take the files of a folder in name order, so a new file is named with a time later
//! than any file already there.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::files;

/// Every events file name starts with this.
pub const PREFIX: &str = "events.out.tfevents.";

/// Protocol buffer wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// `DataType.DT_STRING` of tensorflow/core/framework/types.proto.
const DT_STRING: u64 = 7;

/// One open events file, appended to event by event.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// Creates a new events file in `dir` (named after a time later than any events file there)
    /// and writes its file-version event.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let latest = event_files(dir)?.iter().filter_map(|p| file_time(p)).max().map_or(0, |t| t + 1);
        let path = dir.join(format!("{PREFIX}{}.{}", now.max(latest), hostname()));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("failed to create TensorBoard events file `{}`", path.display()))?;
        let mut writer = EventWriter { path, file };
        let mut event = event_header(0);
        bytes_field(&mut event, 3, b"brain.Event:2");
        writer.append(&event)?;
        Ok(writer)
    }

    /// One event at `step` holding a scalar per (tag, value).
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in values {
            let mut v = Vec::new();
            bytes_field(&mut v, 1, tag.as_bytes());
            key(&mut v, 2, FIXED32);
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            bytes_field(&mut summary, 1, &v);
        }
        self.summary(step, &summary)
    }

    /// One event at `step` holding `text` (markdown) under `tag`, for TensorBoard's text tab.
    pub fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<()> {
        let mut plugin = Vec::new();
        bytes_field(&mut plugin, 1, b"text");
        bytes_field(&mut plugin, 2, b"");
        let mut metadata = Vec::new();
        bytes_field(&mut metadata, 1, &plugin);
        let mut tensor = Vec::new();
        key(&mut tensor, 1, VARINT);
        varint(&mut tensor, DT_STRING);
        bytes_field(&mut tensor, 2, b"");
        bytes_field(&mut tensor, 8, text.as_bytes());
        let mut v = Vec::new();
        bytes_field(&mut v, 1, tag.as_bytes());
        bytes_field(&mut v, 8, &tensor);
        bytes_field(&mut v, 9, &metadata);
        let mut summary = Vec::new();
        bytes_field(&mut summary, 1, &v);
        self.summary(step, &summary)
    }

    fn summary(&mut self, step: u64, summary: &[u8]) -> Result<()> {
        let mut event = event_header(step);
        bytes_field(&mut event, 5, summary);
        self.append(&event)
    }

    /// Appends one record in a single write and syncs it, so a killed run leaves whole records
    /// (a torn last one at worst, which readers and [`retain`] drop).
    fn append(&mut self, event: &[u8]) -> Result<()> {
        self.file
            .write_all(&record(event))
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("failed to write TensorBoard events file `{}`", self.path.display()))
    }
}

/// Keeps, in every events file of `dir`, only the events for which `keep(step, tags)` holds (each
/// file rewritten atomically, a torn last record dropped). A run resumed from a checkpoint drops
/// the points an interrupted run wrote after it before writing them again.
/// A file damaged before its end (not the torn last record a killed run leaves) is left as it is,
/// with a warning: rewriting it would drop the good points after the damage.
pub fn retain(dir: &Path, keep: impl Fn(u64, &[String]) -> bool) -> Result<()> {
    for path in event_files(dir)? {
        let bytes = files::read_regular(&path).with_context(|| format!("failed to read TensorBoard events file `{}`", path.display()))?;
        if let Some(at) = damaged_at(&bytes) {
            eprintln!(
                "warning: TensorBoard events file `{}` is damaged at byte {at} of {}; left as it is (TensorBoard reads it up to there)",
                path.display(),
                bytes.len()
            );
            continue;
        }
        let records = records(&bytes);
        let kept: Vec<&[u8]> = records.iter().copied().filter(|e| keep(event_step(e), &event_tags(e))).collect();
        if records_len(&kept) < bytes.len() {
            let out: Vec<u8> = kept.iter().flat_map(|e| record(e)).collect();
            files::write_bytes(&path, &out)?;
        }
    }
    Ok(())
}

/// Removes every events file of `dir` (a new run in a folder that an unfinished run left).
pub fn remove_all(dir: &Path) -> Result<()> {
    for path in event_files(dir)? {
        std::fs::remove_file(&path).with_context(|| format!("failed to remove old TensorBoard events file `{}`", path.display()))?;
    }
    Ok(())
}

/// The events files of `dir`, in name order (none if `dir` does not exist).
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(vec![]);
    }
    Ok(files::sorted_entries(dir)?
        .into_iter()
        .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
        .map(|e| e.path())
        .collect())
}

/// The data of each whole record with good checksums, up to the first torn or damaged one.
pub fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 12 {
        let len_bytes = &rest[..8];
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        if u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")) != masked_crc(len_bytes) {
            break;
        }
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(16))
            .filter(|&e| e <= rest.len())
        else {
            break;
        };
        let data = &rest[12..end - 4];
        if u32::from_le_bytes(rest[end - 4..end].try_into().expect("4 bytes")) != masked_crc(data) {
            break;
        }
        out.push(data);
        rest = &rest[end..];
    }
    out
}

/// Where the records of `bytes` stop being readable, when that is damage: a record whose header
/// or data fails its checksum though all its bytes are there. A torn last record (fewer bytes
/// than its length says, or than a header) is no damage: a killed writer leaves one.
pub fn damaged_at(bytes: &[u8]) -> Option<usize> {
    let good: usize = records_len(&records(bytes));
    let rest = &bytes[good..];
    if rest.len() < 12 {
        return None;
    }
    let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
    if u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")) != masked_crc(&rest[..8]) {
        return Some(good);
    }
    let complete = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(16))
        .is_some_and(|e| e <= rest.len());
    complete.then_some(good)
}

/// The `step` field of an encoded `Event` (0 when absent, as protocol buffers default).
pub fn event_step(event: &[u8]) -> u64 {
    fields(event)
        .into_iter()
        .find_map(|(n, f)| match f {
            Field::Varint(v) if n == 2 => Some(v),
            _ => None,
        })
        .unwrap_or(0)
}

/// The tags of the summary values of an encoded `Event`.
pub fn event_tags(event: &[u8]) -> Vec<String> {
    let nested = |msg: &[u8], number: u64| -> Vec<Vec<u8>> {
        fields(msg)
            .into_iter()
            .filter_map(|(n, f)| match f {
                Field::Bytes(b) if n == number => Some(b.to_vec()),
                _ => None,
            })
            .collect()
    };
    nested(event, 5)
        .iter()
        .flat_map(|summary| nested(summary, 1))
        .flat_map(|value| nested(&value, 1))
        .map(|tag| String::from_utf8_lossy(&tag).into_owned())
        .collect()
}

/// A field of a protocol buffer message: a varint, or the bytes of a length-delimited or
/// fixed-width one.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The fields of an encoded message as (number, value), up to the first malformed one.
fn fields(mut rest: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut out = Vec::new();
    while let Some(k) = read_varint(&mut rest) {
        let len = match (k & 7) as u8 {
            VARINT => match read_varint(&mut rest) {
                Some(v) => {
                    out.push((k >> 3, Field::Varint(v)));
                    continue;
                }
                None => break,
            },
            FIXED64 => 8,
            FIXED32 => 4,
            LEN => match read_varint(&mut rest).and_then(|n| usize::try_from(n).ok()) {
                Some(n) => n,
                None => break,
            },
            _ => break,
        };
        if len > rest.len() {
            break;
        }
        out.push((k >> 3, Field::Bytes(&rest[..len])));
        rest = &rest[len..];
    }
    out
}

fn records_len(records: &[&[u8]]) -> usize {
    records.iter().map(|r| r.len() + 16).sum()
}

/// The time in an events file name (`events.out.tfevents.<time>.<host>`).
fn file_time(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix(PREFIX)?.split('.').next()?.parse().ok()
}

/// This machine's name, as events file names carry it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// An `Event` with its wall time and step.
fn event_header(step: u64) -> Vec<u8> {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let mut event = Vec::new();
    key(&mut event, 1, FIXED64);
    event.extend_from_slice(&wall.to_le_bytes());
    key(&mut event, 2, VARINT);
    varint(&mut event, step);
    event
}

/// A TFRecord around `data`.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// TFRecord's masked CRC-32C: the CRC rotated right by 15 bits, plus 0xa282ead8.
fn masked_crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

fn key(out: &mut Vec<u8>, field: u64, wire: u8) {
    varint(out, field << 3 | u64::from(wire));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    key(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn read_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &b) in rest.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *rest = &rest[i + 1..];
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TFRecord framing: length, CRC-32C (the crate's check value), data; a torn or damaged
    /// record ends the file. TensorBoard's own reader checks the rest (tests/tensorboard.rs).
    #[test]
    fn records_are_framed_and_checked() {
        // crc32c("123456789") = 0xe3069283 (the CRC-32C check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let framed = record(b"abc");
        assert_eq!(framed.len(), 3 + 16);
        assert_eq!(&framed[..8], &3u64.to_le_bytes());
        assert_eq!(records(&framed), vec![b"abc".as_slice()]);
        assert!(records(&framed[..framed.len() - 1]).is_empty());
        let mut bad = framed.clone();
        bad[13] ^= 1;
        assert!(records(&bad).is_empty());
    }

    /// A resumed run drops the points past its checkpoint from a file that a kill left torn, but
    /// leaves a file damaged in its middle as it is: rewriting it kept only what came before the
    /// damage.
    #[test]
    fn a_damaged_events_file_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        for step in 1..=4 {
            w.scalars(step, &[("train/loss", 1.0)]).unwrap();
        }
        let path = w.path.clone();
        drop(w);
        let good = std::fs::read(&path).unwrap();
        let mut damaged = good.clone();
        let second = records(&good)[..2].iter().map(|r| r.len() + 16).sum::<usize>();
        damaged[second + 14] ^= 1; // a data byte of the third record
        assert_eq!(damaged_at(&damaged), Some(second));
        std::fs::write(&path, &damaged).unwrap();
        retain(dir.path(), |s, _| s <= 2).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), damaged, "a damaged file was rewritten");

        let torn = &good[..good.len() - 3];
        assert_eq!(damaged_at(torn), None);
        std::fs::write(&path, torn).unwrap();
        retain(dir.path(), |s, _| s <= 2).unwrap();
        let steps: Vec<u64> = records(&std::fs::read(&path).unwrap()).iter().map(|e| event_step(e)).collect();
        assert_eq!(steps, [0, 1, 2]);
    }

    #[test]
    fn varints_and_steps_round_trip() {
        for step in [0, 1, 127, 128, 300, 1 << 40] {
            let event = event_header(step);
            assert_eq!(event_step(&event), step);
        }
        let mut buf = Vec::new();
        varint(&mut buf, 300);
        assert_eq!(buf, [0xac, 0x02]);
    }

    #[test]
    fn retain_drops_events_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        for step in [10, 20, 30] {
            w.scalars(step, &[("loss", 1.0 / step as f64)]).unwrap();
        }
        w.text(0, "config", "    a = 1").unwrap();
        drop(w);
        let path = event_files(dir.path()).unwrap().remove(0);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[1, 2, 3])
            .unwrap();
        retain(dir.path(), |step, tags| step <= 20 && tags != ["config"]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(records_len(&records(&bytes)), bytes.len(), "whole records, the torn one dropped");
        let events = records(&bytes)
            .into_iter()
            .map(|e| (event_step(e), event_tags(e)))
            .collect::<Vec<_>>();
        assert_eq!(
            events,
            [(0, vec![]), (10, vec!["loss".to_string()]), (20, vec!["loss".to_string()])]
        );
        // A second file is named after the first, so readers take it last.
        EventWriter::create(dir.path()).unwrap();
        let both = event_files(dir.path()).unwrap();
        assert_eq!(both[0], path);
        assert!(file_time(&both[1]) > file_time(&path));
        remove_all(dir.path()).unwrap();
        assert!(event_files(dir.path()).unwrap().is_empty());
    }
}
