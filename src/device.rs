//! Devices: parsing `--device`, naming a device in records, waiting for its queued work.

use anyhow::{bail, Result};
use tch::Device;

/// `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`; `flag` names the option in errors.
pub fn parse(s: &str, flag: &str) -> Result<Device> {
    let cuda = |i: usize| {
        if !tch::Cuda::is_available() {
            bail!("{flag} {s}: CUDA is not available on this machine (is LD_LIBRARY_PATH pointing at torch/lib?)");
        }
        let n = tch::Cuda::device_count() as usize;
        if i >= n {
            bail!("{flag} {s}: only {n} CUDA device(s) present");
        }
        Ok(Device::Cuda(i))
    };
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => cuda(i),
            None => bail!("{flag} {s}: expected auto, cpu, cuda or cuda:N"),
        },
    }
}

/// `cpu` or `cuda:N`, as [`parse`] reads it back.
pub fn arg(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// A readable device name for records: `cuda:N`, or `cpu (T threads)`.
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => format!("cpu ({} threads)", tch::get_num_threads()),
    }
}

/// Waits for the device's queued work (nothing to wait for on CPU).
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_devices() {
        assert_eq!(parse("cpu", "--device").unwrap(), Device::Cpu);
        assert_eq!(arg(Device::Cuda(3)), "cuda:3");
        assert_eq!(name(Device::Cuda(1)), "cuda:1");
        let err = parse("tpu", "--device").unwrap_err().to_string();
        assert_eq!(err, "--device tpu: expected auto, cpu, cuda or cuda:N");
    }
}
